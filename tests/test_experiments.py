"""The paper's experiments beyond 4 equal balls: mixed-N batches padded and masked, blocks in rollouts,
and the baselines and experiment scripts end to end on a tiny world of 2-3 balls, masses 1 and 5,
layouts O and I."""
import csv

import imageio
import numpy as np
import pytest
import torch

from conftest import TINY_TRAINING, check
from npe.checkpoint import load_model
from npe.config import MASS, World, is_ball, state_scale
from npe.data import normalize, scenes_to_windows
from npe.models import build_model, data_config, loss
from npe.render import render_rollouts
from npe.rollouts import rollout, velocity_metrics
from npe.sim import simulate_scenes

WORLD = World(num_balls=(3, 5), masses=(1.0, 5.0), layouts=("O", "U"))
META = {"state_scale": state_scale(), "world": WORLD.to_dict(), "dt": WORLD.dt}


@pytest.fixture(scope="module")
def scenes():
    """20 scenes of 3 or 5 balls in the plain box or the U, padded to 5 + 6 objects: [S, 8, 11, 5]."""
    return normalize(simulate_scenes(WORLD, seed=2, start=0, stop=20, workers=1, num_frames=8, progress=False))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("classic", data_config("classic", META, dv_scale=0.05)).eval()


def test_a_mixed_batch_scores_as_its_scenes_would_alone(scenes, model):
    windows = scenes_to_windows(scenes)  # [W, 3, 11, 5]
    objects = (windows[:, 1, :, MASS] >= 0).sum(1)  # [W]: balls and blocks; padding comes last
    balls = is_ball(windows[:, 1]).sum(1)
    assert len(set(objects.tolist())) == 4  # 3 or 5 balls, with or without the U's 6 blocks
    with torch.no_grad():
        mixed = loss(model, windows[:, :2], windows[:, 2], model.dv_scale)
        alone = 0.0
        for n in set(objects.tolist()):  # each kind of scene without its padding, weighted by its balls
            group = windows[objects == n][:, :, :n]
            alone += loss(model, group[:, :2], group[:, 2], model.dv_scale) * balls[objects == n].sum()
    assert mixed.item() == pytest.approx(alone.item() / balls.sum().item(), rel=1e-5)


