"""Autoregressive rollouts, the constant-velocity baseline, and the velocity metrics."""
import pytest
import torch

from npe.config import MASS, POS, VEL, World, state_scale
from npe.data import scenes_to_windows, simulate
from npe.models import build_model, data_config
from npe.rollouts import (FRAME_KINDS, ConstantVelocity, SimulatorOracle, bootstrap_interval, chaos_reference,
                          frame_kinds, one_step_by_frame, rollout, velocity_metrics)

WORLD = World()
META = {"state_scale": state_scale(), "world": WORLD.to_dict(), "dt": WORLD.dt, "seed": 0}
POS_STEP = data_config("classic", META, 1.0)["pos_step"]


@pytest.fixture(scope="module")
def scenes():
    return simulate(META, seed=11, num_scenes=40, num_frames=WORLD.frames_per_scene, workers=1)


@pytest.fixture(scope="module")
def classic():
    torch.manual_seed(0)
    return build_model("classic", data_config("classic", META, dv_scale=0.05)).eval()


def start_frames(scenes, masses=(1.0, 2.0, 0.5, 3.0)):
    frames = scenes[:6, 10:12].clone()  # [B, 2, N, 5]
    frames[..., MASS] = torch.tensor(masses)
    return frames


@pytest.mark.parametrize("predictor", ["classic", "constant velocity"])
def test_rollout_returns_a_state_per_step_and_ball(scenes, classic, predictor):
    model = classic if predictor == "classic" else ConstantVelocity(POS_STEP)
    out = rollout(model, start_frames(scenes), steps=7)
    assert out.shape == (6, 7, 4, 5)


def test_rollout_carries_the_mass_over(scenes, classic):
    frames = start_frames(scenes)
    out = rollout(classic, frames, steps=5)
    assert torch.equal(out[..., MASS], frames[:, 1:2, :, MASS].expand(-1, 5, -1))


def test_rollout_integrates_positions_from_the_predicted_velocities(scenes, classic):
    frames = start_frames(scenes)
    out = rollout(classic, frames, steps=5)
    previous = torch.cat([frames[:, 1:2, :, POS], out[:, :-1, :, POS]], dim=1)
    torch.testing.assert_close(out[..., POS], previous + out[..., VEL] * classic.pos_step)


def test_rollout_velocities_come_from_the_model_fed_its_own_predictions(scenes, classic):
    frames = start_frames(scenes)
    out = rollout(classic, frames, steps=3)
    window = torch.stack([out[:, 0], out[:, 1]], dim=1)
    torch.testing.assert_close(out[:, 2, :, VEL], classic(window))


def collision_free_segments(scenes, length):
    """(scene, first frame) of segments of `length` frames in which no velocity changes, after a
    collision-free frame too (pymunk nudges balls apart for a step after a contact)."""
    vel = scenes[..., VEL]
    still = (vel[:, 1:] == vel[:, :-1]).all(dim=-1).all(dim=-1).numpy()  # [S, F - 1]
    return [(s, t) for s in range(len(scenes)) for t in range(1, scenes.shape[1] - length + 1)
            if still[s, t - 1:t + length - 1].all()]


