"""Both NPEs: output shape, any number of balls, permutation equivariance, the neighbourhood mask."""
import pytest
import torch

from npe.checkpoint import model_geometry
from npe.config import World, state_scale
from npe.models import MODELS, build_model

WORLD = World()
SCALE = torch.tensor(state_scale(), dtype=torch.float64)
GEOMETRY = model_geometry({"state_scale": state_scale(), "world": WORLD.to_dict(), "dt": WORLD.dt})
REACH_PX = GEOMETRY["neighborhood"] * state_scale()[0]  # 3.5 radii = 210 px


@pytest.fixture(params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    return build_model(request.param, {**GEOMETRY, "dv_scale": 1.0}).double().eval()


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


@pytest.mark.parametrize("n", [3, 4, 6])
def test_output_is_a_velocity_per_ball(model, n):
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
