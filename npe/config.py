"""Every constant of the world, the data layout and the models, in one place.

The dataset writes these into its metadata, checkpoints carry that metadata, and
everything downstream reads it from there rather than from this module.
"""
from dataclasses import asdict, dataclass

import numpy as np

# State layout of one object in one frame. The mass column also says what the object is: a ball
# (mass > 0), a static block (mass 0, velocity 0) or an empty slot that pads a scene to the width of
# the dataset (PAD_MASS, all else 0).
STATE_DIM = 5  # [x, y, vx, vy, mass]
POS = slice(0, 2)
VEL = slice(2, 4)
MASS = 4
PAD_MASS = -1.0


def is_ball(states):
    """states [..., N, 5] (torch or numpy) -> [..., N] bool: which objects are balls (not blocks or padding)."""
    return states[..., MASS] > 0

# Obstacle layouts, after the paper: square blocks of side World.block_size, given by their centres in
# block sides from the centre of the box, x to the right and y up.
LAYOUTS = {
    "O": (),  # the plain box
    "I": ((0, -0.5), (0, 0.5)),  # a free-standing wall, two blocks tall
    "L": ((-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5)),
    "U": ((-1.5, 0.5), (-1.5, -0.5), (-0.5, -0.5), (0.5, -0.5), (1.5, -0.5), (1.5, 0.5)),  # cup opening up
}


@dataclass(frozen=True)
class World:
    """The box, the balls and the obstacles, in pixels and seconds (the paper's 800 x 600 box, radius 60).

    Each scene draws its number of balls from `num_balls`, its layout from `layouts` and each ball's
    mass from `masses`, uniformly; the defaults make the paper's 4 equal balls in a plain box.
    """

    width: float = 800.0
    height: float = 600.0
    radius: float = 60.0
    masses: tuple = (1.0,)
    elasticity: float = 1.0
    num_balls: tuple = (4,)
    layouts: tuple = ("O",)
    block_size: float = 120.0  # side of an obstacle block, one ball diameter
    frames_per_scene: int = 60
    dt: float = 1.0 / 30.0  # seconds per frame
    substeps: int = 10  # pymunk steps per frame; 10 keeps energy within 1% (tests/test_sim.py)
    min_speed: float = 150.0  # initial speed ~ U[min_speed, max_speed] px/s,
    max_speed: float = 450.0  # direction ~ U[0, 2 pi)

    @property
    def num_objects(self):
        """Objects per scene in the data: the most balls plus the most blocks; smaller scenes are padded."""
        return max(self.num_balls) + max(len(LAYOUTS[name]) for name in self.layouts)

    def blocks(self, layout):
        """Centres [K, 2] in px of the blocks of `layout`."""
        centre = np.array([self.width / 2, self.height / 2])
        return centre + self.block_size * np.reshape(LAYOUTS[layout], (-1, 2))

    def to_dict(self):
        return asdict(self)

    def describe(self):
        """What the scenes draw from, e.g. "3,4,5 balls, masses 1,5,25, layouts O,L"."""
        def join(values):
            return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
        masses, layouts = ("masses" if len(self.masses) > 1 else "mass"), ("layouts" if len(self.layouts) > 1 else "layout")
        return f"{join(self.num_balls)} balls, {masses} {join(self.masses)}, {layouts} {join(self.layouts)}"

    @classmethod
    def from_dict(cls, world):
        """A World from to_dict() or its JSON (lists for tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in world.items()})


# raw = normalized * STATE_SCALE. Positions share one scale so that distances stay isotropic.
POSITION_SCALE = 800.0  # px, as in the paper's code (positions / 800)
VELOCITY_SCALE = 500.0  # px/s, a little above the largest initial speed
WINDOW = 3  # frames per training window: t-1, t (inputs) and t+1 (target)
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
NEIGHBOURHOOD_RADII = 3.5  # context balls farther than this (centre to centre, at t) are masked out
# The most a flag or a crafted file may ask for; beyond these a model, a world or a loop takes memory or time
# without bound, and a typo ends in a MemoryError or a hang instead of one line.
MAX_BALLS = 100  # balls in a scene: 30 of radius 60 fill the 800 x 600 box; the paper's largest scenes hold 8
MAX_SUBSTEPS = 1000  # pymunk steps per frame (10 keep energy within 1%)
MAX_FRAMES_PER_SCENE = 100_000  # frames of a generated scene (60 by default)
MAX_FRAMES = 100_000_000  # frames of fresh scenes simulated for an evaluation at once: 8 GB of 4-ball states
MAX_STEPS = 100_000  # steps a training flag repeats per batch (--pushforward)
MAX_MODEL_SIZE = 4096  # a width, depth or slot count of a model (the NPEs use 25 to 96)
MAX_PARAMETERS = 100_000_000  # parameters of a model (the NPEs have 18,000 to 400,000): 400 MB of weights
MAX_THREADS = 1024  # --threads
CHECKPOINT_FORMAT = 2  # 2: model configs hold only their own constructor's arguments


def state_scale():
    return [POSITION_SCALE, POSITION_SCALE, VELOCITY_SCALE, VELOCITY_SCALE, 1.0]