def test_constant_velocity_reproduces_a_segment_without_collisions(scenes):
    steps = 12
    segments = collision_free_segments(scenes, steps + 2)
    assert len(segments) >= 5
    for s, t in segments[:: max(1, len(segments) // 10)]:
        segment = scenes[s:s + 1, t:t + steps + 2]
        pred = rollout(ConstantVelocity(POS_STEP), segment[:, :2], steps)
        torch.testing.assert_close(pred, segment[:, 2:], rtol=0, atol=2e-6)  # ~1.6e-3 px


def test_constant_velocity_misses_collisions(scenes):
    pred = rollout(ConstantVelocity(POS_STEP), scenes[:, :2], 40)
    assert (pred[..., VEL] - scenes[:, 2:42, :, VEL]).abs().max() > 0.1


def main_metrics(metrics):
    return [metrics[k] for k in ("cosine_similarity", "relative_magnitude_error", "relative_magnitude_error_median")]


def test_velocity_metrics_of_a_perfect_prediction_are_cosine_one_and_error_zero(scenes):
    truth = scenes[:, 2:12]
    cos, rel, rel_median = main_metrics(velocity_metrics(truth.clone(), truth))
    assert cos.shape == rel.shape == rel_median.shape == (10,)
    torch.testing.assert_close(cos, torch.ones(10))
    assert torch.all(rel == 0) and torch.all(rel_median == 0)


def test_velocity_metrics_of_a_reversed_prediction_are_cosine_minus_one_and_error_zero(scenes):
    truth = scenes[:, 2:12]
    pred = truth.clone()
    pred[..., VEL] *= -1
    cos, rel, _ = main_metrics(velocity_metrics(pred, truth))
    torch.testing.assert_close(cos, -torch.ones(10))
    torch.testing.assert_close(rel, torch.zeros(10))


def test_velocity_metrics_of_a_double_speed_prediction_are_cosine_one_and_error_one(scenes):
    truth = scenes[:, 2:12]
    pred = truth.clone()
    pred[..., VEL] *= 2
    cos, rel, rel_median = main_metrics(velocity_metrics(pred, truth))
    torch.testing.assert_close(cos, torch.ones(10))
    torch.testing.assert_close(rel, torch.ones(10))
    torch.testing.assert_close(rel_median, torch.ones(10))


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_scenes():
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(400, 3, generator=generator, dtype=torch.float64)  # [S, T], one ball per scene
    counts = torch.ones(400, dtype=torch.float64)
    few, many = bootstrap_interval(values[:40], counts[:40]), bootstrap_interval(values, counts)
    for interval, part in ((few, values[:40]), (many, values)):
        assert torch.all(interval[0] < part.mean(0)) and torch.all(part.mean(0) < interval[1])
    assert torch.all(many[1] - many[0] < few[1] - few[0])


def test_oracle_from_the_true_state_predicts_the_true_next_velocity(scenes):
    oracle = SimulatorOracle(META)
    frames = scenes[:8, 10:12]
    torch.testing.assert_close(oracle(frames), scenes[:8, 12, :, VEL], rtol=0, atol=2e-3)


def test_oracle_rollout_beats_constant_velocity_and_stays_near_the_truth(scenes):
    start, truth = scenes[:, :2], scenes[:, 2:32]
    oracle = velocity_metrics(rollout(SimulatorOracle(META), start, 30), truth)["cosine_similarity"]
    constant = velocity_metrics(rollout(ConstantVelocity(POS_STEP), start, 30), truth)["cosine_similarity"]
    assert torch.all(oracle[:3] > 0.99) and oracle.mean() > constant.mean() + 0.2


def test_chaos_reference_without_noise_is_the_truth_and_with_noise_drifts_from_it(scenes):
    exact = chaos_reference(META, scenes[:10], 20)
    noisy = chaos_reference(META, scenes[:10], 20, velocity_px=1.0)
    assert (exact.cosine_similarity > 0.9999).all() and (exact.relative_magnitude_error < 1e-4).all()
    assert noisy.cosine_similarity.iloc[-1] < 0.999 and noisy.model.iloc[0] != exact.model.iloc[0]


def test_a_next_state_model_rolls_out_to_its_own_positions(scenes):
    torch.manual_seed(1)
    model = build_model("classic", data_config("classic", META, dv_scale=0.05, dx_scale=0.01)).eval()
    frames = start_frames(scenes)
    out = rollout(model, frames, steps=2)
    with torch.no_grad():
        first = model(frames, positions=True)
        second = model(torch.stack([frames[:, 1], out[:, 0]], dim=1), positions=True)
    torch.testing.assert_close(out[:, 0, :, :4], first, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1, :, :4], second, rtol=0, atol=0)
    integrated = frames[:, 1, :, POS] + first[..., 2:] * POS_STEP
    assert (out[:, 0, :, POS] - integrated).abs().max() > 1e-4  # not the velocity protocol's position


def test_frame_kinds_tell_free_flight_walls_and_ball_collisions_apart():
    world = World()
    meta = {**META, "dt": world.dt}
    px = torch.zeros(1, 3, 4, 5, dtype=torch.float64)  # one window, t-1, t, t+1
    px[..., MASS] = 1.0
    px[:, :, 0, POS] = torch.tensor([400.0, 300.0])  # in free flight in the middle (the step is too small to see)
    px[:, :, 0, 2] = 30.0
    px[:, 1:, 1, POS] = torch.tensor([[65.0, 500.0], [66.0, 500.0]])  # at the left wall, bouncing
    px[:, 1, 1, 2], px[:, 2, 1, 2] = -60.0, 60.0
    px[:, 1:, 2, POS] = torch.tensor([[150.0, 100.0], [148.0, 100.0]])  # two balls 120 px apart, bouncing
    px[:, 1:, 3, POS] = torch.tensor([[270.0, 100.0], [272.0, 100.0]])
    px[:, 1, 2, 2], px[:, 2, 2, 2], px[:, 1, 3, 2], px[:, 2, 3, 2] = 60.0, -60.0, -60.0, 60.0
    kinds = frame_kinds((px / torch.tensor(state_scale(), dtype=torch.float64)).float(), meta)
    assert kinds.tolist() == [[0, 1, 2, 2]]
    assert FRAME_KINDS[2] == "ball-ball collision"


def test_one_step_by_frame_scores_the_simulator_oracle_near_zero_in_free_flight(scenes):
    windows = scenes_to_windows(scenes[:10])
    table = one_step_by_frame({"oracle": SimulatorOracle(META)}, windows, META).set_index("frame")
    assert table.loc["free flight", "velocity error px/frame RMS"] < 1e-3
    assert table.loc["free flight", "position error px RMS"] < 1e-2
    assert table.loc["ball-ball collision", "balls"] > 0
    assert table.loc["ball-ball collision", "position error px RMS"] > 1.0  # the integration rule's own error
