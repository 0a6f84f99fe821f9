"""Edges, round 3 (issue 20): a run's files that collide with another run's, labels that are a baseline's
name, writes that would fail only after the work, sizes without bounds, leftovers of a kill -9, a bad
torchrun environment, and a test that hangs. Each test here failed on the code before it."""
import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import npe.cli
import npe.data
import npe.files
from conftest import CHILD_ENV, CLASSIC, MODERN, REPO, cli, dead_pid, is_one_error_line, ok, run_python
from npe.checkpoint import load_model
from npe.cli import BASELINES, NPEError
from npe.config import MAX_PARAMETERS
from npe.data import generate_dataset, merge_shards
from npe.files import save_text
from npe.runs import csv_lock, run_lock

RUN = ["--total_samples", 1000, "--batch_size", 100, "--eval_every", 5, "--device", "cpu"]  # 10 steps
COMPARE, GENERALIZATION, MASS = "compare_rollouts_classic_vs_modern.py", "evaluate_generalization.py", "infer_mass.py"
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")  # 255 on Linux file systems


def fitting(extra):
    """A name that, `extra` characters longer, just fits in a folder: its temporary names, longer still, do not."""
    return "n" * (NAME_MAX - extra)


def run_flags(dataset, folder, *extra, name="run"):
    return ["--dataset_prefix", dataset, "--name", name, "--ckpt_dir", folder, "--metrics_csv", folder / "m.csv",
            *RUN, *extra]


def refused(result, *named):
    status, lines = result
    assert status == 2 and is_one_error_line(lines) and all(str(n) in lines[0] for n in named), lines
    return lines[0]


def never_called(*args, **kwargs):
    raise AssertionError("the work started before its outputs were checked")


# 1. A run's files are its own ---------------------------------------------------------------------

def test_name_ending_in_best_is_refused_since_it_is_another_runs_best_checkpoint(dataset, tmp_path):
    refused(cli(CLASSIC, *run_flags(dataset, tmp_path, name="run_best")), "_best")
    assert not list(tmp_path.glob("*.pt"))


def test_metrics_csv_that_is_not_a_csv_is_refused_and_the_file_kept(dataset, tmp_path, checkpoints):
    other = shutil.copy(checkpoints["classic"][0], tmp_path / "other_run.pt")
    before = other.read_bytes()
    refused(cli(CLASSIC, *run_flags(dataset, tmp_path), "--metrics_csv", other), ".csv")
    assert other.read_bytes() == before


def test_two_live_runs_writing_one_metrics_csv_from_two_folders_are_refused(dataset, tmp_path):
    csv = tmp_path / "logs" / "run.csv"
    csv.parent.mkdir()
    with run_lock(csv_lock(csv), f"writing the metrics CSV {csv}", "--metrics_csv"):
        line = refused(cli(CLASSIC, *run_flags(dataset, tmp_path / "b"), "--metrics_csv", csv), f"pid {os.getpid()}")
    assert "--metrics_csv" in line and not (tmp_path / "b" / "run.pt").exists()


def test_new_run_replacing_a_finished_one_removes_its_best_checkpoint_and_csv_at_its_first_save(dataset, tmp_path):
    ok(cli(CLASSIC, *run_flags(dataset, tmp_path)))
    assert (tmp_path / "run_best.pt").exists() and (tmp_path / "m.csv").exists()
    ok(cli(CLASSIC, *run_flags(dataset, tmp_path), "--save_every", 1, "--stop_after_steps", 1))
    assert torch.load(tmp_path / "run.pt", weights_only=True)["train_state"]["step"] == 1
    assert not (tmp_path / "run_best.pt").exists() and not (tmp_path / "m.csv").exists()


def test_resumed_run_keeps_its_own_best_checkpoint_and_csv(dataset, tmp_path):
    ok(cli(CLASSIC, *run_flags(dataset, tmp_path), "--stop_after_steps", 6))
    ok(cli(CLASSIC, *run_flags(dataset, tmp_path), "--resume", "--save_every", 1, "--stop_after_steps", 7))
    assert (tmp_path / "run_best.pt").exists() and (tmp_path / "m.csv").read_text().count("\n") == 2


# 2. Labels that are a baseline's name ---------------------------------------------------------------

