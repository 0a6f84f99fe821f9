"""Training under torchrun: two CPU processes (gloo) on the session dataset. Each takes half of every
batch, so two processes of batch 50 must train the weights one process of batch 100 trains, and a run
saved by two processes must load and resume in one."""
import contextlib
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import CHILD_ENV, CLASSIC, REPO, check, run_python
from npe import load_model
from npe.cli import NPEError
from npe.train import train, train_parser

pytestmark = pytest.mark.slow  # every test here starts torchrun or needs a run it started

# 20 steps of 100 windows (2 x 50) with input noise, so that the noise's share is checked too.
FLAGS = ["--total_samples", 2000, "--eval_every", 5, "--device", "cpu", "--seed", 3, "--optimizer", "adamw",
         "--lr", 3e-3, "--noise_std", 0.01]


def torchrun_args(dataset, folder, *extra):
    """The arguments of `python -m torch.distributed.run` for two processes of the classic training script."""
    # --standalone picks a free port, so that other runs on the machine do not collide with this one
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / CLASSIC),
            "--dataset_prefix", str(dataset), "--name", "run", "--ckpt_dir", str(folder), "--metrics_csv",
            str(folder / "m.csv"), *map(str, extra)]


def torchrun(dataset, folder, *extra):
    return check(run_python(*torchrun_args(dataset, folder, *extra), timeout=120))


def train_alone(dataset, folder, *extra):
    """One process, in this one."""
    args = train_parser("classic", "test").parse_args(
        ["--dataset_prefix", str(dataset), "--name", "run", "--ckpt_dir", str(folder), "--metrics_csv",
         str(folder / "m.csv"), *map(str, FLAGS), *map(str, extra)])
    return train(args)


def csv_rows(path):
    """The metrics CSV's rows, its numbers as floats (its model and predict columns are text)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if k not in ("model", "predict")} for row in csv.DictReader(f)]


def weights(folder):
    return torch.load(folder / "run.pt", weights_only=True)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def alone(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("alone_batch_100")
    train_alone(dataset, folder, "--batch_size", 100)
    return folder


@pytest.fixture(scope="module")
def pair(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair_batch_50")
    result = torchrun(dataset, folder, *FLAGS, "--batch_size", 50)
    return SimpleNamespace(folder=folder, stdout=result.stdout)


@pytest.fixture(scope="module")
def pair_then_alone(dataset, tmp_path_factory):
    """Two processes of batch 50 stopped after step 10, resumed by one process of batch 100."""
    folder = tmp_path_factory.mktemp("pair_then_alone")
    torchrun(dataset, folder, *FLAGS, "--batch_size", 50, "--stop_after_steps", 10)
    train_alone(dataset, folder, "--batch_size", 100, "--resume")
    return folder


def test_two_processes_lower_the_validation_loss(pair):
    val = [r["val_loss"] for r in csv_rows(pair.folder / "m.csv")]
    assert len(val) == 4 and val[-1] < val[0]


def test_two_processes_of_batch_50_train_the_weights_of_one_process_of_batch_100(pair, alone):
    """Holds only if the two processes took the two different halves of each batch of 100."""
    assert_same_weights(weights(pair.folder), weights(alone))


def test_two_processes_log_the_losses_of_the_whole_batch_and_val_split(pair, alone):
    for two, one in zip(csv_rows(pair.folder / "m.csv"), csv_rows(alone / "m.csv"), strict=True):
        assert two["samples_seen"] == one["samples_seen"] == two["step"] * 100
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)


def test_only_rank_0_prints(pair):
    assert pair.stdout.count("classic model of the next velocity:") == pair.stdout.count("checkpoint:") == 1


def test_checkpoint_of_two_processes_loads_in_one(pair):
    assert load_model(pair.folder / "run.pt").kind == "classic"
    args = torch.load(pair.folder / "run.pt", weights_only=True)["args"]
    assert (args["batch_size"], args["world_size"], args["effective_batch"]) == (50, 2, 100)


def test_run_of_two_processes_resumes_in_one_with_the_same_effective_batch(pair_then_alone, alone):
    assert_same_weights(weights(pair_then_alone), weights(alone))
    assert csv_rows(pair_then_alone / "m.csv")[-1]["step"] == 20


def test_resume_with_another_effective_batch_is_refused_naming_it(pair, dataset, tmp_path):
    shutil.copy(pair.folder / "run.pt", tmp_path / "run.pt")
    with pytest.raises(NPEError, match=r"effective batch .* was 100 \(50 x 2\), now 50 x 1"):
        train_alone(dataset, tmp_path, "--batch_size", 50, "--resume")


def test_signal_to_one_process_stops_both_after_the_same_step(dataset, tmp_path):
    """A scheduler may signal one process only: the other must stop with it, not hang in the next step."""
    endless = ["--total_samples", 10**7, "--batch_size", 50, "--eval_every", 10**6, "--save_every", 2,
               "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, *torchrun_args(dataset, tmp_path, *endless)], cwd=REPO, env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:  # whatever fails, the launcher and both ranks go: an endless run left behind would starve the suite
        deadline = time.time() + 60
        while not (tmp_path / "run.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        rank_1 = [pid for pid in children(proc.pid) if "RANK=1\0" in environ(pid)]
        assert len(rank_1) == 1, "no running rank 1"
        os.kill(rank_1[0], signal.SIGTERM)
        try:
            stderr = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            pytest.fail("still running 60 s after the signal")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    stops = re.findall(r"error: stopped by SIGTERM at step (\d+)", stderr)
    assert len(stops) == 2 and stops[0] == stops[1], stderr[-3000:]
    assert torch.load(tmp_path / "run.pt", weights_only=True)["train_state"]["step"] == int(stops[0])


def children(pid):
    """Direct child processes of `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError):
            pass
    return found


def environ(pid):
    try:
        return (Path("/proc") / str(pid) / "environ").read_text()
    except OSError:
        return ""
