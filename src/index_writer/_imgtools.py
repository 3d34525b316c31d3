"""Make med-imagetools' own writers use index-writer, in every worker.

med-imagetools' writers (``NIFTIWriter``, ``NumpyWriter``, any
``AbstractBaseWriter``) build their own ``IndexWriter`` from
``imgtools.io.writers.index_writer``, and ``imgtools autopipeline`` runs them
in worker processes. :func:`install_as_imgtools` replaces that module's
``IndexWriter`` and its four exception classes with ours, and the same names
that ``imgtools.io.writers.abstract_base_writer`` imported from it, so
med-imagetools builds our writer and its own ``except IndexWriterError``
clauses catch our errors (and wrap them in ``WriterIndexError`` as before).

It reaches worker processes three ways:

- a *post-import hook* (a :data:`sys.meta_path` finder) patches med-imagetools
  when it is imported after the call;
- a :mod:`copyreg` reducer for :class:`~index_writer.IndexWriter`: a writer
  pickled in a patched process (by :mod:`pickle`, cloudpickle, dill, hence
  multiprocessing, loky, joblib and dask) patches the process that unpickles
  it before the writer is rebuilt there;
- the environment variable :data:`ENV_VAR` (``INDEX_WRITER_AS_IMGTOOLS=1``),
  set in :data:`os.environ` so child processes inherit it: a small ``.pth``
  file installed with the package runs :func:`_startup` at every interpreter
  start and installs the hook when the variable is set. The same variable is
  the no-code opt-in for shell users (``imgtools autopipeline ...``).

The ``.pth`` line costs one dictionary look-up when the variable is unset: it
imports nothing.
"""

from __future__ import annotations

import contextlib
import copyreg
import logging
import os
import re
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec

from ._errors import (
    IndexReadError,
    IndexSchemaMismatchError,
    IndexWriteError,
    IndexWriterError,
)
from ._writer import IndexWriter

__all__ = ["ENV_VAR", "TESTED_VERSIONS", "install_as_imgtools", "uninstall_as_imgtools"]

logger = logging.getLogger(__name__)

#: The environment variable that turns the replacement on in every Python
#: process started with it (``1``, ``true``, ``yes`` or ``on``); ``0``,
#: ``false``, ``no``, ``off`` or empty leave med-imagetools as it is.
ENV_VAR = "INDEX_WRITER_AS_IMGTOOLS"

#: The med-imagetools releases this replacement was tested with.
TESTED_VERSIONS = ">=2.16.0,<2.17"
_TESTED_MINOR = (2, 16)

_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})

#: Where med-imagetools defines its writer, and where its writers import it.
_SOURCE = "imgtools.io.writers.index_writer"
_USER = "imgtools.io.writers.abstract_base_writer"
_MODULES = (_SOURCE, _USER)

#: The names replaced in both modules, and what replaces them.
_OURS: dict[str, object] = {
    "IndexWriter": IndexWriter,
    "IndexWriterError": IndexWriterError,
    "IndexSchemaMismatchError": IndexSchemaMismatchError,
    "IndexReadError": IndexReadError,
    "IndexWriteError": IndexWriteError,
}

_lock = threading.RLock()


class _State:
    """What an active installation changed, so that it can be undone."""

    def __init__(self) -> None:
        self.active = False
        self.finder: _PatchOnImport | None = None
        self.env_before: str | None = None
        self.version_checked = False
        # module -> {name: the original object}; weak, so a module that is
        # dropped from sys.modules and imported anew does not linger here.
        self.saved: weakref.WeakKeyDictionary[ModuleType, dict[str, object]] = (
            weakref.WeakKeyDictionary()
        )


_state = _State()


# ------------------------------------------------------------------ public API


