"""One command per output folder, and replacing a complete result without ever losing it.

The lock (:func:`output_lock`): every command that writes an ``--out`` folder (``kavier run``, ``demo``,
``simulate``, ``sweep``, ``plan``, ``export-opendc``, ``trace``, ``compare``; ``opendc`` its experiment folder;
``calibrate`` its ``--out`` file) holds an exclusive ``flock`` on ``<parent>/.<name>.kavier-lock`` (beside
the folder, so it never shows up in it, and it stays put while the folder's entries are moved; inside it, as
``.kavier-lock``, only where the parent cannot be written) for the whole command. A second command into the
same folder fails at once (:class:`OutputInUseError`, exit 2) naming the folder and the holder's pid and
command, and touches nothing. The kernel drops the lock when its process dies, however it dies (SIGKILL
included); the file itself is removed on a normal exit and a leftover one (after SIGKILL) is simply locked
again by the next command.

The replacement (:func:`replacing`): ``--overwrite`` of a complete earlier result first moves that result's
entries (``report.json`` first) into the sibling folder ``<out>.kavier-earlier``, then marks ``<out>``
INCOMPLETE and runs; only when the new result is complete is the earlier one removed. A replacement that fails
or is interrupted (SIGINT, SIGTERM) puts the earlier result back before the command exits; one that is killed
outright (SIGKILL, power loss) leaves it in ``<out>.kavier-earlier``, and the next command into ``<out>`` puts
it back before it does anything else (:func:`recover_replacement`). Files in ``<out>`` that are not the
command's own stay where they are. Where ``<out>`` is a mount point (a rename cannot leave its file system)
or its parent cannot be written, the earlier result waits inside it, in ``<out>/.kavier-earlier``. Where it
cannot be moved back (the disk turned read-only, ``<out>`` was removed) it stays intact where it waits, the
error says so, and the next command puts it back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from kavier_opendc.base.atomic import INCOMPLETE, atomic_write_text, check_writable_dir, current_umask
from kavier_opendc.base.errors import KavierError, KavierInputError, OutputWriteError
from kavier_opendc.base.faults import LOCKED, REPLACING, checkpoint
from kavier_opendc.base.interrupts import deferred

LOCK_SUFFIX = ".kavier-lock"
EARLIER_SUFFIX = ".kavier-earlier"


class OutputInUseError(KavierError):
    """Another kavier command holds the output folder's lock."""

    exit_code = 2


#: The lock's name inside the folder, where the folder's parent is not writable (a mounted volume's root)
INNER_LOCK = LOCK_SUFFIX


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of output folder ``out``: ``<parent>/.<name>.kavier-lock`` (symbolic links resolved), or
    ``<out>/.kavier-lock`` when only the folder itself can be written."""
    out = Path(out).resolve()
    if out.is_dir() and not os.access(out.parent, os.W_OK | os.X_OK) and os.access(out, os.W_OK | os.X_OK):
        return out / INNER_LOCK
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def earlier_path(out: str | os.PathLike) -> Path:
    """Where a replacement keeps the earlier complete result until the new one is complete."""
    out = Path(out).resolve()
    return out.parent / f"{out.name}{EARLIER_SUFFIX}"


def inner_earlier_path(out: str | os.PathLike) -> Path:
    """Where it waits instead when ``out`` is a mount point (a rename cannot leave a file system: EXDEV,
    EBUSY) or its parent cannot be written: inside ``out``, hidden."""
    return Path(out).resolve() / EARLIER_SUFFIX


#: renames out of ``out`` into its parent fail with these where ``out`` is a mount point (or the parent
#: is not ours to write): the earlier result then waits inside ``out``
_CANNOT_LEAVE = (errno.EXDEV, errno.EBUSY, errno.EACCES, errno.EPERM, errno.EROFS)


def _make_aside(out: Path) -> Path:
    """Make the (empty) folder the earlier result moves to: beside ``out`` when an entry of ``out`` can be
    renamed there (tried with an empty probe folder before anything is moved), else inside ``out``."""
    aside = earlier_path(out)
    try:
        aside.mkdir()
    except OSError as exc:
        if exc.errno not in _CANNOT_LEAVE:
            raise
    else:
        try:
            probe = Path(tempfile.mkdtemp(prefix=".kavier-probe-", dir=out))
        except OSError:
            aside.rmdir()
            raise
        try:
            os.rename(probe, aside / probe.name)
        except OSError as exc:
            probe.rmdir()
            aside.rmdir()
            if exc.errno not in _CANNOT_LEAVE:
                raise
        else:
            (aside / probe.name).rmdir()
            return aside
    aside = inner_earlier_path(out)
    aside.mkdir()
    return aside


def _waiting_aside(out: Path) -> Path | None:
    """The earlier result a replacement left aside (beside ``out`` or inside it), if any."""
    for aside in (earlier_path(out), inner_earlier_path(out)):
        if aside.is_dir():
            return aside
    return None


def _holder(fd: int) -> str:
    """The lock holder's own description of itself (written right after it took the lock)."""
    for _ in range(20):
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "null")
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict):
            return (
                f"pid {data.get('pid')}: {data.get('command') or 'kavier'}, "
                f"since {data.get('since') or 'an unknown time'}"
            )
        time.sleep(0.05)
    return "pid unknown"


