"""The NPEs: output shape, any number of balls, permutation equivariance, the neighbourhood mask,
blocks and padding; and what sets the two baselines apart."""
import pytest
import torch

from npe.config import MASS, PAD_MASS, World, state_scale
from npe.models import MODELS, build_model, data_config

NPES = ["classic", "modern"]

WORLD = World()
SCALE = torch.tensor(state_scale(), dtype=torch.float64)
META = {"state_scale": state_scale(), "world": WORLD.to_dict(), "dt": WORLD.dt}
REACH_PX = data_config("classic", META, 1.0)["neighbourhood"] * state_scale()[0]  # 3.5 radii = 210 px


def make(kind):
    torch.manual_seed(0)
    return build_model(kind, data_config(kind, META, dv_scale=1.0)).double().eval()


@pytest.fixture(params=NPES)
def model(request):
    return make(request.param)


def with_padding(frames, extra):
    """frames [B, 2, N, 5] with `extra` empty slots appended, as the dataset pads smaller scenes."""
    pad = torch.zeros(*frames.shape[:2], extra, frames.shape[-1], dtype=frames.dtype)
    pad[..., MASS] = PAD_MASS
    return torch.cat([frames, pad], dim=2)


def frames_from_pixels(pos_t, vel, mass=1.0):
    """Normalized frames [1, 2, N, 5] for balls at pos_t [N, 2] px at time t, moving at vel [N, 2] px/s."""
    pos_t, vel = torch.as_tensor(pos_t, dtype=torch.float64), torch.as_tensor(vel, dtype=torch.float64)
    mass = torch.full((len(pos_t), 1), mass, dtype=torch.float64)
    before = torch.cat([pos_t - vel * WORLD.dt, vel, mass], dim=-1)
    now = torch.cat([pos_t, vel, mass], dim=-1)
    return (torch.stack([before, now]) / SCALE)[None]


def random_frames(batch, n, generator):
    """Random normalized frames [B, 2, N, 5]: balls packed in a quarter of the box so many interact."""
    pos = torch.rand(batch, 1, n, 2, generator=generator, dtype=torch.float64) * torch.tensor([400.0, 300.0]) + 60
    vel = (torch.rand(batch, 1, n, 2, generator=generator, dtype=torch.float64) - 0.5) * 900
    pos = torch.cat([pos - vel * WORLD.dt, pos], dim=1)
    mass = torch.ones(batch, 2, n, 1, dtype=torch.float64)
    return torch.cat([pos, vel.expand(-1, 2, -1, -1), mass], dim=-1) / SCALE


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("n", [3, 4, 6])
def test_output_is_a_velocity_per_ball(kind, n):
    model = make(kind)
    frames = random_frames(5, n, torch.Generator().manual_seed(n))
    out = model(frames)
    assert out.shape == (5, n, 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("n", [3, 6])
def test_permuting_the_balls_permutes_the_outputs(model, n):
    gen = torch.Generator().manual_seed(n)
    frames = random_frames(8, n, gen)
    perm = torch.randperm(n, generator=gen)
    assert not torch.equal(perm, torch.arange(n))
    torch.testing.assert_close(model(frames[:, :, perm]), model(frames)[:, perm], rtol=0, atol=1e-12)


def test_a_context_ball_beyond_the_neighbourhood_has_no_effect(model):
    focus, near = [200.0, 300.0], [330.0, 300.0]  # 130 px apart: inside the neighbourhood
    velocities = [[100.0, -50.0], [-200.0, 30.0], [0.0, 0.0]]
    outputs = []
    for far, far_vel in [([650.0, 100.0], [300.0, 0.0]), ([700.0, 500.0], [-400.0, 250.0]),
                         ([200.0 + REACH_PX + 1, 300.0], [10.0, 10.0]), ([200.0, 300.0 - REACH_PX - 1], [0, 90])]:
        velocities[2] = far_vel
        outputs.append(model(frames_from_pixels([focus, near, far], velocities))[0, 0])
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=0, atol=1e-14)


