"""What happens when things go wrong: a run stopped and resumed, a signal, a kill -9, a loss that blows
up, a hostile file, a resume that does not fit, Ctrl-C while generating, a path that cannot be written.
Cheap failures run the scripts' main() in this process; signals and kills need real processes."""
import contextlib
import csv
import os
import pickle
import random
import re
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import (CLASSIC, MODERN, SEED, TINY_MODERN, cli, finish, generation_under_way, group_members,
                      is_one_error_line, messages, ok,
                      start)
from npe.cli import NPEError
from npe.config import World
from npe.data import generate_dataset
from npe.sim import simulate_scenes

ENDLESS = ["--total_samples", 10**7, "--batch_size", 50, "--eval_every", 10**6, "--device", "cpu"]


def signature(path):
    """Changes whenever the file is replaced (atomic writes make a new inode); None while it is missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def wait_for_new_file(path, proc, before=None, timeout=60):
    """Wait until `path` exists and differs from `before`, while `proc` keeps running."""
    deadline = time.time() + timeout
    while signature(path) in (None, before):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before writing {path}:\n"
                        f"{proc.communicate()[1][-2000:]}")
        if time.time() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"no {path} after {timeout} s")
        time.sleep(0.05)


def run_flags(dataset, folder, name="run"):
    return ["--dataset_prefix", dataset, "--name", name, "--ckpt_dir", folder, "--metrics_csv", folder / "m.csv"]


def all_finite(state_dict):
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


# 1. Resume is exact ---------------------------------------------------------------------------------

# 10 steps of 200 of the 928 training windows, a validation every 4: the batch order is redrawn before
# steps 5 and 9. Stopped after step 4: at the end of an epoch, with a validation; after step 5: within
# an epoch, between validations.
STOPS = [4, 5]
SHORT = ["--total_samples", 2000, "--batch_size", 200, "--eval_every", 4, "--device", "cpu", "--seed", 3]
KINDS = {  # kind: (script, flags); the classic keeps its default RMSprop, the modern uses both RNGs
    "classic": (CLASSIC, []),
    "modern": (MODERN, [*TINY_MODERN, "--dropout", 0.2, "--noise_std", 0.01]),
}


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """For each kind: the run in one go ('whole'), and for each stop, the run stopped there and resumed."""
    out = {}
    for kind, (script, extra) in KINDS.items():
        whole = tmp_path_factory.mktemp(f"{kind}_whole")
        ok(cli(script, *run_flags(dataset, whole), *SHORT, *extra))
        split = {}
        for stop in STOPS:
            split[stop] = tmp_path_factory.mktemp(f"{kind}_stopped_after_{stop}")
            ok(cli(script, *run_flags(dataset, split[stop]), *SHORT, *extra, "--stop_after_steps", stop))
            ok(cli(script, *run_flags(dataset, split[stop]), *SHORT, *extra, "--resume"))
        out[kind] = SimpleNamespace(whole=whole, split=split)
    return out


def csv_rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(f)]


@pytest.mark.parametrize("stop", STOPS, ids=lambda n: f"stopped after {n}")
@pytest.mark.parametrize("kind", KINDS)
def test_stopped_and_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_one(runs, kind, stop):
    whole = torch.load(runs[kind].whole / "run.pt", weights_only=True)
    split = torch.load(runs[kind].split[stop] / "run.pt", weights_only=True)
    assert split["train_state"]["step"] == whole["train_state"]["step"] == 10
    assert whole["state_dict"].keys() == split["state_dict"].keys()
    differ = [k for k in whole["state_dict"] if not torch.equal(whole["state_dict"][k], split["state_dict"][k])]
    assert not differ


@pytest.mark.parametrize("stop", STOPS, ids=lambda n: f"stopped after {n}")
@pytest.mark.parametrize("kind", KINDS)
def test_resumed_metrics_csv_has_the_rows_of_an_uninterrupted_run_and_no_duplicates(runs, kind, stop):
    whole, split = csv_rows(runs[kind].whole / "m.csv"), csv_rows(runs[kind].split[stop] / "m.csv")
    assert [int(r["step"]) for r in whole] == [4, 8, 10]
    assert split == whole


# 2. SIGINT and SIGTERM ------------------------------------------------------------------------------

SIGNALLED = [*ENDLESS, "--save_every", 2]


@pytest.fixture(scope="module", params=[signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def signalled(request, dataset, tmp_path_factory):
    """A long classic run, sent the signal once it has saved a checkpoint."""
    folder = tmp_path_factory.mktemp(f"signal_{request.param.name}")
    proc = start(CLASSIC, *run_flags(dataset, folder), *SIGNALLED)
    wait_for_new_file(folder / "run.pt", proc)
    proc.send_signal(request.param)
    stderr, hung = finish(proc, timeout=60)
    return SimpleNamespace(signal=request.param, status=proc.returncode, stderr=stderr, hung=hung, folder=folder,
                           dataset=dataset)


@pytest.mark.slow
def test_signal_exits_with_128_plus_its_number(signalled):
    assert not signalled.hung, "still running 60 s after the signal"
    assert signalled.status == 128 + signalled.signal.value, signalled.stderr[-2000:]  # 130, 143


@pytest.mark.slow
def test_signal_ends_with_an_error_line_that_says_how_to_resume(signalled):
    last = messages(signalled.stderr)[-1]
    assert last.startswith("error:") and "--resume" in last


@pytest.mark.slow
def test_signal_prints_no_traceback(signalled):
    assert "Traceback" not in signalled.stderr


@pytest.mark.slow
def test_signal_leaves_a_safely_loadable_checkpoint_with_training_state(signalled):
    ckpt = torch.load(signalled.folder / "run.pt", weights_only=True)
    assert "train_state" in ckpt


@pytest.mark.slow
def test_run_stopped_by_a_signal_resumes_where_it_stopped_and_exits_0(signalled, tmp_path):
    folder = shutil.copytree(signalled.folder, tmp_path / "run")
    stopped = torch.load(folder / "run.pt", weights_only=True)["train_state"]["step"]
    # --total_samples must stay the same (--resume refuses a change), so end the run soon this way.
    ok(cli(CLASSIC, *run_flags(signalled.dataset, folder), *SIGNALLED, "--resume",
           "--stop_after_steps", stopped + 2))
    assert torch.load(folder / "run.pt", weights_only=True)["train_state"]["step"] == stopped + 2


# 3. kill -9 -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_at_random_moments_never_corrupts_the_last_checkpoint(dataset, tmp_path):
    """Each run rewrites the checkpoint after every step; it is killed a random moment after its first save."""
    rng, ckpt = random.Random(0), tmp_path / "run.pt"
    for _ in range(5):
        before = signature(ckpt)
        proc = start(CLASSIC, *run_flags(dataset, tmp_path), *ENDLESS, "--save_every", 1, "--overwrite")
        wait_for_new_file(ckpt, proc, before)
        time.sleep(rng.uniform(0, 0.4))
        proc.kill()
        proc.communicate()
        assert "train_state" in torch.load(ckpt, weights_only=True)


# 4. Non-finite loss ---------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["1e30", "1e38"], ids=["lr 1e30", "lr 1e38"])
def blown_up(request, dataset, tmp_path_factory):
    """Classic runs whose learning rate makes the loss non-finite within a few steps, saving every step.

    With 1e38 the first RMSprop step already makes the weights infinite while that step's loss was finite.
    """
    folder = tmp_path_factory.mktemp("blown_up")
    status, lines = cli(CLASSIC, *run_flags(dataset, folder), *SHORT, "--save_every", 1, "--lr", request.param)
    return SimpleNamespace(status=status, lines=lines, ckpt=folder / "run.pt")


def test_non_finite_loss_stops_with_one_error_line_naming_the_step(blown_up):
    assert blown_up.status == 2
    assert is_one_error_line(blown_up.lines), blown_up.lines
    assert "non-finite" in blown_up.lines[0] and re.search(r"step \d+", blown_up.lines[0])


def test_non_finite_loss_leaves_only_finite_weights_on_disk(blown_up):
    if blown_up.ckpt.exists():
        assert all_finite(torch.load(blown_up.ckpt, weights_only=True)["state_dict"])


# 5. A hostile pickle --------------------------------------------------------------------------------

class TouchMarker:
    """Unpickling this object creates the file `path`: what a hostile checkpoint would do."""

    def __init__(self, path):
        self.path = Path(path)

    def __reduce__(self):
        return Path.touch, (self.path,)


def write_pickle(obj, path):
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the protocol torch.load expects


def write_torch(obj, path):
    torch.save(obj, path)


UNSAFE_LOADS = {write_pickle: lambda p: pickle.loads(p.read_bytes()),
                write_torch: lambda p: torch.load(p, weights_only=False)}


@pytest.fixture(params=[write_pickle, write_torch], ids=["pickle", "torch.save"])
def hostile(request, tmp_path):
    """(file, marker): the file creates the marker when unpickled; checked once with an unsafe load."""
    path, marker = tmp_path / "hostile.pt", tmp_path / "PWNED"
    request.param(TouchMarker(marker), path)
    UNSAFE_LOADS[request.param](path)
    assert marker.exists(), "the crafted file does not run code when unpickled; the test would prove nothing"
    marker.unlink()
    return path, marker


def test_hostile_checkpoint_is_refused_without_running_its_code(hostile, tmp_path):
    path, marker = hostile
    status, lines = cli("compare_rollouts_classic_vs_modern.py", "--classic_ckpt", path, "--num_scenes", 1,
                        "--rollout_steps", 2, "--out_png", tmp_path / "out" / "c.png")
    assert status == 2 and is_one_error_line(lines) and str(path) in lines[0], lines
    assert not marker.exists()


def test_hostile_dataset_split_is_refused_without_running_its_code(hostile, dataset, tmp_path):
    path, marker = hostile
    prefix = tmp_path / "data" / "balls"
    prefix.parent.mkdir()
    shutil.copy(f"{dataset}_meta.json", f"{prefix}_meta.json")
    shutil.copy(path, f"{prefix}_train.pt")
    status, lines = cli(CLASSIC, *run_flags(prefix, tmp_path / "out"), *SHORT)
    assert status == 2 and is_one_error_line(lines), lines
    assert not marker.exists()


# 6. Resume mistakes ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_world(tmp_path_factory):
    """A few scenes in a world of smaller balls, with the fixture dataset's seed."""
    prefix = tmp_path_factory.mktemp("other_world") / "balls"
    generate_dataset(prefix, 6, SEED, workers=1, world=World(radius=50))
    return prefix


