"""The one way embeval writes a file: checked up front, staged, then put in place whole.

Every output (result CSVs, curves, scores, partial statistics, embeddings, checkpoints)
is written through :func:`atomic_path`:

- a regular file (or a new path) is written to a hidden temporary file beside it and
  renamed over it only when complete: a crash, a full disk or an error leaves the old
  file (or nothing) under the name, never half a file. A new file gets ``0666`` minus the
  umask (what ``open()`` would give it), a replaced one keeps its mode; missing parent
  folders are created.
- never through a symbolic link: embeval creates none, so a link at an output name (to a
  file, a folder or nowhere) is refused rather than followed, and its target is untouched.
  Links to a character device or FIFO, and the descriptor names ``/dev/stdout``,
  ``/dev/stderr``, ``/dev/fd/N`` (written into, even when redirected to a file), are the
  exceptions.
- a character device or FIFO (``/dev/stdout``, ``/dev/null``, a named pipe) and ``-``
  (standard output) are written straight into, never renamed over: the result is
  staged in a temporary file and copied in once complete. A *member* output (a file whose
  name embeval chose inside an output folder, ``show --out DIR``) is a regular file or
  nothing: a FIFO or device there is refused before it could block.
- a folder, a block device or a socket is refused.

Inside :func:`transaction` nothing appears until every output of the block is complete:
the renames (and copies) happen together at its end, or, on any error, not at all.

:func:`check_outputs` runs before any work: it refuses an output that is also an input
(by inode, so through links too), two outputs naming the same file, folders and
unwritable places, with one message naming the files.
"""

from __future__ import annotations

import contextvars
import errno
import os
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from embeval.errors import InputFileError

__all__ = ["atomic_path", "append_text", "transaction", "check_outputs", "check_members", "STDOUT"]

STDOUT = "-"
PathLike = str | os.PathLike[str]
#: (put the file in place, its staged temporary file) of each output of the open transaction
_pending: contextvars.ContextVar[list[tuple[Callable[[], None], Path]] | None] = \
    contextvars.ContextVar("embeval_outputs_pending", default=None)
#: errors that mean "this output cannot be written" (as opposed to a failing input)
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
_umask_lock = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # elsewhere: set and restore (process-wide, hence the lock)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


LINK_REFUSED = ("is a symbolic link: refusing to write through it (embeval writes only files it "
                "creates; remove the link or name its target)")


def _special(path: Path, *, member: bool = False) -> os.stat_result | None:
    """The stat of an existing non-regular file, None for a regular file or a new path.

    Refuses a folder, a block device, a socket and a symbolic link to a file, a folder or
    nowhere; with ``member`` (a name embeval chose inside an output folder) anything but a
    regular file or nothing (a link, a FIFO, a device)."""
    try:
        lst = path.lstat()
    except (FileNotFoundError, NotADirectoryError):  # a new path (its folder is checked apart)
        return None
    except OSError as e:
        raise InputFileError(path, f"cannot write ({e.strerror or e})") from None
    if member and not stat.S_ISREG(lst.st_mode):
        if stat.S_ISLNK(lst.st_mode):
            raise InputFileError(path, LINK_REFUSED)
        if stat.S_ISDIR(lst.st_mode):
            raise InputFileError(path, "is a folder, expected a file name")
        raise InputFileError(path, "is not a regular file (a FIFO, device or socket?): refusing "
                                   "to write to it (remove it)")
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):  # a dangling link
        raise InputFileError(path, LINK_REFUSED) from None
    except OSError as e:
        raise InputFileError(path, f"cannot write ({e.strerror or e})") from None
    if _descriptor(path) and not stat.S_ISDIR(st.st_mode):
        return st  # /dev/stdout redirected to a file: written into (the shell's file), never renamed
    if stat.S_ISLNK(lst.st_mode) and (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise InputFileError(path, LINK_REFUSED)
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError(path, "is a folder, expected a file name")
    if stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        kind = "a block device" if stat.S_ISBLK(st.st_mode) else "a socket"
        raise InputFileError(path, f"is {kind}: refusing to write to it")
    return None if stat.S_ISREG(st.st_mode) else st


def _descriptor(path: Path) -> bool:
    """Whether ``path`` names an open file descriptor (``/dev/stdout``, ``/dev/fd/3``): the
    system's links, written into like a device."""
    name = os.fspath(path)
    return name in ("/dev/stdout", "/dev/stderr") or name.startswith(("/dev/fd/", "/proc/self/fd/"))


def _write_error(path: PathLike, e: OSError) -> InputFileError:
    return InputFileError(path, f"cannot write ({e.strerror or e})")


@contextmanager
def atomic_path(path: PathLike, *, member: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; put it in place on success.

    See the module docstring. ``path`` may be ``-`` (standard output). ``member``: ``path`` is
    a name embeval chose inside an output folder (a regular file or nothing, see
    :func:`check_members`). An ``OSError`` while writing (a full disk, a quota, a file-size
    limit) becomes an :class:`InputFileError` naming ``path``; the temporary file is removed
    on any error.
    """
    name = os.fspath(path)
    if name in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        name = STDOUT  # through this process's own stream: a redirected file keeps its offset
    direct = name != STDOUT and _special(Path(name), member=member) is not None
    direct = direct or name == STDOUT
    # the folder is resolved (a linked output folder is the user's choice), the name is not
    target = Path(name) if direct else Path(os.path.realpath(Path(name).parent)) / Path(name).name
    folder = Path(tempfile.gettempdir()) if direct else target.parent
    if not direct:
        _check_folder(Path(name), "")
    try:
        if not direct:
            folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise _write_error(path, e) from None
    tmp = Path(tmp_name)
    try:
        mode = target.stat().st_mode if not direct and target.exists() else 0o666 & ~_umask()
        os.fchmod(fd, stat.S_IMODE(mode))
    finally:
        os.close(fd)
    try:
        yield tmp
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in WRITE_ERRORS:
            raise _write_error(path, e) from None
        raise
    commit = (lambda: _copy_into(tmp, name)) if direct else (lambda: _rename(tmp, target, path))
    pending = _pending.get()
    if pending is None:
        commit()
    elif direct:  # device copies first: the one step that can still fail (/dev/full)
        pending.insert(0, (commit, tmp))
    else:
        pending.append((commit, tmp))


def _rename(tmp: Path, target: Path, shown: PathLike) -> None:
    try:
        os.replace(tmp, target)  # a link that appeared since the check is replaced, not followed
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(shown, e) from None


def _copy_into(tmp: Path, name: str) -> None:
    """Copy the staged file into a device, FIFO or standard output, then remove it."""
    try:
        with open(tmp, "rb") as src:
            if name == STDOUT:
                sys.stdout.flush()
                shutil.copyfileobj(src, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            else:
                with open(name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise _write_error(name, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def append_text(path: PathLike, text: str) -> None:
    """Append ``text`` (UTF-8, one write, synced) to the log file ``path``, created if absent.

    The opener's rules for a file that grows (``train``'s ``metrics.jsonl``): never through a
    symbolic link (``O_NOFOLLOW``), only into a regular file (a FIFO is opened without blocking
    and refused), new files ``0666`` minus the umask. :class:`InputFileError` naming ``path``.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputFileError(path, LINK_REFUSED) from None
        if e.errno == errno.ENXIO:  # a FIFO nobody reads
            raise InputFileError(path, "is not a regular file (a FIFO?): refusing to write to it") \
                from None
        raise _write_error(path, e) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputFileError(path, "is not a regular file (a FIFO, device or socket?): "
                                       "refusing to write to it")
        os.set_blocking(fd, True)
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except OSError as e:
        raise _write_error(path, e) from None
    finally:
        os.close(fd)


@contextmanager
def transaction() -> Iterator[None]:
    """Outputs written in this block appear together at its end, or none of them on error.

    Nested blocks join the outermost one.
    """
    if _pending.get() is not None:
        yield
        return
    pending: list[tuple[Callable[[], None], Path]] = []
    token = _pending.set(pending)
    try:
        yield
        for commit, _ in pending:
            commit()
    finally:
        _pending.reset(token)
        for _, tmp in pending:  # whatever was not put in place
            tmp.unlink(missing_ok=True)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):  # ValueError: a NUL in the name (an item path of a file)
        return None
    return st.st_dev, st.st_ino


