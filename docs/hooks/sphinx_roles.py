"""MkDocs hook: show Sphinx roles in docstrings as plain code.

The docstrings use Sphinx roles (``:class:`IndexWriter```) so they read well in
``help()`` and IDEs; mkdocstrings renders them verbatim, as ``:class:`` followed
by the code. This drops the role prefix (and a leading ``~``) from the page
HTML, leaving just the code.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj):<code>~?")


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub("<code>", html)
