"""The scripts end to end at tiny scale, and what a user sees when an input is wrong: exit status 2,
one line on stderr starting with 'error:', no traceback, and no output file left behind."""
import csv

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from conftest import TINY_TRAINING, cli, is_one_error_line
from npe import load_model

COMPARE = "compare_rollouts_classic_vs_modern.py"


def test_generate_script_writes_the_splits_and_metadata(dataset):
    for name in ["train.pt", "val.pt", "test.pt", "meta.json"]:
        assert dataset.with_name(f"{dataset.name}_{name}").stat().st_size > 0


@pytest.mark.parametrize("kind", ["classic", "modern"])
def test_training_script_writes_a_loadable_checkpoint_and_metrics(checkpoints, kind):
    ckpt, metrics = checkpoints[kind]
    assert torch.load(ckpt, weights_only=True)["kind"] == kind
    assert load_model(ckpt).kind == kind
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [4, 8]  # 400 samples in batches of 50, a validation every 4


@pytest.mark.slow
def test_render_script_writes_one_video_per_scene_of_start_and_rollout_frames(script, checkpoints, tmp_path):
    result = script("render_rollout_triple.py", "--classic_ckpt", checkpoints["classic"][0], "--modern_ckpt",
                    checkpoints["modern"][0], "--num_scenes", 2, "--rollout_steps", 4, "--out_dir", tmp_path / "v")
    assert result.returncode == 0, result.stderr
    videos = sorted((tmp_path / "v").iterdir())
    assert [v.suffix for v in videos] == [".mp4", ".mp4"]
    with imageio.get_reader(videos[0]) as reader:
        frames = [frame for frame in reader]  # not list(reader): its len() is inf
    assert len(frames) == 2 + 4  # the two true start frames, then the rollout
    height, width, _ = frames[0].shape
    assert height % 16 == 0 and width % 16 == 0 and width > 2 * height  # three panels side by side


@pytest.mark.slow
def test_compare_script_writes_a_figure_and_per_step_metrics(script, checkpoints, tmp_path):
    out_png = tmp_path / "figs" / "compare.png"
    result = script(COMPARE, "--classic_ckpt", checkpoints["classic"][0], "--modern_ckpt",
                    checkpoints["modern"][0], "--num_scenes", 3, "--rollout_steps", 5, "--out_png", out_png)
    assert result.returncode == 0, result.stderr
    assert out_png.read_bytes().startswith(b"\x89PNG")
    with open(out_png.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["model"] for r in rows}) == ["classic", "constant_velocity", "modern", "simulator_oracle"]
    assert sorted(int(r["step"]) for r in rows if r["model"] == "modern") == [1, 2, 3, 4, 5]
    assert all(-1 <= float(r["cosine_similarity"]) <= 1 for r in rows)
    for metric in ("cosine_similarity", "relative_magnitude_error"):  # the mean within its bootstrap interval
        assert all(float(r[f"{metric}_low"]) - 1e-6 <= float(r[metric]) <= float(r[f"{metric}_high"]) + 1e-6
                   for r in rows)