def check_outputs(outputs: Mapping[str, PathLike | None],
                  inputs: Iterable[PathLike] = ()) -> None:
    """Refuse, before any work, outputs that cannot or must not be written.

    ``outputs``: what names each output (an option or parameter name) -> its path (None: not
    asked for). Raises :class:`InputFileError` when an output is a folder, a block device or a
    socket, when its folder cannot be created or written, when it is the same file as one of
    ``inputs`` or as another output (device files such as ``/dev/null`` may repeat).
    """
    inputs_by_id: dict[tuple[int, int], Path] = {}
    for p in inputs:
        ident = _identity(Path(p))
        if ident is not None:
            inputs_by_id.setdefault(ident, Path(p))
    seen: dict[object, str] = {}
    for option, value in outputs.items():
        if value is None:
            continue
        name = os.fspath(value)
        if name == STDOUT:
            continue
        path = Path(name)
        ident = _identity(path)
        if ident in inputs_by_id and path.is_file():  # an input behind a link: say so first
            raise InputFileError(path, f"{option}: is the input {inputs_by_id[ident]}: refusing "
                                       "to overwrite an input (choose another output file)")
        try:
            special = _special(path)
        except InputFileError as e:
            raise InputFileError(path, f"{option}: {e.problem}") from None
        if special is not None:
            continue
        key = ident or os.path.realpath(name)
        if key in seen:
            raise InputFileError(path, f"{option}: the same file is also given to {seen[key]}")
        seen[key] = option
        _check_folder(path, option)


def check_members(folder: PathLike, names: Iterable[str], inputs: Iterable[PathLike] = (),
                  option: str = "--out") -> None:
    """Refuse, before any work, the files embeval is about to write inside an output folder.

    Each ``folder / name`` must be a regular file or nothing (not a link, a FIFO, a device or
    a folder: see :func:`atomic_path`'s ``member``) and not the same file as one of ``inputs``
    (embedding files, images). Raises :class:`InputFileError` naming the file and ``option``.
    """
    inputs_by_id: dict[tuple[int, int], Path] = {}
    for p in inputs:
        ident = _identity(Path(p))
        if ident is not None:
            inputs_by_id.setdefault(ident, Path(p))
    for name in names:
        path = Path(folder) / name
        try:
            _special(path, member=True)
        except InputFileError as e:
            raise InputFileError(path, f"{option}: {e.problem}") from None
        ident = _identity(path)
        if ident in inputs_by_id:
            raise InputFileError(path, f"{option}: is the input {inputs_by_id[ident]}: refusing "
                                       "to overwrite an input (choose another output folder)")
    if Path(folder).exists() or Path(folder).is_symlink():
        _check_folder(Path(folder) / "x", option)


def _check_folder(path: Path, option: str) -> None:
    """The output's folder exists and is writable, or can be created under a writable one."""
    folder = Path(os.path.realpath(path)).parent
    while not os.path.lexists(folder):
        folder = folder.parent
    where = f"{option}: " if option else ""
    if not folder.is_dir():
        raise InputFileError(path, f"{where}{str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputFileError(path, f"{where}folder {str(folder)!r} is not writable")