@contextlib.contextmanager
def output_lock(
    out: str | os.PathLike, *, command: str | None = None, location: str = "--out", file: bool = False
) -> Iterator[Path]:
    """Hold the exclusive lock of output folder ``out`` (with ``file``: of output file ``out``, the lock
    beside it the same way) while inside (see the module docstring)."""
    out = Path(out)
    what = "output file" if file else "output folder"
    if file:
        if out.is_dir():
            raise KavierInputError(f"{out} is a directory", location=location, expected="a file path")
        check_writable_dir(out.parent, location)
    else:
        check_writable_dir(out, location)
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:  # read-only: a lock open for writing would keep its file system from being remounted read-only
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~current_umask())
        except OSError as exc:
            raise KavierInputError(
                f"cannot create the lock file {path} of {what} {out}: {exc.strerror or exc}",
                location=location,
                expected="a writable folder, or one whose parent is writable",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputInUseError(
                f"{location}: {what} {out.resolve()} is in use by another kavier command ({holder}), "
                f"which holds its lock {path}; nothing was changed (expected: wait until that command ends, "
                f"or another {location})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # the previous holder removes the file as it ends: a lock on a removed file is no lock
        try:
            st, now = os.fstat(fd), os.stat(path)
            same = (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        text = json.dumps(
            {
                "pid": os.getpid(),
                "command": command or " ".join(["kavier"] + sys.argv[1:]),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "folder": str(out.resolve()),
            }
        )
        wfd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)  # the description, then closed
        try:
            os.write(wfd, text.encode("utf-8"))
        finally:
            os.close(wfd)
        checkpoint(LOCKED)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: whoever opens it next finds a new file
        os.close(fd)


def holds_complete(out: Path, files: tuple[str, ...]) -> bool:
    """``out`` holds a complete result: all of ``files`` and no INCOMPLETE marker."""
    out = Path(out)
    return out.is_dir() and not (out / INCOMPLETE).exists() and all((out / f).is_file() for f in files)


def complete_result_name(out: str | os.PathLike, files: tuple[str, ...], key: str) -> str | None:
    """The name (field ``key`` of the JSON file ``files[0]``) of the complete result in ``out``: all of
    ``files``, no INCOMPLETE marker, the JSON readable and not ``"complete": false``. None: no complete one."""
    out = Path(out)
    if not holds_complete(out, files):
        return None
    try:
        doc = json.loads((out / files[0]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("complete") is False:
        return None
    return str(doc.get(key))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def recover_replacement(out: str | os.PathLike, entries: tuple[str, ...], files: tuple[str, ...]) -> str | None:
    """Put right a replacement that was killed outright (call it holding the lock): when ``<out>`` is complete
    the replacement had finished, and the earlier result is removed; otherwise the replacement's partial
    entries go and the earlier result comes back. Returns a note saying what was done (None: nothing)."""
    out = Path(out)
    aside = _waiting_aside(out)
    if aside is None:
        return None
    if holds_complete(out, files):
        shutil.rmtree(aside)
        return None
    with deferred():
        out.mkdir(parents=True, exist_ok=True)
        if _marker_says(out, PUTTING_BACK):  # only the earlier result's own entries are in out
            pass
        elif (out / INCOMPLETE).exists():  # the replacement had started: every entry of ours in out is its
            for name in entries:
                if name != INCOMPLETE:
                    _remove(out / name)
        _move_back(aside, out)
    return (
        f"the earlier complete result in {out}, moved aside to {aside} by a replacement that did not "
        "finish, was put back"
    )


#: how INCOMPLETE begins while a failed replacement puts the earlier result back: what is in the folder
#: then is the earlier result's (the next command must not remove it)
PUTTING_BACK = "putting back the earlier complete result"


def _marker_says(out: Path, text: str) -> bool:
    try:
        return (out / INCOMPLETE).read_text(encoding="utf-8").startswith(text)
    except (OSError, UnicodeDecodeError):
        return False


def _move_back(aside: Path, out: Path) -> None:
    """Every entry of ``aside`` back into ``out``, then INCOMPLETE (an earlier complete result has none) and
    ``aside`` go: ``out`` looks complete only once everything is back."""
    for p in sorted(aside.iterdir()):
        _remove(out / p.name)
        os.replace(p, out / p.name)
    (out / INCOMPLETE).unlink(missing_ok=True)
    aside.rmdir()


def _join(message: str, sentence: str) -> str:
    message = message.rstrip()
    return f"{message} {sentence}" if message.endswith(".") else f"{message}. {sentence}"


@contextlib.contextmanager
def replacing(
    out: str | os.PathLike,
    entries: tuple[str, ...],
    files: tuple[str, ...],
    *,
    first: str | None = None,
    what: str = "result",
) -> Iterator[bool]:
    """Replace the complete result in ``out`` (its ``files``, no INCOMPLETE) by what the block writes; yields
    whether there was one. Its ``entries`` (``first`` moved first, so ``out`` is never complete-looking in
    between) go to ``<out>.kavier-earlier`` (``<out>/.kavier-earlier`` where ``out`` is a mount point);
    ``out`` is marked INCOMPLETE; the earlier entries are removed when the block ends normally (the INCOMPLETE
    marker too) and put back when it raises. A :class:`KavierError` (an OSError made one) then ends with what
    became of the earlier ``what``: put back unchanged, or, where the file system no longer lets it move (gone
    read-only), kept unchanged aside for the next command into ``out`` to put back."""
    out = Path(out)
    if not holds_complete(out, files):
        yield False
        return
    order = ([first] if first else []) + [e for e in entries if e != first]
    started = False  # every earlier entry is aside and out is marked: what is in out from then on is new
    aside: Path | None = None
    try:
        with deferred():
            aside = _make_aside(out)
            for name in order:
                if (out / name).exists() or (out / name).is_symlink():
                    os.replace(out / name, aside / name)
            atomic_write_text(
                out / INCOMPLETE,
                f"replacing the complete result that was here (pid {os.getpid()}); "
                f"it is kept in {aside} until this one is complete, and comes back if this one "
                "fails (the next kavier command into this folder puts it back after a kill)\n",
            )
            started = True
        checkpoint(REPLACING)
        yield True
    except BaseException as exc:
        stuck: OSError | None = None  # why the earlier result could not be put back (it stays aside)
        with deferred():
            try:
                if started and not out.is_dir():  # removed meanwhile: not made again, even for this
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(out))
                if started:
                    for name in entries:
                        if name != INCOMPLETE:
                            _remove(out / name)
                    # from here on what is in out is the earlier result's: said before the first moves back
                    atomic_write_text(out / INCOMPLETE, f"{PUTTING_BACK} from {aside} (pid {os.getpid()})\n")
                if aside is not None and aside.is_dir():
                    _move_back(aside, out)
            except OSError as err:
                stuck = err
        if isinstance(exc, KeyboardInterrupt):
            raise
        if isinstance(exc, OSError) and not isinstance(exc, KavierError):
            exc = OutputWriteError.from_os(exc)
        if not isinstance(exc, KavierError):
            raise
        if stuck is None:
            note = f"The earlier complete {what} in {out} was put back unchanged."
        else:
            why = f"{stuck.strerror or stuck} ({errno.errorcode.get(stuck.errno or 0, 'no errno')})"
            note = (
                f"The earlier complete {what} is kept unchanged in {aside}: it could not be moved back into "
                f"{out} ({why}); the next kavier command into {out} puts it back."
            )
        exc.args = (_join(str(exc), note),) + exc.args[1:]
        raise exc from None
    with deferred():
        (out / INCOMPLETE).unlink(missing_ok=True)
        shutil.rmtree(aside)


__all__ = [
    "EARLIER_SUFFIX",
    "LOCK_SUFFIX",
    "OutputInUseError",
    "complete_result_name",
    "earlier_path",
    "inner_earlier_path",
    "holds_complete",
    "lock_path",
    "output_lock",
    "recover_replacement",
    "replacing",
]