def no_checkpoint(runs, dataset, other_world, tmp_path):
    return [*run_flags(dataset, tmp_path), *SHORT], str(tmp_path / "run.pt")


def changed_lr(runs, dataset, other_world, tmp_path):
    return [*run_flags(dataset, runs["classic"].whole), *SHORT, "--lr", 1e-3], "--lr"


def dataset_of_another_world(runs, dataset, other_world, tmp_path):
    return [*run_flags(other_world, runs["classic"].whole), *SHORT], "world"


def best_val_copy(runs, dataset, other_world, tmp_path):
    shutil.copy(runs["classic"].whole / "run_best.pt", tmp_path / "run.pt")
    return [*run_flags(dataset, tmp_path), *SHORT], str(tmp_path / "run.pt")


@pytest.mark.parametrize("mistake", [no_checkpoint, changed_lr, dataset_of_another_world, best_val_copy],
                         ids=lambda f: f.__name__.replace("_", " "))
def test_resume_mistake_is_one_error_line_naming_the_problem(mistake, runs, dataset, other_world, tmp_path):
    flags, named = mistake(runs, dataset, other_world, tmp_path)
    status, lines = cli(CLASSIC, *flags, "--resume")
    assert status == 2 and is_one_error_line(lines) and named in lines[0], lines


