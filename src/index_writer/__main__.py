"""``python -m index_writer``: the same as the ``index-writer`` command."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
