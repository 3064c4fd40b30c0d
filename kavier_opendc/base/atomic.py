"""Atomic output writing: files and folders appear whole or not at all.

Every writer goes through a temporary sibling and a rename (``os.replace``), so
a reader (or a crashed run) never sees half a file; ``staged_output`` does the
same for a whole folder. ``check_writable_dir`` fails before any work is done.
A command declares the folder it owns (:func:`output_root`); below it the writers create folders only
while that root is still the folder it was, so a folder the user removed mid-command is never re-created
with a half set of results (:func:`make_dirs`).
Temporary files and folders are made private (0600/0700) by ``tempfile``; what
is renamed into place gets the modes the umask gives, like any Unix tool's
output (a Docker volume's host user or a colleague can read the results).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

from kavier_opendc.base.errors import KavierInputError, OutputWriteError
from kavier_opendc.base.faults import check_write

if TYPE_CHECKING:  # pyarrow is imported when a table is written: argument parsing stays fast
    import pyarrow as pa

#: The marker file a folder holds while it is not whole (a run, sweep, export or trace in progress or failed).
INCOMPLETE = "INCOMPLETE"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (setting it is process-wide
    and would race with threads writing files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_mode(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Give a temporary file (0600) or folder (0700) the mode a plain open()/mkdir() would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def refuse_complete_output(out: Path, files: tuple[str, ...], what: str, *, overwrite: bool) -> None:
    """An output folder that holds a complete earlier result (all of ``files``, no INCOMPLETE marker) is
    replaced only when asked: a rerun never deletes finished results by surprise. An incomplete one (a
    failed or killed run) is replaced as before."""
    out = Path(out)
    if overwrite or not out.is_dir() or (out / INCOMPLETE).exists():
        return
    if all((out / f).is_file() for f in files):
        raise KavierInputError(
            f"{out} already holds a complete {what}, which is kept",
            location="--out",
            expected="another folder, or --overwrite to replace it",
        )


def check_writable_dir(out: Path, what: str = "--out") -> None:
    """Fail early, before any work, when ``out`` cannot be created or written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KavierInputError(
            f"output path {out} exists and is not a directory", location=what, expected="a directory path"
        )
    parent = out if out.exists() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:  # a real probe: permission bits do not tell for root, read-only mounts or /proc
        probe = tempfile.mkdtemp(prefix=".kavier-probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise KavierInputError(
            f"cannot write to {out}: {exc.strerror or exc} in {parent}", location=what, expected="a writable directory"
        ) from None


class _Root(NamedTuple):
    path: str  # absolute, as the command named it
    real: str  # symbolic links resolved (a writer may name a path either way)
    ident: tuple[int, int]  # (device, inode) when it was declared: a folder re-made at its place is another


#: The output roots this process holds (a stack: a sweep's worker holds runs/, then its run's folder)
_roots: list[_Root] = []
_roots_lock = threading.Lock()


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _owning_root(path: str) -> tuple[_Root, str] | None:
    """The innermost root holding absolute ``path``, and the form (as named, or resolved) it matched."""
    if not _roots:  # no command declared one (the library used directly): nothing to look up
        return None
    with _roots_lock:
        found = None
        for r in _roots:
            for form in (r.path, r.real):
                if _within(path, form) and (found is None or len(form) > len(found[1])):
                    found = (r, form)
        if found is None:  # the path named through a symbolic link
            real = os.path.realpath(path)
            for r in _roots:
                if _within(real, r.real) and (found is None or len(r.real) > len(found[1])):
                    found = (r, r.real)
        return found


def _vanished(root: _Root) -> OutputWriteError:
    """The ENOENT paragraph for a root that is gone, naming the outermost folder that is missing (the sweep
    folder the user removed, not only its runs/ inside it)."""
    missing = Path(root.path)
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    return OutputWriteError.from_os(OSError(errno.ENOENT, os.strerror(errno.ENOENT)), missing, writing=False)


def _check_root(root: _Root) -> None:
    try:
        st = os.stat(root.path)
    except OSError:
        raise _vanished(root) from None
    if (st.st_dev, st.st_ino) != root.ident:  # removed and made again by someone else
        raise _vanished(root)


