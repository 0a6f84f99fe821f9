"""The evaluation scripts on any set of checkpoints: compare and render take one, or several of any kind,
with --labels; checkpoints of different worlds are refused with one line naming the fields; every output
says which checkpoints and scenes it shows, and videos of different checkpoints never share a name."""
import csv

import imageio.v2 as imageio
import pytest

from conftest import REPO, check, run_script
from npe.render import PANEL_PX

pytestmark = pytest.mark.slow

CLASSIC = REPO / "pretrained" / "npe_classic.pt"
PAPER = [REPO / "pretrained" / "paper" / f"{name}.pt" for name in ("npe", "np", "lstm")]
FEW = ["--num_scenes", 4, "--rollout_steps", 5]


def compare(tmp_path, *flags):
    """Run the comparison; returns (result, CSV rows)."""
    out = tmp_path / "c.png"
    result = check(run_script("compare_rollouts_classic_vs_modern.py", *flags, *FEW, "--out_png", out))
    with open(out.with_suffix(".csv"), newline="") as f:
        return result, list(csv.DictReader(f))


def test_compare_with_one_checkpoint_shows_it_and_the_two_baselines_only(tmp_path):
    result, rows = compare(tmp_path, "--classic_ckpt", CLASSIC)
    assert list(dict.fromkeys(r["model"] for r in rows)) == ["npe_classic", "simulator_oracle", "constant_velocity"]
    assert {r["checkpoint"] for r in rows if r["model"] == "npe_classic"} == {str(CLASSIC)}
    assert all("seed 1000" in r["scenes"] and "4 balls" in r["scenes"] for r in rows)
    assert str(CLASSIC) in result.stdout and "4 fresh scenes (seed 1000)" in result.stdout


def test_compare_with_three_checkpoints_of_any_kind_uses_their_labels(tmp_path):
    _, rows = compare(tmp_path, "--ckpts", *PAPER, "--labels", "NPE", "no pairs", "LSTM")
    assert list(dict.fromkeys(r["model"] for r in rows)) == ["NPE", "no pairs", "LSTM", "simulator_oracle", "constant_velocity"]
    assert (tmp_path / "c.png").stat().st_size > 0


@pytest.mark.parametrize("flags,named", [
    (["--ckpts", CLASSIC, PAPER[1]], "num_balls [3, 4, 5] vs [4]"),
    (["--ckpts", *PAPER[:2], "--labels", "one"], "--labels gives 1 labels for 2 checkpoints"),
    (["--ckpts", PAPER[0], PAPER[0]], "share the label 'npe'"),
    (["--ckpts", PAPER[0], "--classic_ckpt", CLASSIC], "either with --ckpts or with --classic_ckpt"),
], ids=["two worlds", "too few labels", "one label twice", "both ways"])
def test_compare_refuses_checkpoints_it_cannot_tell_apart_or_compare_in_one_line(tmp_path, flags, named):
    result = run_script("compare_rollouts_classic_vs_modern.py", *flags, *FEW, "--out_png", tmp_path / "c.png")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert named in result.stderr
    assert not list(tmp_path.iterdir())


def render(out, *flags):
    check(run_script("render_rollout_triple.py", *flags, "--num_scenes", 1, "--rollout_steps", 3, "--out_dir", out))
    return sorted(p.name for p in out.iterdir())


def test_render_names_videos_after_the_checkpoints_so_two_runs_never_collide(tmp_path):
    first = render(tmp_path, "--classic_ckpt", CLASSIC)
    second = render(tmp_path, "--ckpts", *PAPER[:2], "--num_balls", 3)
    assert first == ["rollout_gt_npe_classic_scene0.mp4"]
    assert second == ["rollout_gt_npe_classic_scene0.mp4", "rollout_gt_npe_np_scene0.mp4"]


def test_render_draws_a_panel_per_checkpoint_in_a_world_of_the_generator_flags(tmp_path):
    [video] = render(tmp_path, "--ckpts", *PAPER, "--labels", "a", "b", "c", "--num_balls", 4, "--masses", "1,25",
                     "--layout", "U", "--tag", "u_world")
    assert video == "u_world_scene0.mp4"
    frame = imageio.get_reader(tmp_path / video).get_data(0)
    assert frame.shape[1] >= 4 * PANEL_PX  # the truth and three models


def test_compare_chaos_flags_add_the_simulator_from_perturbed_states(tmp_path):
    _, rows = compare(tmp_path, "--classic_ckpt", CLASSIC, "--chaos_px", 0)
    simulator = [r for r in rows if r["model"].startswith("simulator, noise 0 px")]
    assert len(simulator) == 5 and all(float(r["cosine_similarity"]) > 0.9999 for r in simulator)


def test_compare_writes_the_physics_table_paired_with_the_model_asked_for(tmp_path):
    _, rows = compare(tmp_path, "--ckpts", *PAPER[:2], "--labels", "NPE", "NP", "--paired_with", "NP")
    at = {(r["model"], r["step"]): r for r in rows}
    for step in ("1", "5"):
        difference = float(at["NPE", step]["cosine_similarity"]) - float(at["NP", step]["cosine_similarity"])
        assert float(at["NPE", step]["cosine_similarity_vs_NP"]) == pytest.approx(difference, abs=1e-6)
        assert float(at["NPE", step]["energy_ratio"]) > 0
    physics = (tmp_path / "c_physics.md").read_text()
    assert "cos@5 − NP" in physics and "| simulator (recorded) |" in physics and "| NPE |" in physics


def test_compare_refuses_a_paired_with_label_that_names_no_model_before_any_work(tmp_path):
    result = run_script("compare_rollouts_classic_vs_modern.py", "--classic_ckpt", CLASSIC, *FEW,
                        "--paired_with", "nobody", "--out_png", tmp_path / "c.png")
    assert result.returncode == 2 and "--paired_with" in result.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags", [["--fps", "1e300"], ["--fps", "1e-300"], ["--tag", "x" * 300]],
                         ids=["fps too high", "fps too low", "tag too long"])
def test_render_refuses_a_rate_or_a_name_it_cannot_write_before_rendering(tmp_path, flags):
    result = run_script("render_rollout_triple.py", "--classic_ckpt", CLASSIC, "--num_scenes", 1, "--rollout_steps", 3,
                        "--out_dir", tmp_path / "v", *flags)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "rendering" not in result.stderr and not list((tmp_path / "v").glob("*.mp4"))
