"""Mass inference, as in the paper: a ball of unknown mass is watched for a while; each mass it could
have is tried in a trained model, and the one whose predicted velocities best match what was seen wins.

Two ways to judge a hypothesis: ours (PROTOCOLS[0]) by all balls' one-step error over every observed
window; the authors' code's by the hidden ball's own error over the windows in which it collides with
another ball."""
import torch

from .config import MASS, POS, VEL, World, is_ball
from .data import scenes_to_windows
from .models import step_errors


def collision_reach(meta):
    """How near (normalized) two ball centres come in a frame next to their collision: two radii plus what
    two balls at the world's top initial speed travel apart in one frame."""
    world = World.from_dict(meta["world"])
    return (2 * world.radius + 2 * world.max_speed * world.dt) / meta["state_scale"][0]


PROTOCOLS = ("all balls", "authors")


def collisions(scenes, ball, reach):
    """scenes [S, F, N, 5] normalized -> [S, F - 2] bool, a column per window: in the frame it predicts,
    `ball` changes velocity while another ball's centre is within `reach` of its own (see
    collision_reach)."""
    vel = scenes[:, 1:, ball, VEL]  # [S, F - 1, 2]
    changed = (vel[:, 1:] - vel[:, :-1]).norm(dim=-1) > 1e-6  # [S, F - 2]: frames 2 .. F - 1
    others = is_ball(scenes[:, 2:])  # [S, F - 2, N]
    others[..., ball] = False
    dist = (scenes[:, 2:, :, POS] - scenes[:, 2:, ball, None, POS]).norm(dim=-1)  # [S, F - 2, N]
    return changed & ((dist < reach) & others).any(-1)


def collides(scenes, ball, reach):
    """[S] bool: whether `ball` collides with another ball in a window of each scene (see collisions).
    Only such scenes say anything about its mass."""
    return collisions(scenes, ball, reach).any(1)


@torch.no_grad()
def mass_errors(model, scenes, ball, hypotheses, protocol=PROTOCOLS[0], reach=None):
    """scenes [S, F, N, 5] -> [S, H]: with `ball`'s mass set to each of the H hypotheses in the model's
    inputs, the one-step loss of all balls over each scene's windows, or under the authors' protocol
    that of `ball` alone over the windows in which it collides (within `reach`, see collisions)."""
    s, f = scenes.shape[:2]
    windows = scenes_to_windows(scenes)  # [S * (F - 2), 3, N, 5], scene by scene
    if protocol == "authors":
        weights = collisions(scenes, ball, reach).reshape(-1).float()  # [W]
    errors = []
    for mass in hypotheses:
        frames = windows[:, :2].clone()
        frames[:, :, ball, MASS] = mass
        squared, balls = step_errors(model, frames, windows[:, 2])  # [W, N] each
        if protocol == "authors":
            per_scene = (squared[:, ball] * weights).view(s, f - 2).sum(1) / weights.view(s, f - 2).sum(1)
        else:
            per_scene = (squared.sum(-1) / balls.sum(-1)).view(s, f - 2).mean(1)
        errors.append(per_scene)
    return torch.stack(errors, dim=1)


def infer_mass(model, scenes, ball, hypotheses, protocol=PROTOCOLS[0], reach=None):
    """[S]: for each scene, the hypothesis (a mass) whose predictions match the observed velocities best."""
    return torch.as_tensor(hypotheses)[mass_errors(model, scenes, ball, hypotheses, protocol, reach).argmin(1)]
