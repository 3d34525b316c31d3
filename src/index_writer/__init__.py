"""Record the files many workers produce in one shared CSV index, safely and fast.

A drop-in replacement for ``imgtools.io.writers.index_writer``: change the
import line, keep the rest::

    from index_writer import IndexWriter

    IndexWriter("index.csv").write_entry("out/a.nii.gz", {"subject": "s1"})
"""

from ._check import CheckReport, DedupeRefusedError, check_index, dedupe
from ._errors import (
    IndexLockTimeoutError,
    IndexReadError,
    IndexSchemaMismatchError,
    IndexWriteError,
    IndexWriterError,
)
from ._imgtools import install_as_imgtools, uninstall_as_imgtools
from ._writer import IndexWriter

__all__ = [
    "CheckReport",
    "DedupeRefusedError",
    "IndexLockTimeoutError",
    "IndexReadError",
    "IndexSchemaMismatchError",
    "IndexWriteError",
    "IndexWriter",
    "IndexWriterError",
    "check_index",
    "dedupe",
    "install_as_imgtools",
    "uninstall_as_imgtools",
]

__version__ = "0.1.0"