@pytest.mark.parametrize("script", [COMPARE, GENERALIZATION])
@pytest.mark.parametrize("label", BASELINES)
def test_label_that_is_a_baselines_name_is_refused(script, label, checkpoints, tmp_path):
    refused(cli(script, "--ckpts", checkpoints["classic"][0], "--labels", label, "--num_scenes", 1,
                "--rollout_steps", 2, "--out_png", tmp_path / "r.png"), label)
    assert not list(tmp_path.iterdir())


def test_label_that_is_the_chaos_references_name_is_refused(checkpoints, tmp_path):
    label = "simulator, noise 0 px, 1 px/frame"
    refused(cli(COMPARE, "--ckpts", checkpoints["classic"][0], "--labels", label, "--chaos_px_per_frame", 1,
                "--num_scenes", 1, "--rollout_steps", 2, "--out_png", tmp_path / "r.png"), label)
    assert not list(tmp_path.iterdir())


def test_checkpoint_file_named_as_a_baseline_needs_a_label(checkpoints, tmp_path):
    ckpt = shutil.copy(checkpoints["classic"][0], tmp_path / "constant_velocity.pt")
    refused(cli(COMPARE, "--ckpts", ckpt, "--num_scenes", 1, "--rollout_steps", 2,
                "--out_png", tmp_path / "o" / "r.png"), "--labels")
    ok(cli(COMPARE, "--ckpts", ckpt, "--labels", "mine", "--num_scenes", 1, "--rollout_steps", 2,
           "--out_png", tmp_path / "o" / "r.png"))


# 3. Outputs tried before the work ---------------------------------------------------------------------

def test_dataset_whose_temporary_names_are_too_long_is_refused_before_simulating(tmp_path, monkeypatch):
    monkeypatch.setattr(npe.data, "simulate_scenes", never_called)
    with pytest.raises(NPEError, match="too long"):
        generate_dataset(tmp_path / fitting(len("_meta.json")), 3, 0, workers=1)
    assert not list(tmp_path.iterdir())


def test_dataset_file_that_is_a_folder_is_refused_before_simulating(tmp_path, monkeypatch):
    (tmp_path / "balls_val.pt").mkdir()
    monkeypatch.setattr(npe.data, "simulate_scenes", never_called)
    with pytest.raises(NPEError, match="balls_val.pt: it is a folder"):
        generate_dataset(tmp_path / "balls", 3, 0, workers=1)


def test_run_name_whose_temporary_names_are_too_long_is_refused_before_training(dataset, tmp_path):
    refused(cli(CLASSIC, *run_flags(dataset, tmp_path, name=fitting(len("_best.pt")))), "too long")
    assert not list(tmp_path.glob("*.pt"))


@pytest.mark.parametrize("script", [COMPARE, GENERALIZATION])
def test_evaluation_figure_name_too_long_for_its_outputs_is_refused_before_the_rollouts(script, checkpoints, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setattr(npe.data, "simulate_scenes", never_called)
    refused(cli(script, "--ckpts", checkpoints["classic"][0], "--num_scenes", 1, "--rollout_steps", 2,
                "--out_png", tmp_path / f"{fitting(4)}.png"), "too long")


def test_mass_table_name_too_long_is_refused_before_the_scenes(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(npe.data, "simulate_scenes", never_called)
    refused(cli(MASS, "--ckpts", checkpoints["classic"][0], "--num_scenes", 1, "--out_csv",
                tmp_path / f"{fitting(4)}.csv"), "too long")


def test_removing_the_temporary_file_never_hides_the_write_error(tmp_path, monkeypatch):
    def unlink(self, missing_ok=False):
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))

    def write_text(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(npe.files.Path, "unlink", unlink)
    monkeypatch.setattr(npe.files.Path, "write_text", write_text)
    with pytest.raises(NPEError, match="No space left on device"):
        save_text("x", tmp_path / "m.csv")


# 4. Sizes without bounds -------------------------------------------------------------------------------

@pytest.mark.parametrize("script, flag, value", [
    (CLASSIC, "--threads", "1e9"), (CLASSIC, "--pushforward", "1e19"), (CLASSIC, "--slots", "1e9"),
    (MODERN, "--msg_dim", "1e7"), (MODERN, "--expansion", "1e9"), (MODERN, "--enc_blocks", "1e9"),
    (MODERN, "--dec_blocks", "1e9"), ("generate_dataset_4ball.py", "--num_balls", "1e9"),
    (GENERALIZATION, "--num_balls", "4,1000000"), (COMPARE, "--threads", "100000"),
])
def test_size_flag_beyond_what_can_be_built_is_refused_by_the_parser(script, flag, value, tmp_path):
    refused(cli(script, "--dataset_prefix", tmp_path / "none", "--ckpts", tmp_path / "none.pt", flag, value), flag)


def test_model_sizes_each_allowed_but_too_large_together_are_refused_before_building(dataset, tmp_path):
    line = refused(cli(MODERN, *run_flags(dataset, tmp_path), "--msg_dim", 4096, "--expansion", 4096))
    assert f"{MAX_PARAMETERS:,}" in line and not (tmp_path / "run.pt").exists()


def crafted(checkpoints, tmp_path, change):
    ckpt = torch.load(checkpoints["classic"][0], weights_only=True)
    change(ckpt)
    path = tmp_path / "crafted.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("changes, named", [({"enc_layers": 10**9}, "enc_layers"),
                                            ({"hidden": 4096, "enc_layers": 4096}, "parameters"),
                                            ({"hidden": 60}, "tensor 'encoder.0.weight' is (60, 50) in the model")],
                         ids=["a billion layers", "too many parameters", "weights of another size"])
