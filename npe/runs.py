"""A training run's files, kept its own: the paths checked before any work, a new run refused where it
would replace an unfinished one, and the run's name held by one live process at a time."""
import contextlib
import fcntl
import math
import os

from . import distributed
from .checkpoint import load_checkpoint
from .cli import NPEError
from .config import SPLITS
from .data import meta_path, split_path
from .files import check_writable, first_line


def total_steps(total_samples, effective_batch):
    return math.ceil(total_samples / effective_batch)


BEST = "_best"  # CKPT_DIR/NAME_best.pt is the best-val checkpoint of run NAME, so no run is named X_best


def run_files(args):
    """The files a run writes: its checkpoint, best-val checkpoint, lock and metrics CSV."""
    return (args.ckpt_dir / f"{args.name}.pt", args.ckpt_dir / f"{args.name}{BEST}.pt",
            args.ckpt_dir / f"{args.name}.lock", args.metrics_csv)


def csv_lock(csv_path):
    """The lock file that keeps two live runs from writing one metrics CSV (from two --ckpt_dir, say)."""
    return csv_path.with_name(f"{csv_path.name}.lock")


@contextlib.contextmanager
def claim_run(args):
    """Before any work: the run's paths checked, its name held by this run alone (rank 0 holds the lock),
    and a new run refused where it would replace an unfinished one."""
    if args.resume and args.overwrite:
        raise NPEError("--resume continues the run in CKPT_DIR/NAME.pt and --overwrite replaces it: give one")
    check_paths(args)
    ckpt_path, _, lock_path, csv_path = run_files(args)
    with contextlib.ExitStack() as held:
        if distributed.is_main():
            held.enter_context(run_lock(lock_path))
            held.enter_context(run_lock(csv_lock(csv_path), f"writing the metrics CSV {csv_path}", "--metrics_csv"))
        if not (args.resume or args.overwrite):
            check_replaceable(ckpt_path)
        yield


def check_paths(args):
    """Refuse a --name, --ckpt_dir or --metrics_csv that cannot hold the run's files, or whose files would
    be the dataset's or each other's, and create their folders: a bad path found at the first validation
    would lose the training before it."""
    if "/" in args.name or args.name in (".", "..", ""):
        raise NPEError(f"--name {args.name!r} is not a plain file name (no '/'); the folder is --ckpt_dir")
    if args.name.endswith(BEST):
        raise NPEError(f"--name {args.name!r} ends in {BEST}: CKPT_DIR/{args.name}.pt would be the best-val "
                       f"checkpoint of run {args.name[:-len(BEST)]!r}; pick another name")
    csv = args.metrics_csv
    if not csv.name or csv.is_dir():
        raise NPEError(f"--metrics_csv {str(csv)!r} is a folder, not a file; name a file, e.g. "
                       f"logs/{args.name}.csv")
    if csv.suffix.lower() != ".csv":
        raise NPEError(f"--metrics_csv {str(csv)!r} does not end in .csv; name a .csv file (any other could be a "
                       f"checkpoint or a dataset file)")
    ckpt_path, best_path, lock_path, csv_path = run_files(args)
    roles = {**{f"the dataset's {path.name}": path for path in
                (meta_path(args.dataset_prefix), *(split_path(args.dataset_prefix, split) for split in SPLITS))},
             "the checkpoint": ckpt_path, "the best-val checkpoint": best_path, "the lock file": lock_path,
             "the metrics CSV": csv_path, "the metrics CSV's lock file": csv_lock(csv_path)}
    seen = {}
    for role, path in roles.items():
        try:
            where = path.resolve()
        except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop
            raise NPEError(f"cannot use {path} as {role}: {first_line(err)}; change --ckpt_dir, --name or "
                           f"--metrics_csv") from None
        if (other := seen.setdefault(where, role)) != role:
            raise NPEError(f"{role} would be {other} ({path}); change --metrics_csv, --name or --ckpt_dir")
    check_writable(ckpt_path, best_path, csv_path)


@contextlib.contextmanager
def run_lock(path, doing=None, instead="--name"):
    """Hold `path` (CKPT_DIR/NAME.lock, with this process's pid in it) while the run lives; a second run of
    the name is refused while the first holds it, saying that the first is `doing` (training
    CKPT_DIR/NAME.pt) and to give this one another `instead`. An flock, so that the kernel releases it when
    a run dies, even by kill -9: a lock file left behind is simply taken over."""
    doing = doing or f"training {path.with_suffix('.pt')}"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise NPEError(f"cannot create the lock file {path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 20, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise NPEError(f"another run (pid {holder}) is {doing} now, holding {path}; wait for it to end, or "
                           f"give this one another {instead}") from None
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        os.close(fd)  # its holder removed that file as it ended: lock the one there now
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):  # a folder made read-only meanwhile must not hide the run's own error
            path.unlink(missing_ok=True)  # before the lock goes, so a run waiting on this file locks a new one
        os.close(fd)


def check_replaceable(path):
    """A new run may replace CKPT_DIR/NAME.pt only where it holds a finished run (the same command again
    starts it over); an unfinished one is continued with --resume or replaced with --overwrite."""
    if not path.exists():
        return
    replace = "pass --overwrite to replace it, or give this run another --name"
    try:
        ckpt = load_checkpoint(path)
    except NPEError as err:
        raise NPEError(f"{err}; {replace}") from None
    try:
        step = ckpt["train_state"]["step"]
        steps = total_steps(ckpt["args"]["total_samples"], ckpt["args"]["effective_batch"])
        unfinished = step < steps
    except (KeyError, TypeError, ZeroDivisionError):
        raise NPEError(f"{path} holds no run that can be resumed (a best-val copy?); {replace}") from None
    if unfinished:
        raise NPEError(f"{path} holds an unfinished run (step {step:,} of {steps:,}): continue it with the same "
                       f"command and --resume, or start over with --overwrite")
    print(f"replacing the finished run in {path} ({steps:,} steps)")


def drop_replaced(run_paths):
    """Remove the best-val checkpoint and metrics CSV (`run_paths`) of the run that a new one replaced, once
    the new one has saved its first checkpoint and has not validated yet: beside the new CKPT_DIR/NAME.pt
    they would pass for its own."""
    for path in run_paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise NPEError(f"cannot remove {path}, left by the run this one replaced: {err.strerror}") from None
