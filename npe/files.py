"""Writing outputs atomically: a temporary file beside the target, fsync, then rename, so an
interrupted run never leaves a half-written file under the final name, and a failed write (a full disk)
never replaces a good one."""
import contextlib
import os
import re
import stat
from pathlib import Path

import torch

from .cli import NPEError


def ensure_parent(path):
    """Create the folder that will hold `path` (before long work, so a bad path fails fast)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NPEError(f"cannot create folder {path.parent}: {err.strerror}") from None
    return path


def first_line(err):
    """The first line of an exception's message, or its type when it has none: one line for the user."""
    text = (err.strerror if isinstance(err, OSError) and err.strerror else str(err)).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def temp_path(path, pid):
    """The temporary name of `path` for process `pid`; the next write of `path` removes it once pid has ended."""
    return path.with_name(f".{path.stem}.tmp{pid}{path.suffix}")


def _remove_stale_temps(path):
    """Remove the temporary files of `path` that processes no longer running left behind (a kill -9)."""
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.tmp(\d+){re.escape(path.suffix)}")
    with contextlib.suppress(OSError):  # best effort: a folder we cannot list or a file we cannot remove
        for other in path.parent.iterdir():
            if (found := pattern.fullmatch(other.name)) and not _running(int(found[1])):
                other.unlink(missing_ok=True)


def _running(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


@contextlib.contextmanager
def atomic_paths(*paths):
    """Yield temporary paths to write, one per target; on success they replace their targets as one unit,
    the last one last (the commit point a reader checks the others against: its old file goes first, so a
    mix of old and new is never committed), on failure they are all removed and every target is kept.

    Any OSError while writing (a full disk, a quota, an I/O error) is one NPEError naming the target;
    writers whose libraries report a failed write otherwise (torch, ffmpeg) turn it into an OSError.
    Removing the temporary files never hides that error.
    """
    paths = [ensure_parent(path) for path in paths]
    for path in paths:
        _remove_stale_temps(path)
    temps = [temp_path(path, os.getpid()) for path in paths]
    try:
        yield temps
        for tmp in temps:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if len(paths) > 1:
            paths[-1].unlink(missing_ok=True)
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    except OSError as err:
        named = {str(tmp): path for tmp, path in zip(temps, paths)}
        path = named.get(str(err.filename), paths[0])
        raise NPEError(f"cannot write {path}: {first_line(err)}; the previous file, if any, is kept") from None
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):  # a name too long to create is too long to remove
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed (atomic_paths)."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def check_writable(*paths):
    """Before the work: each output's folder created and its temporary name (the longest name a write
    uses) created and removed there, so that a read-only folder, a name too long for the file system or
    an output that is a folder is one NPEError now rather than a traceback after the work."""
    for path in map(ensure_parent, paths):
        if os.path.isdir(path):  # False for a name too long, which the write below then names
            raise NPEError(f"cannot write {path}: it is a folder; name a file")
        tmp = temp_path(path, os.getpid())
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))
            os.unlink(tmp)
        except OSError as err:
            raise NPEError(f"cannot write {path}: {first_line(err)}; nothing was done") from None


def write_torch(obj, path):
    """torch.save into `path` (a temporary path of atomic_paths)."""
    with open(path, "wb") as f:
        try:
            torch.save(obj, f)  # a file object, so the archive inside is not named after the temp file
        except RuntimeError as err:  # torch reports a failed write (a full disk) as a RuntimeError
            raise OSError(first_line(err)) from None


def save_torch(obj, path):
    with atomic_path(path) as tmp:
        write_torch(obj, tmp)


def save_text(text, path):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def regular_file(path, what, hint):
    """`path` as a Path, or one NPEError when it is missing or not a regular file (a FIFO would hang the
    read, a folder or a device gives a confusing error)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        raise NPEError(f"{what} not found: {path} ({hint})") from None
    if not stat.S_ISREG(mode):
        raise NPEError(f"{what} {path} is not a regular file ({hint})")
    return path


def load_torch(path, what, hint):
    """torch.load with weights_only=True (no code runs from a crafted file), or one clear NPEError."""
    path = regular_file(path, what, hint)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or hostile file: all say the same to the user
        raise NPEError(f"cannot read {what} {path}: {first_line(err)} ({hint})") from None