def install_as_imgtools() -> None:
    """Make med-imagetools' writers use index-writer, here and in workers.

    After the call, ``imgtools.io.writers.index_writer.IndexWriter`` and its
    exceptions ``IndexWriterError``, ``IndexSchemaMismatchError``,
    ``IndexReadError`` and ``IndexWriteError`` *are* index-writer's, and so
    are the names ``imgtools.io.writers.abstract_base_writer`` imported from
    that module: every med-imagetools writer created afterwards (NIFTIWriter,
    NumpyWriter, ``imgtools autopipeline``'s) records its files with
    index-writer, and med-imagetools' own ``except`` clauses catch our errors
    and wrap them in its ``WriterIndexError`` as before.

    If med-imagetools is imported later, it is patched when it is imported.
    Worker processes follow: the environment variable
    ``INDEX_WRITER_AS_IMGTOOLS`` is set to ``1`` for child processes, and a
    writer pickled here patches the process that unpickles it
    (multiprocessing, loky/joblib, dask, concurrent.futures).

    Calling it again does nothing. :func:`uninstall_as_imgtools` undoes it.

    Raises
    ------
    ModuleNotFoundError
        med-imagetools is not installed (an :class:`ImportError`).

    Warns
    -----
    UserWarning
        The installed med-imagetools is a release this was not tested with
        (tested: 2.16). The replacement is made anyway.

    Examples
    --------
    At the top of a script, before any writer is created:

    >>> import index_writer
    >>> index_writer.install_as_imgtools()  # doctest: +SKIP
    >>> from imgtools.io.writers import NIFTIWriter  # doctest: +SKIP
    >>> import imgtools.io.writers.index_writer as original  # doctest: +SKIP
    >>> original.IndexWriter is index_writer.IndexWriter  # doctest: +SKIP
    True
    """
    import importlib.util  # not at the top: `import index_writer` stays cheap

    if importlib.util.find_spec("imgtools") is None:
        raise ModuleNotFoundError(
            "install_as_imgtools() needs med-imagetools, which is not installed in this "
            f"Python environment ({sys.prefix}); install it with: "
            f"pip install 'med-imagetools{TESTED_VERSIONS}'",
            name="imgtools",
        )
    with _lock:
        if not _state.version_checked:
            _state.version_checked = True
            _warn_if_untested(_installed_version(), stacklevel=3)
        _activate()


def uninstall_as_imgtools() -> None:
    """Undo :func:`install_as_imgtools`: med-imagetools uses its own writer again.

    Restores the original ``IndexWriter`` and exception classes in
    ``imgtools.io.writers.index_writer`` and ``abstract_base_writer``,
    removes the import hook and the pickling hook, and restores the
    environment variable ``INDEX_WRITER_AS_IMGTOOLS`` for child processes
    started afterwards (it is removed if it turned the replacement on). Also
    undoes an installation made at start-up by that variable. Does nothing if
    not installed.

    Writers created while it was installed keep using index-writer, and
    worker processes already running stay as they are.

    Examples
    --------
    >>> import index_writer
    >>> index_writer.uninstall_as_imgtools()  # nothing installed: does nothing
    """
    with _lock:
        if not _state.active:
            return
        _state.active = False
        finder = _state.finder
        _state.finder = None
        if finder is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(finder)
        if copyreg.dispatch_table.get(IndexWriter) is _reduce_writer:
            del copyreg.dispatch_table[IndexWriter]
        before = _state.env_before
        if before is None or before.strip().lower() in _ON:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before
        # A module imported while installed took our names from the patched
        # source module: it gets that module's originals back.
        source = sys.modules.get(_SOURCE)
        fallback = _state.saved.get(source, {}) if source is not None else {}
        modules = list(_state.saved.keys())
        modules += [m for n in _MODULES if (m := sys.modules.get(n)) is not None]
        for module in modules:
            originals = _state.saved.get(module, {})
            for name, ours in _OURS.items():
                original = originals.get(name, fallback.get(name, _MISSING))
                if original is not _MISSING and module.__dict__.get(name) is ours:
                    setattr(module, name, original)
        _state.saved.clear()
        logger.debug("med-imagetools uses its own IndexWriter again")


# ------------------------------------------------------------------ machinery


def _activate() -> None:
    """Install the hooks and patch what is loaded (idempotent; no checks)."""
    with _lock:
        if _state.active:
            return
        _state.active = True
        _state.finder = _PatchOnImport()
        sys.meta_path.insert(0, _state.finder)
        copyreg.pickle(IndexWriter, _reduce_writer)
        before = os.environ.get(ENV_VAR)
        _state.env_before = before
        if before is None or before.strip().lower() not in _ON:
            os.environ[ENV_VAR] = "1"
        _patch_loaded()


def _patch_loaded() -> None:
    """Replace the names in whichever of the two modules are loaded."""
    with _lock:
        if not _state.active:
            return
        for name in _MODULES:
            module = sys.modules.get(name)
            if module is not None:
                _patch(module)