def check_output_root(path: str | os.PathLike) -> None:
    """Raise the one-paragraph ENOENT error when the root holding ``path`` was removed, moved or replaced
    since the command declared it (nothing to do for a path under no root)."""
    found = _owning_root(os.path.abspath(path))
    if found is not None:
        _check_root(found[0])


def make_dirs(path: str | os.PathLike) -> None:
    """``path`` as a folder, with its missing parents. Below an :func:`output_root` only the folders under
    that root are made, and only while the root is still in place: a removed root is not re-created, the
    writer fails with ENOENT. Under no root, as ``mkdir(parents=True, exist_ok=True)``."""
    path = Path(path)
    found = _owning_root(os.path.abspath(path))
    if found is None:
        path.mkdir(parents=True, exist_ok=True)
        return
    root, form = found
    _check_root(root)
    cur = form
    for part in Path(os.path.relpath(os.path.abspath(path), form)).parts:
        if part == os.curdir:
            continue
        cur = os.path.join(cur, part)
        try:
            os.mkdir(cur)
        except FileExistsError:
            if not os.path.isdir(cur):
                raise
        except FileNotFoundError:  # the root went between the check and here
            raise _vanished(root) from None


@contextlib.contextmanager
def output_root(root: str | os.PathLike, *, create: bool = True) -> Iterator[Path]:
    """Declare ``root`` the folder this command writes into, for the block: it is made here (``create``;
    itself only below any root already held), and from then on every writer below it creates folders only
    while it is still in place (:func:`make_dirs`). One that is missing (not ``create``) or goes is the
    ENOENT paragraph."""
    root = Path(root)
    if create:
        make_dirs(root)
    a = os.path.abspath(root)
    try:
        st = os.stat(a)
    except OSError:
        raise _vanished(_Root(a, a, (0, 0))) from None
    entry = _Root(a, os.path.realpath(a), (st.st_dev, st.st_ino))
    with _roots_lock:
        _roots.append(entry)
    try:
        yield root
    finally:
        with _roots_lock:
            _roots.remove(entry)


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a staging folder; on success its files are moved into ``out``."""
    out = Path(out)
    check_writable_dir(out)
    try:
        make_dirs(out.parent)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OutputWriteError:
        raise
    except OSError as exc:
        raise KavierInputError(
            f"cannot write to {out}: {exc.strerror or exc}", location="--out", expected="a writable directory"
        ) from None
    try:
        try:
            yield stage
        except OSError as exc:  # named by its final place, not the hidden staging folder
            err = exc if isinstance(exc, OutputWriteError) else OutputWriteError.from_os(exc)
            moved = OutputWriteError(str(err).replace(str(stage), str(out)))
            moved.errno = err.errno
            raise moved from None
        make_dirs(out)
        for item in sorted(stage.iterdir()):
            dest = out / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def write_errors(path: str | os.PathLike) -> Iterator[None]:
    """An OSError while writing ``path`` (full disk, read-only file system, folder removed) becomes one
    :class:`OutputWriteError` paragraph naming the path and the errno."""
    try:
        check_write(path)
        yield
    except OutputWriteError:
        raise
    except OSError as exc:
        raise OutputWriteError.from_os(exc, path) from None


def _discard(tmp: str | os.PathLike) -> None:
    """Remove a temporary file after a failed write (where the file system still allows it)."""
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary sibling and a rename: readers never see half a file."""
    path = Path(path)
    with write_errors(path):
        make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            public_mode(tmp)
            os.replace(tmp, path)
        except BaseException:
            _discard(tmp)
            raise


def write_json_atomic(path: Path, data) -> None:
    """JSON (numpy scalars converted, NaN and infinities written as null), atomically."""
    atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    path = Path(path)
    import pyarrow.parquet as pq

    with write_errors(path):
        make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            public_mode(tmp)
            os.replace(tmp, path)
        except BaseException:
            _discard(tmp)
            raise


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    np = sys.modules.get("numpy")  # a numpy scalar exists only once numpy is loaded: argument parsing skips it
    if np is not None and isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float) or (np is not None and isinstance(x, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    return x
