"""What keeps a run's files its own: strict resume, no new run over an unfinished one, one live run per name,
paths checked before any training, crafted checkpoints refused in one line, outputs of one command that
never overwrite each other."""
import csv
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import CHILD_ENV, CLASSIC, REPO, cli, is_one_error_line, ok
from npe.checkpoint import load_model
from npe.cli import NPEError
from npe.runs import run_lock
from npe.train import RESUME_FLAGS, train, train_parser

RUN = ["--total_samples", 1000, "--batch_size", 100, "--eval_every", 5, "--device", "cpu"]  # 10 steps
STEPS = 10


def run_flags(dataset, folder, *extra):
    return ["--dataset_prefix", dataset, "--name", "run", "--ckpt_dir", folder, "--metrics_csv", folder / "m.csv",
            *RUN, *extra]


def step_of(folder):
    return torch.load(folder / "run.pt", weights_only=True)["train_state"]["step"]


def csv_steps(path):
    with open(path, newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


@pytest.fixture
def stopped(dataset, tmp_path):
    """A folder with a run stopped after step 6 of 10 (validated after step 5)."""
    ok(cli(CLASSIC, *run_flags(dataset, tmp_path), "--stop_after_steps", 6))
    return tmp_path


@pytest.fixture
def finished(dataset, tmp_path):
    """A folder with a run of 10 steps, finished."""
    ok(cli(CLASSIC, *run_flags(dataset, tmp_path)))
    return tmp_path


# 1. Resume is strict ------------------------------------------------------------------------------

def test_amp_is_a_resume_flag():
    assert "amp" in RESUME_FLAGS


def test_resume_keeps_the_runs_cpu_threads_unless_told(dataset, tmp_path):
    before = torch.get_num_threads()
    try:
        ok(cli(CLASSIC, *run_flags(dataset, tmp_path), "--stop_after_steps", 3, "--threads", 2))
        torch.set_num_threads(1)
        ok(cli(CLASSIC, *run_flags(dataset, tmp_path), "--resume"))  # OMP_NUM_THREADS=1 here: auto would keep 1
        assert torch.get_num_threads() == 2
        assert torch.load(tmp_path / "run.pt", weights_only=True)["args"]["cpu_threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_resume_with_another_amp_is_refused_naming_it(stopped, dataset):
    status, lines = cli(CLASSIC, *run_flags(dataset, stopped), "--resume", "--amp", "bf16")
    assert status == 2 and is_one_error_line(lines) and "--amp" in lines[0], lines


@pytest.mark.parametrize("stop", [3, 6], ids=["before the checkpoint", "at the checkpoint"])
def test_resume_with_stop_after_steps_not_past_the_checkpoint_trains_nothing_and_exits_0(stopped, dataset, stop):
    before = (stopped / "run.pt").read_bytes(), (stopped / "m.csv").read_bytes()
    ok(cli(CLASSIC, *run_flags(dataset, stopped), "--resume", "--stop_after_steps", stop))
    assert ((stopped / "run.pt").read_bytes(), (stopped / "m.csv").read_bytes()) == before


def test_resume_with_stop_after_steps_not_past_the_checkpoint_says_so(stopped, dataset, capsys):
    args = train_parser("classic", "test").parse_args(
        list(map(str, run_flags(dataset, stopped, "--resume", "--stop_after_steps", 3))))
    train(args)
    assert "already at step 6, at or past --stop_after_steps 3: nothing to train" in capsys.readouterr().out


# 2. A new run never silently replaces an unfinished one -----------------------------------------------------

def test_new_run_over_an_unfinished_one_is_one_error_line_naming_resume(stopped, dataset):
    before = (stopped / "run.pt").read_bytes()
    status, lines = cli(CLASSIC, *run_flags(dataset, stopped))
    assert status == 2 and is_one_error_line(lines) and "--resume" in lines[0] and "--overwrite" in lines[0], lines
    assert (stopped / "run.pt").read_bytes() == before


def test_overwrite_starts_an_unfinished_run_over(stopped, dataset):
    ok(cli(CLASSIC, *run_flags(dataset, stopped), "--overwrite"))
    assert step_of(stopped) == STEPS
    assert csv_steps(stopped / "m.csv") == [5, 10]


def test_new_run_replaces_a_finished_one(finished, dataset):
    ok(cli(CLASSIC, *run_flags(dataset, finished), "--seed", 1))
    assert torch.load(finished / "run.pt", weights_only=True)["args"]["seed"] == 1


def test_new_run_over_a_checkpoint_without_training_state_is_refused(finished, dataset):
    (finished / "run_best.pt").replace(finished / "run.pt")
    status, lines = cli(CLASSIC, *run_flags(dataset, finished))
    assert status == 2 and is_one_error_line(lines) and "--overwrite" in lines[0], lines


def test_resume_and_overwrite_together_are_refused(stopped, dataset):
    status, lines = cli(CLASSIC, *run_flags(dataset, stopped), "--resume", "--overwrite")
    assert status == 2 and is_one_error_line(lines), lines
    assert step_of(stopped) == 6


# 3. One live run per name ------------------------------------------------------------------------

def test_second_run_of_a_name_is_refused_while_the_first_holds_it(dataset, tmp_path):
    with run_lock(tmp_path / "run.lock"):
        status, lines = cli(CLASSIC, *run_flags(dataset, tmp_path))
    assert status == 2 and is_one_error_line(lines) and f"pid {os.getpid()}" in lines[0], lines
    assert not (tmp_path / "run.pt").exists()


def test_lock_file_left_by_a_dead_run_is_taken_over(dataset, tmp_path):
    (tmp_path / "run.lock").write_text("999999999\n")  # no such process: a run killed with kill -9
    ok(cli(CLASSIC, *run_flags(dataset, tmp_path)))
    assert step_of(tmp_path) == STEPS


@pytest.mark.parametrize("lr", [3e-4, 1e38], ids=["finished", "stopped by a non-finite loss"])
def test_lock_file_is_removed_when_a_run_ends(dataset, tmp_path, lr):
    cli(CLASSIC, *run_flags(dataset, tmp_path), "--lr", lr)
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.slow
def test_two_live_processes_of_one_name_cannot_both_train(dataset, tmp_path):
    """A live run in its own process; a second of the same name is refused, and once the first is killed
    with kill -9 the run resumes."""
    endless = ["--total_samples", 10**7, "--batch_size", 50, "--eval_every", 10**6, "--save_every", 2,
               "--device", "cpu"]
    flags = ["--dataset_prefix", dataset, "--name", "run", "--ckpt_dir", tmp_path, "--metrics_csv", tmp_path / "m.csv"]
    proc = subprocess.Popen([sys.executable, REPO / CLASSIC, *map(str, flags + endless)], cwd=REPO, env=CHILD_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run.pt").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.poll() else ""
            time.sleep(0.05)
        status, lines = cli(CLASSIC, *flags, *endless, "--resume")
        assert status == 2 and is_one_error_line(lines) and f"pid {proc.pid}" in lines[0], lines
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    ok(cli(CLASSIC, *flags, *endless, "--resume", "--stop_after_steps", step_of(tmp_path) + 1))


# 4. Paths that cannot hold the run's files are refused before any training --------------------------------

def under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "m.csv"


@pytest.mark.parametrize("csv_path", [lambda t: "", lambda t: "/", lambda t: t, under_a_file],
                         ids=["empty", "root", "a folder", "under a regular file"])
def test_metrics_csv_that_cannot_name_a_file_is_refused_before_training(dataset, tmp_path, csv_path):
    status, lines = cli(CLASSIC, *run_flags(dataset, tmp_path), "--metrics_csv", csv_path(tmp_path))
    assert status == 2 and is_one_error_line(lines), lines
    assert not (tmp_path / "run.pt").exists()


@pytest.mark.parametrize("place", ["a regular file", "under a regular file"])
def test_ckpt_dir_that_cannot_be_a_folder_is_refused_before_training(dataset, tmp_path, place):
    (tmp_path / "file").write_text("")
    folder = tmp_path / "file" if place == "a regular file" else tmp_path / "file" / "ckpts"
    status, lines = cli(CLASSIC, *run_flags(dataset, tmp_path), "--ckpt_dir", folder)
    assert status == 2 and is_one_error_line(lines) and str(tmp_path / "file") in lines[0], lines
    assert not (tmp_path / "m.csv").exists()


def test_metrics_csv_that_is_the_checkpoint_is_refused(dataset, tmp_path):
    status, lines = cli(CLASSIC, *run_flags(dataset, tmp_path), "--metrics_csv", tmp_path / "run.pt")
    assert status == 2 and is_one_error_line(lines) and "checkpoint" in lines[0], lines
    assert not (tmp_path / "run.pt").exists()


def test_checkpoint_that_would_be_a_file_of_the_dataset_is_refused(dataset, tmp_path):
    before = (dataset.parent / f"{dataset.name}_train.pt").read_bytes()
    status, lines = cli(CLASSIC, *run_flags(dataset, tmp_path), "--ckpt_dir", dataset.parent,
                        "--name", f"{dataset.name}_train")
    assert status == 2 and is_one_error_line(lines) and "dataset" in lines[0], lines
    assert (dataset.parent / f"{dataset.name}_train.pt").read_bytes() == before


def test_name_with_a_folder_in_it_is_refused(dataset, tmp_path):
    status, lines = cli(CLASSIC, *run_flags(dataset, tmp_path), "--name", "/tmp/elsewhere")
    assert status == 2 and is_one_error_line(lines) and "--name" in lines[0], lines


# 5. Crafted checkpoints ---------------------------------------------------------------------------

def nan_weight(ckpt):
    key = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], math.nan)
    return key


def no_meta(ckpt):
    del ckpt["meta"]
    return "meta"


def meta_a_list(ckpt):
    ckpt["meta"] = [1, 2]
    return "meta"


def config_a_list(ckpt):
    ckpt["config"] = [1, 2]
    return "config"


def config_of_text(ckpt):
    ckpt["config"]["dv_scale"] = "0.5"
    return "dv_scale"


def config_list_with_nan(ckpt):
    ckpt["config"]["masses"] = [1.0, math.nan]  # a paper model's masses, spoiled
    return "masses"


def zero_state_scale(ckpt):
    ckpt["meta"]["state_scale"] = [0.0] * 5
    return "state_scale"


CRAFTED = [nan_weight, no_meta, meta_a_list, config_a_list, config_of_text, config_list_with_nan, zero_state_scale]


@pytest.fixture(params=CRAFTED, ids=lambda f: f.__name__.replace("_", " "))
def crafted(request, checkpoints, tmp_path):
    """(path, field): the classic session checkpoint with one field spoiled."""
    ckpt = torch.load(checkpoints["classic"][0], weights_only=True)
    field = request.param(ckpt)
    path = tmp_path / "crafted.pt"
    torch.save(ckpt, path)
    return path, field


def test_crafted_checkpoint_is_refused_by_load_model_naming_the_file_and_field(crafted):
    path, field = crafted
    with pytest.raises(NPEError) as err:
        load_model(path)
    assert str(path) in str(err.value) and field in str(err.value) and "\n" not in str(err.value)


def test_crafted_checkpoint_is_one_error_line_in_a_script(crafted, tmp_path):
    path, field = crafted
    status, lines = cli("compare_rollouts_classic_vs_modern.py", "--ckpts", path, "--num_scenes", 1,
                        "--rollout_steps", 2, "--out_png", tmp_path / "out" / "c.png")
    assert status == 2 and is_one_error_line(lines) and str(path) in lines[0] and field in lines[0], lines


# 6. Outputs of one command never overwrite each other ---------------------------------------------------

def colliding(checkpoints, tmp_path):
    ckpt, metrics = checkpoints["classic"]
    return {
        "compare --out_png r.csv": ("compare_rollouts_classic_vs_modern.py", "--ckpts", ckpt, "--num_scenes", 1,
                                    "--rollout_steps", 2, "--out_png", tmp_path / "r.csv"),
        "generalization --out_png r.md": ("evaluate_generalization.py", "--ckpts", ckpt, "--num_scenes", 1,
                                          "--rollout_steps", 2, "--out_png", tmp_path / "r.md"),
        "mass --out_csv r.md": ("infer_mass.py", "--ckpts", ckpt, "--num_scenes", 1, "--out_csv", tmp_path / "r.md"),
        "curves --out_png r.csv": ("plot_compare_classic_vs_modern_samples.py", "--classic_csv", metrics,
                                   "--modern_csv", metrics, "--out_png", tmp_path / "r.csv"),
    }


@pytest.mark.parametrize("command", ["compare --out_png r.csv", "generalization --out_png r.md", "mass --out_csv r.md",
                                     "curves --out_png r.csv"])
def test_output_name_whose_suffix_another_output_takes_is_refused(checkpoints, tmp_path, command):
    status, lines = cli(*colliding(checkpoints, tmp_path)[command])
    assert status == 2 and is_one_error_line(lines), lines
    assert not list(tmp_path.iterdir())


# 7. Short rollouts ---------------------------------------------------------------------------------

def test_generalization_with_5_rollout_steps_writes_its_table_and_figure(checkpoints, tmp_path):
    out = tmp_path / "g.png"
    ok(cli("evaluate_generalization.py", "--ckpts", checkpoints["classic"][0], "--num_scenes", 2,
           "--rollout_steps", 5, "--out_png", out))
    with open(out.with_suffix(".csv"), newline="") as f:
        assert max(int(row["step"]) for row in csv.DictReader(f)) == 5
    assert out.read_bytes().startswith(b"\x89PNG") and "5" in out.with_suffix(".md").read_text()