# 7. Data generation ---------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[1, 2], ids=["1 worker", "2 workers"])
def generation_interrupted(request, tmp_path_factory):
    """generate_dataset_4ball.py with a million scenes, sent Ctrl-C once it has simulated some.

    A terminal sends Ctrl-C to every process of the group; here the workers get it a moment before the
    main process, so that what the user sees does not depend on which process handles it first.
    """
    prefix = tmp_path_factory.mktemp("ctrl_c") / "balls"
    proc, seen = generation_under_way(prefix, request.param)
    for pid in group_members(proc.pid):
        os.kill(pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    stderr, hung = finish(proc, timeout=10, kill=lambda p: os.killpg(p.pid, signal.SIGKILL))  # healthy: < 1 s
    return SimpleNamespace(status=proc.returncode, lines=messages(seen + stderr), hung=hung, prefix=prefix)


@pytest.mark.slow
def test_ctrl_c_during_generation_exits_130_with_one_error_line(generation_interrupted):
    run = generation_interrupted
    assert not run.hung, "still running 10 s after Ctrl-C"
    assert run.status == 130 and is_one_error_line(run.lines), "\n".join(run.lines[:40])


@pytest.mark.slow
def test_ctrl_c_during_generation_leaves_no_file_under_the_final_names(generation_interrupted):
    prefix = generation_interrupted.prefix
    assert not [p for p in prefix.parent.iterdir() if p.name.startswith(f"{prefix.name}_")]


@pytest.mark.parametrize("radius", [400, 200], ids=["radius 400: no ball fits", "radius 200: four do not fit"])
def test_failure_in_a_worker_process_is_one_clear_error(radius):
    with pytest.raises(NPEError, match="cannot place 4 non-overlapping balls"):
        simulate_scenes(World(radius=radius), 0, 0, 600, workers=2, progress=False)


# 8. Unwritable output path --------------------------------------------------------------------------

def under_a_file(tmp_path):
    folder = tmp_path / "a_file"
    folder.write_text("not a folder")
    return folder


def read_only_folder(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o500)
    if os.access(folder, os.W_OK):
        pytest.skip("this user (root?) can write into a read-only folder")
    return folder


@pytest.mark.parametrize("place", [under_a_file, read_only_folder], ids=["under a file", "read-only folder"])
def test_unwritable_output_prefix_is_one_error_line_naming_the_path(place, tmp_path):
    folder = place(tmp_path)
    status, lines = cli("generate_dataset_4ball.py", "--num_scenes", 3, "--workers", 1,
                        "--out_prefix", folder / "balls")
    assert status == 2 and is_one_error_line(lines) and str(folder) in lines[0], lines