def test_checkpoint_whose_config_does_not_fit_its_tensors_is_refused_before_building(changes, named, checkpoints,
                                                                                     tmp_path):
    path = crafted(checkpoints, tmp_path, lambda ckpt: ckpt["config"].update(changes))
    with pytest.raises(NPEError) as err:
        load_model(path)
    assert str(path) in str(err.value) and named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("field, value", [("substeps", 10**12), ("num_balls", [10**9]), ("frames_per_scene", 10**12)])
def test_checkpoint_whose_world_asks_for_endless_simulation_is_refused(field, value, checkpoints, tmp_path):
    path = crafted(checkpoints, tmp_path, lambda c: c["meta"]["world"].update({field: value}))
    with pytest.raises(NPEError, match=f"world.{field}"):
        load_model(path)


def test_evaluation_asking_for_more_frames_than_memory_holds_is_refused_at_once(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(npe.data, "simulate_scenes", never_called)
    refused(cli(COMPARE, "--ckpts", checkpoints["classic"][0], "--num_scenes", 10**7, "--rollout_steps", 10**6,
                "--out_png", tmp_path / "r.png"), "frames")


def test_shard_name_claiming_ten_billion_shards_is_refused_without_allocating(tmp_path):
    (tmp_path / "balls_shard0of10000000000.pt").write_bytes(b"")
    with pytest.raises(NPEError, match=r"shards 1, 2, 3, 4, 5 and 9,999,999,994 more of 10,000,000,000 are missing"):
        merge_shards(tmp_path / "balls")


def test_shard_numbered_past_its_count_is_refused(tmp_path):
    for i in (0, 1, 3):
        (tmp_path / f"balls_shard{i}of2.pt").write_bytes(b"")
    with pytest.raises(NPEError, match="balls_shard3of2.pt names no shard of 2"):
        merge_shards(tmp_path / "balls")


# 5. Leftovers and environments ----------------------------------------------------------------------

def test_staged_dataset_files_of_a_killed_generation_are_removed_by_the_next(tmp_path):
    pid = dead_pid()
    left = [tmp_path / f".balls_{split}.tmp{pid}.pt" for split in ("train", "val", "test")]
    left.append(tmp_path / f".balls_meta.tmp{pid}.json")
    for path in left:
        path.write_bytes(b"half a split")
    generate_dataset(tmp_path / "balls", 3, 0, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["balls_meta.json", "balls_test.pt", "balls_train.pt",
                                                          "balls_val.pt"]


@pytest.mark.parametrize("env, named", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc'"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0'"),
    ({"WORLD_SIZE": "2"}, "torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
     "RANK='2'"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "port"},
     "MASTER_PORT"),
], ids=["not a number", "zero", "set without torchrun", "rank out of range", "port not a number"])
def test_bad_torchrun_environment_is_one_error_line_before_any_work(env, named, dataset, tmp_path, monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    refused(cli(CLASSIC, *run_flags(dataset, tmp_path)), named)
    assert not list(tmp_path.iterdir())


# 6. A test that hangs is named, and the run ends ---------------------------------------------------------

@pytest.mark.slow
def test_a_hung_test_is_named_and_ends_the_run_under_the_suites_settings(tmp_path):
    (tmp_path / "test_hangs.py").write_text(textwrap.dedent("""
        import time

        def test_that_hangs():
            time.sleep(60)
        """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", REPO / "pytest.ini", "--rootdir", tmp_path,
                             "-o", "faulthandler_timeout=2", "-p", "no:cacheprovider", tmp_path / "test_hangs.py"],
                            cwd=tmp_path, env=CHILD_ENV, capture_output=True, text=True, timeout=50)
    assert result.returncode != 0 and "Timeout" in result.stderr and "in test_that_hangs" in result.stderr


# 7. Found by the attack --------------------------------------------------------------------------------------

def test_shards_whose_prefix_holds_glob_characters_merge(tmp_path):
    prefix = tmp_path / "b[1]*?"
    for shard in range(2):
        generate_dataset(prefix, 3, 0, workers=1, shard=shard, num_shards=2)
    assert merge_shards(prefix)["scenes"] == {"train": 1, "val": 1, "test": 1}


@pytest.mark.parametrize("label", ["a|b", " "], ids=["a pipe", "blank"])
def test_label_that_would_break_or_leave_unnamed_a_table_row_is_refused(label, checkpoints, tmp_path):
    refused(cli(COMPARE, "--ckpts", checkpoints["classic"][0], "--labels", label, "--num_scenes", 1,
                "--rollout_steps", 2, "--out_png", tmp_path / "r.png"), "--labels")


@pytest.mark.parametrize("script, flag", [(CLASSIC, "--name"), ("generate_dataset_4ball.py", "--out_prefix"),
                                          (COMPARE, "--labels")])
def test_argument_with_a_newline_is_refused_so_that_messages_stay_one_line(script, flag, tmp_path):
    refused(cli(script, flag, f"{tmp_path}/a\nb"), "control character")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("num_scenes, num_frames", [(0, 5), (2, 0)])
def test_simulate_asked_for_no_scenes_or_frames_is_refused(num_scenes, num_frames, checkpoints):
    with pytest.raises(NPEError, match="at least one of each"):
        npe.data.simulate(load_model(checkpoints["classic"][0]).meta, 1, num_scenes, num_frames)


@pytest.mark.parametrize("flag", ["--chaos_px", "--chaos_px_per_frame"])
def test_chaos_noise_wider_than_the_box_is_refused(flag, checkpoints, tmp_path):
    refused(cli(COMPARE, "--ckpts", checkpoints["classic"][0], flag, "1e308", "--num_scenes", 1, "--rollout_steps", 2,
                "--out_png", tmp_path / "r.png"), "box")


def test_ckpt_dir_in_a_symlink_loop_is_one_error_line(dataset, tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refused(cli(CLASSIC, *run_flags(dataset, tmp_path / "loop")), "Symlink loop")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_signal_while_a_finished_script_shuts_down_is_ignored_without_a_traceback(signum):
    # The signal comes from an exit callback, as a Ctrl-C during multiprocessing's or tqdm's would.
    finished = run_python("-c", textwrap.dedent(f"""
        import atexit, os
        from npe.cli import run_cli
        def main():
            atexit.register(print, "the last exit callback ran")
            atexit.register(os.kill, os.getpid(), {int(signum)})
        run_cli(main)"""), timeout=60)
    assert finished.returncode == 0 and finished.stderr == "", finished.stderr
    assert finished.stdout == "the last exit callback ran\n"


@pytest.mark.parametrize("main, one_line", [(REPO / "merge_dataset_shards.py", True), (REPO / "tests" / "x.py", False)],
                         ids=["a script of the repository", "another program"])
def test_ctrl_c_before_run_cli_is_one_line_in_the_scripts_only(main, one_line, monkeypatch, capsys):
    shown = []
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(main), raising=False)
    npe.cli._interrupted_while_loading(KeyboardInterrupt, KeyboardInterrupt(), None,
                                       previous=lambda *exc: shown.append(exc))
    assert (capsys.readouterr().err == "error: interrupted; no output was left half-written\n") == one_line
    assert bool(shown) != one_line