def test_padding_does_not_change_a_scenes_rollout_or_metrics(scenes, model):
    objects = (scenes[:, 0, :, MASS] >= 0).sum(1)  # [S]
    s = int((objects < scenes.shape[2]).nonzero()[0])  # a padded scene
    scene, trimmed = scenes[s:s + 1], scenes[s:s + 1, :, :objects[s]]
    padded, alone = rollout(model, scene[:, :2], 5), rollout(model, trimmed[:, :2], 5)
    torch.testing.assert_close(padded[:, :, :objects[s]], alone, rtol=0, atol=1e-6)
    for a, b in zip(velocity_metrics(padded, scene[:, 2:7]).values(), velocity_metrics(alone, trimmed[:, 2:7]).values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_blocks_and_padding_stay_where_they_are_in_a_rollout(scenes, model):
    states = rollout(model, scenes[:, :2], 6)  # [S, 6, 11, 5]
    still = scenes[:, 1:2, :, MASS] <= 0  # [S, 1, 11]: blocks and padding
    assert still.sum() > 0
    assert torch.equal(states.masked_select(still[..., None]).view(-1),
                       scenes[:, 1:2].expand_as(states).masked_select(still[..., None]).view(-1))


@pytest.fixture(scope="module")
def trained(script, tmp_path_factory):
    """A tiny dataset of 2-3 balls (masses 1, 5; layouts O, I) and {model: checkpoint} trained on it."""
    out = tmp_path_factory.mktemp("experiments")
    prefix = out / "mix"
    check(script("generate_dataset_4ball.py", "--num_scenes", 12, "--seed", 1, "--workers", 1, "--out_prefix",
                 prefix, "--num_balls", "2,3", "--masses", "1,5", "--layout", "O,I"))
    for model in ("classic", "np", "lstm"):
        check(script("train_npe_4ball.py", "--model", model, "--dataset_prefix", prefix, "--ckpt_dir", out,
                     "--metrics_csv", out / f"{model}.csv", *TINY_TRAINING))
    return out, {m: out / f"{name}.pt" for m, name in
                 [("classic", "npe_classic"), ("np", "np_baseline"), ("lstm", "lstm_baseline")]}


@pytest.mark.slow
def test_baselines_train_to_checkpoints_of_their_kind(trained):
    _, ckpts = trained
    for kind, path in ckpts.items():
        assert load_model(path).kind == kind


@pytest.mark.slow
def test_generalization_script_tables_every_model_in_every_world(script, trained):
    out, ckpts = trained
    png = out / "gen" / "g.png"
    check(script("evaluate_generalization.py", "--ckpts", *ckpts.values(), "--num_balls", "4,5", "--layout", "O,U",
                 "--num_scenes", 2, "--rollout_steps", 10, "--seed", 9, "--out_png", png))
    rows = list(csv.DictReader(png.with_suffix(".csv").open()))
    worlds = {"4 balls, O", "5 balls, O", "4 balls, U", "5 balls, U"}
    assert {r["world"] for r in rows} == worlds
    for model in ("npe_classic", "np_baseline", "constant_velocity"):
        assert {r["world"] for r in rows if r["model"] == model} == worlds
    # The LSTM takes 10 objects: 5 balls and the U's 6 blocks are one too many.
    assert {r["world"] for r in rows if r["model"] == "lstm_baseline"} == worlds - {"5 balls, U"}
    assert png.read_bytes().startswith(b"\x89PNG") and "| 4 balls, U | npe classic |" in png.with_suffix(".md").read_text()


@pytest.mark.slow
def test_mass_inference_script_scores_each_model_on_collision_scenes(script, trained):
    out, ckpts = trained
    table = out / "mass" / "m.csv"
    check(script("infer_mass.py", "--ckpts", *ckpts.values(), "--num_scenes", 40, "--observe_frames", 12,
                 "--seed", 9, "--out_csv", table))
    rows = list(csv.DictReader(table.open()))
    assert [r["model"] for r in rows] == ["npe_classic", "np_baseline", "lstm_baseline"]
    for r in rows:
        assert 0 < int(r["collision_scenes"]) < 40 and float(r["chance"]) == 0.5
        assert 0 <= float(r["accuracy (all balls)"]) <= 1 and 0 <= float(r["accuracy (authors)"]) <= 1


def grey_fraction(path):
    """Fraction of the first video frame's pixels in the blocks' grey."""
    frame = imageio.v2.get_reader(path).get_data(0).astype(int)  # [H, W, 3]
    return (np.abs(frame - 105).max(-1) < 20).mean()


def test_videos_draw_the_blocks(scenes, tmp_path):
    meta = {"world": WORLD.to_dict(), "state_scale": state_scale()}
    blocks = (scenes[:, 0, :, MASS] == 0).any(1)  # [S]: scenes in the U
    for name, s in [("u", int(blocks.nonzero()[0])), ("o", int((~blocks).nonzero()[0]))]:
        render_rollouts({"a": scenes[s], "b": scenes[s]}, meta, tmp_path / f"{name}.mp4")
    assert grey_fraction(tmp_path / "u.mp4") > 0.02 > 0.001 > grey_fraction(tmp_path / "o.mp4")


@pytest.mark.slow
def test_mass_inference_script_leaves_out_a_model_with_too_few_slots(script, trained):
    out, ckpts = trained
    table = out / "mass_u" / "m.csv"
    result = check(script("infer_mass.py", "--ckpts", *ckpts.values(), "--num_balls", 5, "--layout", "U",
                          "--num_scenes", 30, "--observe_frames", 12, "--seed", 9, "--out_csv", table))
    assert "lstm_baseline skipped" in result.stdout  # 5 balls and 6 blocks: one more than its 10 slots
    assert [r["model"] for r in csv.DictReader(table.open())] == ["npe_classic", "np_baseline"]
