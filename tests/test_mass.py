"""Mass inference: with the physics itself as the model, the true mass wins on collision scenes."""
import pytest
import torch

from npe.config import MASS, POS, VEL, World, state_scale
from npe.data import normalize
from npe.mass import PROTOCOLS, collides, collision_reach, infer_mass, mass_errors
from npe.rollouts import ConstantVelocity
from npe.sim import _space, simulate_scenes

WORLD = World(masses=(1.0, 5.0, 25.0))
SCALE = torch.tensor(state_scale())
REACH = collision_reach({"world": WORLD.to_dict(), "state_scale": state_scale()})


class Simulator:
    """The physics as a model: each ball's velocity one frame after t, simulated by pymunk from the
    state at t with the masses written in the frames."""

    def __call__(self, frames):  # [B, 2, N, 5] normalized -> [B, N, 2]
        out = torch.zeros(frames.shape[0], frames.shape[2], 2)
        for b, state in enumerate((frames[:, 1] * SCALE).double().numpy()):
            space, bodies = _space(WORLD, state[:, POS], state[:, VEL], state[:, MASS], WORLD.blocks("O"))
            for _ in range(WORLD.substeps):
                space.step(WORLD.dt / WORLD.substeps)
            out[b] = torch.tensor([tuple(body.velocity) for body in bodies]) / SCALE[VEL]
        return out


@pytest.fixture(scope="module")
def scenes():
    return normalize(simulate_scenes(WORLD, seed=11, start=0, stop=60, workers=1, num_frames=12, progress=False))


def test_collision_scenes_are_those_where_the_ball_meets_another(scenes):
    hit = collides(scenes, 0, REACH)
    assert 5 < hit.sum() < len(scenes)  # some do, some don't
    gap = (scenes[:, :, 1:, POS] - scenes[:, :, :1, POS]).norm(dim=-1).amin(dim=(1, 2))  # [S]
    assert torch.all(gap[~hit] > 2 * WORLD.radius / state_scale()[0] * 0.999)  # no overlap missed


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_true_mass_wins_when_the_model_is_the_physics(scenes, protocol):
    hit = collides(scenes, 0, REACH)
    truth = scenes[hit, 0, 0, MASS]
    guess = infer_mass(Simulator(), scenes[hit], 0, WORLD.masses, protocol, REACH)
    assert len(set(truth.tolist())) == 3  # every hypothesis is the right answer somewhere
    assert (guess == truth).float().mean() >= 0.9


def test_a_model_blind_to_mass_cannot_tell_the_hypotheses_apart(scenes):
    errors = mass_errors(ConstantVelocity(0.0), scenes[:5], 0, WORLD.masses)  # [5, 3]
    assert errors.shape == (5, 3)
    assert torch.all(errors == errors[:, :1])


def test_the_authors_protocol_judges_the_hidden_ball_alone_on_its_collision_frames(scenes):
    """Spoiling the other balls' predictions changes our protocol's errors, not the authors'; so does
    spoiling the hidden ball's in a frame without a collision."""
    hit = scenes[collides(scenes, 0, REACH)][:6]
    simulator = Simulator()

    def spoiled(balls, frames_to_spoil):
        def model(frames):
            out = simulator(frames)
            out[frames_to_spoil(frames), balls] += 0.1
            return out
        return model

    def errors(model, protocol):
        return mass_errors(model, hit, 0, WORLD.masses, protocol, REACH)

    others = spoiled(slice(1, None), lambda frames: slice(None))
    torch.testing.assert_close(errors(others, "authors"), errors(simulator, "authors"))
    assert not torch.allclose(errors(others, "all balls"), errors(simulator, "all balls"))
    quiet = (hit[:, 2:, 0, VEL] - hit[:, 1:-1, 0, VEL]).norm(dim=-1).flatten() < 1e-6  # [W]: ball 0 flies on
    assert quiet.any()
    free_flight = spoiled(0, lambda frames: quiet if len(frames) == len(quiet) else slice(0))
    torch.testing.assert_close(errors(free_flight, "authors"), errors(simulator, "authors"))
