"""Physics in the models and the metrics: energy kept by construction, relative velocities, overlaps and
wall penetrations measured in px, paired differences to a reference, and training through unrolled steps."""
import csv
import math

import pytest
import torch

from conftest import CLASSIC, cli, is_one_error_line, ok
from npe.cli import NPEError
from npe.config import MASS, POS, VEL, World, state_scale
from npe.data import simulate
from npe.models import build_model, data_config, kinetic_energy
from npe.rollouts import (SimulatorOracle, compare, paired_differences, penetrations,
                          physics_metrics, recorded_rows, rollout)
from npe.train import chain_starts

WORLD = World()
META = {"state_scale": state_scale(), "world": WORLD.to_dict(), "dt": WORLD.dt, "seed": 0}
SCALE = state_scale()[0]


@pytest.fixture(scope="module")
def scenes():
    return simulate(META, seed=21, num_scenes=12, num_frames=32, workers=1)


def model(**options):
    torch.manual_seed(0)
    return build_model("classic", {**data_config("classic", META, dv_scale=0.05, dx_scale=0.002), **options}).eval()


def at_px(*centres, mass=1.0):
    """One frame [1, 1, K, 5] with objects at `centres` (px) at rest, of `mass` (0: blocks)."""
    frame = torch.zeros(1, 1, len(centres), 5, dtype=torch.float64)
    frame[..., POS] = torch.tensor(centres, dtype=torch.float64) / SCALE
    frame[..., MASS] = mass
    return frame


def test_an_energy_keeping_model_rolls_out_at_the_energy_it_started_with(scenes):
    frames = scenes[:, :2].clone()
    frames[:, :, 1, MASS] = 3.0  # unequal masses: the energy is mass-weighted
    pred = rollout(model(conserve_energy=1), frames, 25)  # [S, 25, N, 5]
    start = kinetic_energy(frames[:, 1, :, MASS], frames[:, 1, :, VEL])  # [S]
    assert torch.allclose(kinetic_energy(pred[..., MASS], pred[..., VEL]), start[:, None].expand(-1, 25), rtol=1e-4)
    free = rollout(model(), frames, 25)
    assert not torch.allclose(kinetic_energy(free[..., MASS], free[..., VEL]), start[:, None].expand(-1, 25), rtol=1e-2)


def test_relative_velocity_describes_context_velocities_from_the_focus(scenes):
    frames = scenes[:3, :2]
    absolute, relative = model().features(frames), model(relative_velocity=1).features(frames)
    states = frames.permute(0, 2, 1, 3)  # [B, N, 2, 5]
    context = relative[1].view(*relative[1].shape[:3], 2, 5)  # [B, i, j, 2, 5]
    assert torch.equal(context[..., VEL], states[:, None, :, :, VEL] - states[:, :, None, :, VEL])
    assert torch.equal(context[..., POS], absolute[1].view_as(context)[..., POS])
    assert torch.equal(context[..., MASS], absolute[1].view_as(context)[..., MASS])
    assert torch.equal(absolute[1].view_as(context)[..., VEL], states[:, None, :, :, VEL].expand_as(context[..., VEL]))


def test_penetrations_measure_overlaps_walls_and_blocks_in_px():
    overlap, through = penetrations(at_px((100, 100), (215, 100)), META)  # centres 115 px apart, 2r = 120
    assert overlap.item() == pytest.approx(5.0) and through.item() == 0
    _, through = penetrations(at_px((57, 300)), META)  # 3 px through the left wall
    assert through.item() == pytest.approx(3.0)
    _, through = penetrations(at_px((740, 580)), META)  # 40 px through the bottom, none through the right
    assert through.item() == pytest.approx(40.0)
    frame = torch.cat([at_px((400, 200)), at_px((400, 300), mass=0.0)], dim=2)  # a block of side 120 at y 300
    _, through = penetrations(frame, META)  # the ball's edge at 260, the block's at 240: 20 px in
    assert through.item() == pytest.approx(20.0)
    overlap, through = penetrations(at_px((100, 100), (300, 300)), META)
    assert overlap.item() == 0 and through.item() == 0


def test_the_energy_ratio_is_predicted_over_true_per_scene(scenes):
    truth = scenes[:, 2:12]
    slow = truth.clone()
    slow[..., VEL] *= 0.5
    metrics = physics_metrics(slow, truth, META)
    assert torch.allclose(metrics["energy_ratio"], torch.full((10,), 0.25, dtype=torch.float64), atol=1e-6)
    assert (metrics["energy_ratio_p5"] <= metrics["energy_ratio_p95"]).all()


def test_the_simulator_keeps_its_energy_and_barely_overlaps(scenes):
    rows = recorded_rows(scenes, 30, META)
    assert ((rows.energy_ratio - 1).abs() < 0.01).all()
    assert rows.overlap_deepest_px.max() < 5 and rows.through_wall_deepest_px.max() < 5