@pytest.mark.slow
def test_compare_script_with_test_prefix_writes_the_results_table(script, checkpoints, dataset, tmp_path):
    out_png = tmp_path / "results.png"
    result = script(COMPARE, "--classic_ckpt", checkpoints["classic"][0], "--modern_ckpt",
                    checkpoints["modern"][0], "--num_scenes", 2, "--rollout_steps", 50, "--out_png", out_png,
                    "--test_prefix", dataset)
    assert result.returncode == 0, result.stderr
    rows = [line for line in out_png.with_suffix(".md").read_text().splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["model", "classic", "modern", "simulator oracle",
                                                      "constant velocity"]
    assert all(len(r.split("|")) == len(rows[0].split("|")) for r in rows)
    frames = list(csv.DictReader((tmp_path / "results_frames.csv").open()))
    assert {r["model"] for r in frames} == {"classic", "modern", "constant_velocity"}
    assert {r["frame"] for r in frames} == {"free flight", "wall bounce", "ball-ball collision"}
    still = [r for r in frames if r["model"] == "constant_velocity" and r["frame"] == "free flight"]
    assert float(still[0]["velocity error px/frame RMS"]) < 0.01  # constant velocity is exact in free flight
    assert "| constant velocity |" in (tmp_path / "results_frames.md").read_text()


@pytest.mark.slow
def test_plot_script_writes_a_png_of_both_curves(script, checkpoints, tmp_path):
    out_png = tmp_path / "figs" / "curves.png"
    result = script("plot_compare_classic_vs_modern_samples.py", "--classic_csv", checkpoints["classic"][1],
                    "--modern_csv", checkpoints["modern"][1], "--out_png", out_png, "--smooth", 0.5)
    assert result.returncode == 0, result.stderr
    assert out_png.read_bytes().startswith(b"\x89PNG")


TRAIN = "--name run --ckpt_dir {out}/ck --metrics_csv {out}/m.csv " + " ".join(map(str, TINY_TRAINING))
ROLL_OUT = "--num_scenes 2 --rollout_steps 3 --out_png {out}/figs/c.png"
GENERATE = "--workers 1 --out_prefix {out}/ds/p"
BAD_INPUTS = {  # case: (script, flags); {names} are paths filled in by the `inputs` fixture
    "missing dataset prefix": ("train_npe_4ball.py", f"--dataset_prefix {{missing}}/balls {TRAIN}"),
    "--batch_size -5": ("train_npe_4ball.py", f"--dataset_prefix {{dataset}} {TRAIN} --batch_size -5"),
    "--batch_size larger than the training split":
        ("train_npe_4ball.py", f"--dataset_prefix {{dataset}} {TRAIN} --batch_size 99999"),
    "--lr abc": ("train_npe_4ball_modern.py", f"--dataset_prefix {{dataset}} {TRAIN} --lr abc"),
    "--lr nan": ("train_npe_4ball.py", f"--dataset_prefix {{dataset}} {TRAIN} --lr nan"),
    "--lr inf": ("train_npe_4ball.py", f"--dataset_prefix {{dataset}} {TRAIN} --lr inf"),
    "--total_samples 1e400":
        ("train_npe_4ball.py", f"--dataset_prefix {{dataset}} {TRAIN} --total_samples 1e400"),
    "missing checkpoint": (COMPARE, f"--classic_ckpt {{missing}}/c.pt --modern_ckpt {{modern}} {ROLL_OUT}"),
    "modern checkpoint as --classic_ckpt":
        (COMPARE, f"--classic_ckpt {{modern}} {ROLL_OUT}"),
    "corrupt checkpoint (random bytes)":
        (COMPARE, f"--classic_ckpt {{classic}} --modern_ckpt {{random_bytes}} {ROLL_OUT}"),
    "truncated checkpoint": (COMPARE, f"--classic_ckpt {{truncated}} --modern_ckpt {{modern}} {ROLL_OUT}"),
    "a dataset split as checkpoint":
        (COMPARE, f"--classic_ckpt {{classic}} --modern_ckpt {{dataset}}_val.pt {ROLL_OUT}"),
    "--rollout_steps 0":
        (COMPARE, f"--classic_ckpt {{classic}} --modern_ckpt {{modern}} {ROLL_OUT} --rollout_steps 0"),
    "render: modern checkpoint as --classic_ckpt":
        ("render_rollout_triple.py", "--classic_ckpt {modern} --out_dir {out}/videos"),
    "fresh scenes with the training data's seed":
        (COMPARE, f"--classic_ckpt {{classic}} --modern_ckpt {{modern}} {ROLL_OUT} --seed 7"),
    "--test_prefix with too few rollout steps":
        (COMPARE, f"--classic_ckpt {{classic}} --modern_ckpt {{modern}} {ROLL_OUT} --test_prefix {{dataset}}"),
    "plot: missing CSV": ("plot_compare_classic_vs_modern_samples.py",
                          "--classic_csv {missing}/c.csv --modern_csv {missing}/m.csv --out_png {out}/p.png"),
    "plot: a checkpoint as CSV": ("plot_compare_classic_vs_modern_samples.py",
                                  "--classic_csv {classic} --modern_csv {classic} --out_png {out}/p.png"),
    "--num_scenes 0": ("generate_dataset_4ball.py", f"{GENERATE} --num_scenes 0"),
    "--num_scenes 2 (fewer than the splits)": ("generate_dataset_4ball.py", f"{GENERATE} --num_scenes 2"),
    "--num_balls 3,0": ("generate_dataset_4ball.py", f"{GENERATE} --num_scenes 3 --num_balls 3,0"),
    "--layout X": ("generate_dataset_4ball.py", f"{GENERATE} --num_scenes 3 --layout O,X"),
    "--masses 1,1": ("generate_dataset_4ball.py", f"{GENERATE} --num_scenes 3 --masses 1,1"),
    "more balls than fit the box": ("generate_dataset_4ball.py", f"{GENERATE} --num_scenes 3 --num_balls 40"),
    "generalization: missing checkpoint":
        ("evaluate_generalization.py", "--ckpts {classic} {missing}/c.pt --out_png {out}/g.png"),
    "generalization: --layout Q": ("evaluate_generalization.py", "--ckpts {classic} --layout Q --out_png {out}/g.png"),
    "mass inference: checkpoint trained with one mass":
        ("infer_mass.py", "--ckpts {classic} --num_scenes 3 --out_csv {out}/m.csv"),
    "mass inference: --observe_frames 2":
        ("infer_mass.py", "--ckpts {classic} --observe_frames 2 --out_csv {out}/m.csv"),
    "--out_prefix under a file":
        ("generate_dataset_4ball.py", "--workers 1 --num_scenes 3 --out_prefix {random_bytes}/p"),
}


@pytest.fixture(scope="module")
def inputs(dataset, checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    random_bytes, truncated = folder / "random.pt", folder / "truncated.pt"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    whole = checkpoints["classic"][0].read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    return {"dataset": dataset, "classic": checkpoints["classic"][0], "modern": checkpoints["modern"][0],
            "missing": folder / "nowhere", "random_bytes": random_bytes, "truncated": truncated}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line_with_exit_status_2_and_no_output(inputs, tmp_path, case):
    """Each script's main() in this process, as run_cli runs it: any exception but the one-line kind fails."""
    out = tmp_path / "out"
    script_name, flags = BAD_INPUTS[case]
    status, lines = cli(script_name, *[flag.format(out=out, **inputs) for flag in flags.split()])
    assert status == 2 and is_one_error_line(lines), lines
    assert not [p for p in out.rglob("*") if p.is_file()]
