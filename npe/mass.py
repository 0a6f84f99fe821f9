"""Mass inference, as in the paper: a ball of unknown mass is watched for a while; each mass it could
have is tried in a trained model, and the one whose predicted velocities best match what was seen wins."""
import torch

from .config import MASS, POS, VEL, World, is_ball
from .data import scenes_to_windows
from .models import step_errors


def collision_reach(meta):
    """How near (normalized) two ball centres come in a frame next to their collision: two radii plus what
    two balls at the world's top initial speed travel apart in one frame."""
    world = World.from_dict(meta["world"])
    return (2 * world.radius + 2 * world.max_speed * world.dt) / meta["state_scale"][0]


def collides(scenes, ball, reach):
    """scenes [S, F, N, 5] normalized -> [S] bool: in a frame that a window predicts (2 onwards),
    `ball` changes velocity while another ball's centre is within `reach` of its own (see
    collision_reach). Only such scenes say anything about its mass."""
    vel = scenes[:, 1:, ball, VEL]  # [S, F - 1, 2]
    changed = (vel[:, 1:] - vel[:, :-1]).norm(dim=-1) > 1e-6  # [S, F - 2]: frames 2 .. F - 1
    others = is_ball(scenes[:, 2:])  # [S, F - 2, N]
    others[..., ball] = False
    dist = (scenes[:, 2:, :, POS] - scenes[:, 2:, ball, None, POS]).norm(dim=-1)  # [S, F - 2, N]
    return (changed & ((dist < reach) & others).any(-1)).any(1)


@torch.no_grad()
def mass_errors(model, scenes, ball, hypotheses):
    """scenes [S, F, N, 5] -> [S, H]: the one-step loss of all balls over each scene's windows, with
    `ball`'s mass set to each of the H hypotheses in the model's inputs."""
    s, f = scenes.shape[:2]
    windows = scenes_to_windows(scenes)  # [S * (F - 2), 3, N, 5], scene by scene
    errors = []
    for mass in hypotheses:
        frames = windows[:, :2].clone()
        frames[:, :, ball, MASS] = mass
        squared, balls = step_errors(model, frames, windows[:, 2])  # [W, N] each
        per_window = squared.sum(-1) / balls.sum(-1)  # [W]
        errors.append(per_window.view(s, f - 2).mean(1))
    return torch.stack(errors, dim=1)


def infer_mass(model, scenes, ball, hypotheses):
    """[S]: for each scene, the hypothesis (a mass) whose predictions match the observed velocities best."""
    return torch.as_tensor(hypotheses)[mass_errors(model, scenes, ball, hypotheses).argmin(1)]
