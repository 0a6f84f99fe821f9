"""Every constant of the world, the data layout and the models, in one place.

The dataset writes these into its metadata, checkpoints carry that metadata, and
everything downstream reads it from there rather than from this module.
"""
from dataclasses import asdict, dataclass

# State layout of one ball in one frame.
STATE_DIM = 5  # [x, y, vx, vy, mass]
POS = slice(0, 2)
VEL = slice(2, 4)
MASS = 4


@dataclass(frozen=True)
class World:
    """The box and the balls, in pixels and seconds (the paper's 800 x 600 box, radius 60)."""

    width: float = 800.0
    height: float = 600.0
    radius: float = 60.0
    mass: float = 1.0
    elasticity: float = 1.0
    num_balls: int = 4
    frames_per_scene: int = 60
    dt: float = 1.0 / 30.0  # seconds per frame
    substeps: int = 10  # pymunk steps per frame; 10 keeps energy within 1% (tests/test_sim.py)
    min_speed: float = 150.0  # initial speed ~ U[min_speed, max_speed] px/s,
    max_speed: float = 450.0  # direction ~ U[0, 2 pi)

    def to_dict(self):
        return asdict(self)


# raw = normalized * STATE_SCALE. Positions share one scale so that distances stay isotropic.
POSITION_SCALE = 800.0  # px, as in the paper's code (positions / 800)
VELOCITY_SCALE = 500.0  # px/s, a little above the largest initial speed
WINDOW = 3  # frames per training window: t-1, t (inputs) and t+1 (target)
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
NEIGHBORHOOD_RADII = 3.5  # context balls farther than this (centre to centre, at t) are masked out
CHECKPOINT_FORMAT = 1


def state_scale():
    return [POSITION_SCALE, POSITION_SCALE, VELOCITY_SCALE, VELOCITY_SCALE, 1.0]