def test_paired_differences_take_each_scene_against_itself():
    reference = torch.rand(50, 3, dtype=torch.float64) * 4  # per-scene sums over 4 balls, scenes very unlike
    sums = {"ref": {"cosine_similarity": reference}, "better": {"cosine_similarity": reference + 0.4}}
    rows = paired_differences(sums, "ref", torch.full((50,), 4.0, dtype=torch.float64))
    assert list(rows.model.unique()) == ["better"]
    column = rows.cosine_similarity_vs_ref
    assert torch.allclose(torch.tensor(column.values), torch.full((3,), 0.1, dtype=torch.float64))
    assert (rows.cosine_similarity_vs_ref_low - 0.1).abs().max() < 1e-9  # every scene differs by the same


def test_compare_adds_physics_and_the_difference_to_the_oracle(scenes):
    table = compare({"classic": model(), "simulator_oracle": SimulatorOracle(META)}, scenes, 5, META)
    ours = table[table.model == "classic"]
    assert ours.energy_ratio.notna().all() and ours.cosine_similarity_vs_simulator_oracle.notna().all()
    oracle = table[table.model == "simulator_oracle"].set_index("step")
    difference = ours.set_index("step").cosine_similarity - oracle.cosine_similarity
    assert torch.allclose(torch.tensor(difference.values), torch.tensor(ours.cosine_similarity_vs_simulator_oracle.values))


def test_chains_of_windows_start_early_enough_to_stay_in_their_scene():
    starts = chain_starts(torch.arange(20), per_scene=10, length=3)
    assert (starts % 10 + 3 <= 10).all()
    assert torch.equal(starts[:8], torch.arange(8)) and (starts // 10 == torch.arange(20) // 10).all()


def run_flags(dataset, folder, *extra):
    return ["--dataset_prefix", dataset, "--name", "run", "--ckpt_dir", folder, "--metrics_csv", folder / "m.csv",
            "--total_samples", 1000, "--batch_size", 100, "--eval_every", 5, "--device", "cpu", "--threads", 1, *extra]


def test_an_unrolled_next_state_run_with_relative_velocities_trains_and_saves_its_options(dataset, tmp_path):
    flags = ["--predict", "state", "--unroll", 3, "--relative_velocity", 1, "--conserve_energy", 1, "--hidden", 20]
    ok(cli(CLASSIC, *run_flags(dataset, tmp_path, *flags)))
    ckpt = torch.load(tmp_path / "run.pt", weights_only=True)
    assert ckpt["args"]["unroll"] == 3
    assert {k: ckpt["config"][k] for k in ("relative_velocity", "conserve_energy", "hidden")} == \
        {"relative_velocity": 1, "conserve_energy": 1, "hidden": 20}
    rows = list(csv.DictReader(open(tmp_path / "m.csv", newline="")))
    assert all(math.isfinite(float(row["train_loss"])) for row in rows)


def test_a_run_saved_before_a_flag_existed_resumes_as_that_flags_default(dataset, tmp_path):
    ok(cli(CLASSIC, *run_flags(dataset, tmp_path), "--stop_after_steps", 5))
    ckpt = torch.load(tmp_path / "run.pt", weights_only=True)
    for key in ("unroll", "pushforward", "predict"):
        del ckpt["args"][key]
    for key in ("relative_velocity", "conserve_energy", "hidden"):
        del ckpt["config"][key]
    torch.save(ckpt, tmp_path / "run.pt")
    ok(cli(CLASSIC, *run_flags(dataset, tmp_path), "--resume"))
    assert torch.load(tmp_path / "run.pt", weights_only=True)["train_state"]["step"] == 10
    status, lines = cli(CLASSIC, *run_flags(dataset, tmp_path, "--unroll", 2), "--resume")
    assert status == 2 and is_one_error_line(lines) and "--unroll" in lines[0], lines


def test_an_unroll_longer_than_a_scene_is_refused(dataset, tmp_path):
    status, lines = cli(CLASSIC, *run_flags(dataset, tmp_path, "--unroll", 500))
    assert status == 2 and is_one_error_line(lines) and "--unroll" in lines[0], lines


def test_a_model_without_pairs_refuses_the_pair_options(dataset, tmp_path):
    status, lines = cli(CLASSIC, *run_flags(dataset, tmp_path, "--model", "np", "--relative_velocity", 1))
    assert status == 2 and is_one_error_line(lines) and "--relative_velocity" in lines[0], lines


def test_a_rollout_of_no_steps_is_refused_in_words(scenes):
    with pytest.raises(NPEError, match="at least one step"):
        rollout(model(), scenes[:, :2], 0)
