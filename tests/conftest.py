"""Shared fixtures and helpers: a small dataset and two tiny checkpoints, made once per test session by the
scripts' own main() in this process; a script run the way a user runs it, in a fresh interpreter
(run_script) or as its main() in this one (cli); and what a user reads of it.

Tests marked `slow` start processes (scripts, torchrun, signals) or train end to end; `bash scripts/test.sh
--fast` leaves them out."""
import contextlib
import importlib
import io
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from npe.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
NUM_SCENES = 24  # -> 16 train, 4 val, 4 test scenes
SEED = 7
CLASSIC, MODERN = "train_npe_4ball.py", "train_npe_4ball_modern.py"
TINY_TRAINING = ["--total_samples", 400, "--batch_size", 50, "--eval_every", 4, "--device", "cpu"]
TINY_MODERN = ["--msg_dim", 16, "--enc_blocks", 1, "--dec_blocks", 1]
# The environment of every child process: one thread each, as the suite shares 2 cores with other work.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TQDM = re.compile(r"^[\w ]+:\s+\d+%\|")  # a progress bar line, e.g. "train classic:  40%|####  | 2/5 ..."

os.environ["OMP_NUM_THREADS"] = "1"  # the scripts run in this process too: --threads 0 then keeps 1
torch.set_num_threads(1)


def run_python(*args, timeout=300, **env):
    """`python ARGS` in a fresh interpreter from the repository root, with CHILD_ENV and `env`; the
    CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env={**CHILD_ENV, **env},
                          capture_output=True, text=True, timeout=timeout)


def run_script(script, *args, timeout=300):
    """Run one of the top-level scripts in a fresh interpreter; returns the CompletedProcess."""
    return run_python(REPO / script, *args, timeout=timeout)


# A shell without job control starts a background job (`pytest &`) with SIGINT ignored, and a child inherits
# that: Python then never raises KeyboardInterrupt, and the Ctrl-C tests would hang. A handler of this
# process's own becomes the default action in every child it starts (exec keeps only "ignored"), so the
# children handle Ctrl-C as from a terminal. (A preexec_fn that reset it ran Python between fork and exec in
# a process with threads, torch's and tqdm's, which can deadlock the child before it ever starts.)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
STARTUP_S = 120  # the most a started script may take to show that it works, on a loaded machine


def start(script, *args, **popen):
    """A script in its own interpreter, stdout and stderr piped, handling Ctrl-C as from a terminal."""
    return subprocess.Popen([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def generation_under_way(prefix, workers):
    """generate_dataset_4ball.py on a million scenes in a session of its own, once it has simulated some:
    (the process, what it has written to stderr so far). Killed, with its workers, if it has not within
    STARTUP_S: a test must never wait on a process without a deadline."""
    proc = start("generate_dataset_4ball.py", "--num_scenes", 10**6, "--workers", workers, "--out_prefix", prefix,
                 start_new_session=True)
    seen, deadline = "", time.monotonic() + STARTUP_S
    while not re.search(r"\| [1-9]\d*/1000000 ", seen):
        ready = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))[0]
        chunk = os.read(proc.stderr.fileno(), 4096).decode() if ready else ""
        if not chunk:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"generation simulated no scene {'in time' if not ready else 'before it ended'}:\n"
                        f"{seen[-2000:]}")
        seen += chunk
    return proc, seen


def group_members(pgid):
    """The processes of a process group other than its leader (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            pid, rest = stat.read_text().split(" ", 1)
            if int(rest.rsplit(")", 1)[1].split()[2]) == pgid and int(pid) != pgid:
                members.append(int(pid))
    return members


def finish(proc, timeout, kill=subprocess.Popen.kill):
    """(stderr, hung): what the process wrote, and whether it had to be killed after `timeout` s."""
    try:
        return proc.communicate(timeout=timeout)[1], False
    except subprocess.TimeoutExpired:
        kill(proc)
        return proc.communicate()[1], True


def dead_pid():
    """The pid of a process that has ended (a run killed with kill -9, say)."""
    return int(run_python("-c", "import os; print(os.getpid())", timeout=60).stdout)


def check(result):
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stderr[-3000:]}"
    return result


def messages(stderr):
    """The lines of stderr a user reads: no blank lines, no progress bars."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and not TQDM.match(line)]


def is_one_error_line(lines):
    return len(lines) == 1 and lines[0].startswith("error:")


def cli(script, *args):
    """Run a script's main() in this process, as `python script args` would; returns (exit status, messages)."""
    main = importlib.import_module(Path(script).stem).main
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(sys, "argv", [script, *map(str, args)])
        try:
            run_cli(main)
            status = 0
        except SystemExit as exit_:
            status = exit_.code
    return status, messages(err.getvalue())


def ok(result):
    status, lines = result
    assert status == 0, lines


@pytest.fixture(scope="session")
def script():
    return run_script


@pytest.fixture(scope="session")
def tmp_session(tmp_path_factory):
    return tmp_path_factory.mktemp("npe")


def generation_flags(folder, workers):
    """generate_dataset_4ball.py's flags for the session dataset, written into a folder of its own."""
    return ["--num_scenes", NUM_SCENES, "--seed", SEED, "--workers", workers,
            "--out_prefix", folder / "data" / f"{workers}_workers" / "balls"]


@pytest.fixture(scope="session")
def dataset(tmp_session):
    """The prefix of a small dataset, simulated in one process by generate_dataset_4ball.py's main()."""
    flags = generation_flags(tmp_session, 1)
    ok(cli("generate_dataset_4ball.py", *flags))
    return flags[-1]


@pytest.fixture(scope="session")
def dataset_two_workers(tmp_session):
    """The same dataset (same seed and size), simulated by generate_dataset_4ball.py in its own interpreter with
    two worker processes."""
    flags = generation_flags(tmp_session, 2)
    check(run_script("generate_dataset_4ball.py", *flags))
    return flags[-1]


@pytest.fixture(scope="session")
def checkpoints(dataset, tmp_session):
    """{kind: (checkpoint, metrics CSV)} from a few steps of each training script's main()."""
    out = {}
    for kind, script_name, extra in [("classic", CLASSIC, []), ("modern", MODERN, TINY_MODERN)]:
        ckpt_dir, csv = tmp_session / "checkpoints", tmp_session / "logs" / f"{kind}.csv"
        ok(cli(script_name, "--dataset_prefix", dataset, "--name", kind, "--ckpt_dir", ckpt_dir,
               "--metrics_csv", csv, *TINY_TRAINING, *extra))
        out[kind] = (ckpt_dir / f"{kind}.pt", csv)
    return out