def test_a_context_ball_inside_the_neighbourhood_changes_the_output(model):
    focus, far = [200.0, 300.0], [650.0, 100.0]
    velocities = [[100.0, -50.0], [-200.0, 30.0], [300.0, 0.0]]
    outputs = [model(frames_from_pixels([focus, near, far], velocities))[0, 0]
               for near in ([330.0, 300.0], [200.0, 300.0 + REACH_PX - 1], [200.0 + REACH_PX + 1, 300.0])]
    assert (outputs[0] - outputs[1]).abs().max() > 1e-9  # moved within the neighbourhood
    assert (outputs[0] - outputs[2]).abs().max() > 1e-9  # moved out of it


def test_the_neighbourhood_is_three_and_a_half_radii():
    assert REACH_PX == pytest.approx(3.5 * WORLD.radius)


@pytest.mark.parametrize("kind", MODELS)
def test_padding_changes_nothing_and_stays_still(kind):
    model = make(kind)
    frames = random_frames(6, 4, torch.Generator().manual_seed(1))
    padded = model(with_padding(frames, 3))
    torch.testing.assert_close(padded[:, :4], model(frames), rtol=0, atol=1e-12)
    assert torch.all(padded[:, 4:] == 0)


def test_encoding_only_the_kept_pairs_gives_what_encoding_every_pair_gives(model):
    frames = with_padding(random_frames(6, 5, torch.Generator().manual_seed(4)), 2)
    frames[:, :, 4, 2:] = 0  # one static block
    _, _, mask = model.features(frames)
    assert 0 < mask.sum() < mask.numel() / 2  # some pairs are kept, most are not
    outputs, grads = [], []
    for dense in (True, False):
        model.zero_grad()
        model.dense_pairs = dense
        out = model(frames)
        out.pow(2).sum().backward()
        outputs.append(out)
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-12)
    for gathered, dense in zip(grads[1], grads[0]):
        torch.testing.assert_close(gathered, dense, rtol=0, atol=1e-12)


def test_a_batch_without_any_neighbours_runs_and_trains_the_decoder(model):
    frames = frames_from_pixels([[100.0, 100.0], [700.0, 500.0]], [[100.0, 0.0], [0.0, -100.0]])
    out = model(frames)
    out.pow(2).sum().backward()
    assert torch.isfinite(out).all()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def block_frames(block_px):
    """A ball at (200, 300) px moving right and a static block (mass 0) centred at block_px."""
    frames = frames_from_pixels([[200.0, 300.0], block_px], [[200.0, 0.0], [0.0, 0.0]])
    frames[..., 1, MASS] = 0
    return frames


def test_a_block_in_the_neighbourhood_acts_on_the_ball_and_never_moves(model):
    near, far = model(block_frames([300.0, 300.0])), model(block_frames([650.0, 300.0]))
    assert torch.all(near[:, 1] == 0) and torch.all(far[:, 1] == 0)
    assert (near[0, 0] - far[0, 0]).abs().max() > 1e-9


def test_the_np_baseline_ignores_the_other_balls():
    model = make("np")
    frames = random_frames(4, 3, torch.Generator().manual_seed(2))
    moved = frames.clone()
    moved[:, :, 1:, :4] += 0.01  # every other ball moves and speeds up
    torch.testing.assert_close(model(moved)[:, 0], model(frames)[:, 0], rtol=0, atol=0)


def test_the_lstm_baseline_refuses_more_objects_than_its_slots():
    model = make("lstm")
    with pytest.raises(Exception, match="at most 10 objects"):
        model(random_frames(1, 11, torch.Generator().manual_seed(3)))


def make_next_state(kind):
    torch.manual_seed(0)
    return build_model(kind, data_config(kind, META, dv_scale=1.0, dx_scale=0.01)).double().eval()