def _patch(module: ModuleType) -> None:
    if not _state.version_checked:
        _state.version_checked = True
        _warn_if_untested(_installed_version(), stacklevel=2)
    originals = _state.saved.get(module)
    if originals is None:
        originals = _state.saved[module] = {}
    # In the importing module, only what it imported from the source module.
    source = sys.modules.get(_SOURCE) if module.__name__ == _USER else None
    expected = _state.saved.get(source, {}) if source is not None else None
    replaced = []
    for name, ours in _OURS.items():
        current = module.__dict__.get(name, _MISSING)
        if current is _MISSING or current is ours:
            continue
        if expected is not None and current is not expected.get(name, _MISSING):
            logger.debug("%s.%s is not from %s: left alone", module.__name__, name, _SOURCE)
            continue
        originals.setdefault(name, current)
        setattr(module, name, ours)
        replaced.append(name)
    if module.__name__ == _SOURCE and module.__dict__.get("IndexWriter") is not IndexWriter:
        warnings.warn(
            f"{_SOURCE} has no IndexWriter in this med-imagetools release "
            f"({_installed_version() or 'unknown version'}); index-writer could not "
            f"replace it (tested with med-imagetools{TESTED_VERSIONS})",
            UserWarning,
            stacklevel=2,
        )
    if replaced:
        logger.debug("%s: %s now from index-writer", module.__name__, ", ".join(replaced))


_MISSING = object()


class _PatchOnImport:
    """Patches med-imagetools' two writer modules right after they are executed."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in _MODULES:
            return None
        for finder in list(sys.meta_path):
            if finder is self or isinstance(finder, _PatchOnImport):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec: ModuleSpec | None = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        spec.loader = cast("Loader", _PatchingLoader(loader))
        return spec

    def __repr__(self) -> str:
        return f"<index_writer: patches {', '.join(_MODULES)} on import>"


class _PatchingLoader:
    """Delegates to the real loader, then patches the module it executed."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Leave no trace: the module shows its real loader.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _patch_loaded()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


# ------------------------------------------------------------------ pickling


def _reduce_writer(writer: IndexWriter) -> str | tuple[Any, ...]:
    """Pickle ``writer`` as usual, but rebuilt through :func:`_rebuild_patched`.

    The writer's own reduction is kept whole (its state included), only its
    constructor call is wrapped, so it unpickles exactly as without us.
    """
    reduced = writer.__reduce_ex__(4)
    if isinstance(reduced, str):
        return reduced
    func, args, *rest = reduced
    return (_rebuild_patched, (func, args), *rest)


def _rebuild_patched(func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """Unpickling a writer from a patched process patches this one first."""
    _activate()
    return func(*args)


# ------------------------------------------------------------------ versions


def _installed_version() -> str | None:
    import importlib.metadata  # not at the top: `import index_writer` stays cheap

    try:
        return importlib.metadata.version("med-imagetools")
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get("imgtools")
        version = getattr(module, "__version__", None)
        return version if isinstance(version, str) else None


def _is_tested(version: str | None) -> bool:
    """Whether ``version`` is in :data:`TESTED_VERSIONS`.

    Examples
    --------
    >>> _is_tested("2.16.0"), _is_tested("2.16.3"), _is_tested("2.17.0"), _is_tested(None)
    (True, True, False, False)
    """
    if version is None:
        return False
    m = re.match(r"\s*v?(\d+)\.(\d+)", version)
    return m is not None and (int(m[1]), int(m[2])) == _TESTED_MINOR


def _warn_if_untested(version: str | None, stacklevel: int) -> None:
    if _is_tested(version):
        return
    what = f"med-imagetools {version}" if version else "med-imagetools of unknown version"
    warnings.warn(
        f"index-writer replaces the IndexWriter of {what}, a release it has not been "
        f"tested with (tested: med-imagetools{TESTED_VERSIONS}); check that your "
        "pipeline's index is complete",
        UserWarning,
        stacklevel=stacklevel + 1,
    )


# ------------------------------------------------------------------ start-up


def _startup() -> None:
    """Run by the ``.pth`` file at interpreter start when :data:`ENV_VAR` is set.

    Never raises: a problem is reported as a warning and the interpreter
    starts as usual.
    """
    value = os.environ.get(ENV_VAR, "")
    flag = value.strip().lower()
    if flag in _OFF:
        return
    if flag not in _ON:
        warnings.warn(
            f"{ENV_VAR}={value!r} is not understood and was ignored: set it to 1 to "
            "make med-imagetools use index-writer, or to 0 (or unset it) not to",
            UserWarning,
            stacklevel=2,
        )
        return
    try:
        _activate()
    except Exception as e:  # pragma: no cover - defensive: never break start-up
        warnings.warn(
            f"{ENV_VAR}=1: index-writer could not install itself into med-imagetools: {e!r}",
            UserWarning,
            stacklevel=2,
        )
