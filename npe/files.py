"""Writing outputs atomically: a temporary file beside the target, fsync, then rename, so an
interrupted run never leaves a half-written file under the final name."""
import contextlib
import os
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


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed."""
    path = ensure_parent(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise NPEError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def save_torch(obj, path):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)  # a file object, so the archive inside is not named after the temp file


def save_text(text, path):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def load_torch(path, what, hint):
    """torch.load with weights_only=True (no code runs from a crafted file), or one clear NPEError."""
    path = Path(path)
    if not path.is_file():
        raise NPEError(f"{what} not found: {path} ({hint})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or hostile file: all say the same to the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NPEError(f"cannot read {what} {path}: {first[:200]} ({hint})") from None