@pytest.mark.parametrize("kind", MODELS)
def test_a_velocity_model_places_balls_by_the_integration_rule(kind):
    model = make(kind)
    frames = random_frames(3, 4, torch.Generator().manual_seed(5))
    state = model(frames, positions=True)  # [B, N, 4]
    vel = model(frames)
    torch.testing.assert_close(state[..., 2:], vel, rtol=0, atol=0)
    torch.testing.assert_close(state[..., :2], frames[:, 1, :, :2] + vel * model.pos_step, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", MODELS)
def test_a_next_state_model_predicts_positions_off_the_integration_rule(kind):
    model = make_next_state(kind)
    assert "dx_scale" in data_config(kind, META, 1.0, 0.01) and "dx_scale" not in data_config(kind, META, 1.0)
    frames = random_frames(3, 4, torch.Generator().manual_seed(5))
    state = model(frames, positions=True)
    assert state.shape == (3, 4, 4)
    torch.testing.assert_close(state[..., 2:], model(frames), rtol=0, atol=0)
    residual = state[..., :2] - (frames[:, 1, :, :2] + state[..., 2:] * model.pos_step)
    assert residual.abs().min() > 0  # an untrained head's residual is nowhere exactly 0


@pytest.mark.parametrize("kind", NPES)
def test_a_next_state_model_keeps_padding_in_place(kind):
    model = make_next_state(kind)
    frames = with_padding(random_frames(2, 3, torch.Generator().manual_seed(6)), 2)
    state = model(frames, positions=True)
    torch.testing.assert_close(state[:, 3:], frames[:, 1, 3:, :4], rtol=0, atol=0)


def test_the_paper_model_measures_the_neighbourhood_after_a_frame_of_motion():
    """A ball just beyond the neighbourhood, 10 px a frame away from entering it: the paper-exact model
    (positions advanced one frame) counts it when it approaches and not when it recedes; ours never."""
    focus, edge = [200.0, 300.0], [200.0 + REACH_PX + 5, 300.0]
    outputs = {}
    for kind in ("classic", "paper"):
        model = make(kind)
        outputs[kind] = [model(frames_from_pixels([focus, edge], [[0.0, 0.0], [speed, 0.0]]))[0, 0]
                         for speed in (-300.0, 300.0)]  # approaching, receding
    assert (outputs["paper"][0] - outputs["paper"][1]).abs().max() > 1e-9
    _, _, mask = make("classic").features(frames_from_pixels([focus, edge], [[0.0, 0.0], [-300.0, 0.0]]))
    assert not mask.any()  # ours: out of the neighbourhood at t, whatever its velocity


def test_the_paper_model_codes_mass_one_hot_and_feeds_the_raw_focus_to_its_decoder():
    meta = {**META, "world": World(masses=(1.0, 5.0, 25.0)).to_dict()}
    model = build_model("paper", data_config("paper", meta, dv_scale=1.0)).double()
    frames = frames_from_pixels([[200.0, 300.0], [300.0, 300.0], [400.0, 300.0]], [[0.0, 0.0]] * 3)
    frames[..., 1, MASS], frames[..., 2, MASS] = 5.0, 0.0  # a mass-5 ball and a block
    one_hot = model.describe(frames)[..., MASS:]  # [1, 2, N, 3]
    assert one_hot[0, 1].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    features = 2 * (MASS + 3)
    assert model.decoder[0].in_features == 50 + features  # the pair sum and the focus's state
    assert make("classic").decoder[0].in_features == 50 + 25  # ours: the focus's encoding


def test_the_paper_model_refuses_scenes_with_a_mass_its_one_hot_never_saw():
    meta = {**META, "world": World(masses=(0.3, 5.0)).to_dict()}  # 0.3: no exact float32
    model = build_model("paper", data_config("paper", meta, dv_scale=1.0))
    frames = frames_from_pixels([[200.0, 300.0], [300.0, 300.0], [400.0, 300.0]], [[0.0, 0.0]] * 3).float()
    frames[..., MASS] = torch.tensor([0.3, 5.0, 0.0])  # two known masses and a block
    assert model.refuses(frames[None]) is None and make("classic").refuses(frames[None]) is None
    frames[..., 1, MASS] = 25.0
    assert "not 25" in model.refuses(frames[None])
