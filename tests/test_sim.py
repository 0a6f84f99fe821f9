"""The simulator: energy, walls, blocks, overlap, scene make-up, determinism, and the integration rule
rollouts rely on."""
import functools

import numpy as np
import pytest

from npe.config import LAYOUTS, MASS, PAD_MASS, POS, VEL, World, is_ball
from npe.sim import compose, initial_state, simulate_scene, simulate_scenes

WORLDS = {
    "default": World(),
    "slow, heavy": World(min_speed=20.0, max_speed=60.0, masses=(5.0,)),
    "fast, light": World(min_speed=500.0, max_speed=900.0, masses=(0.2,)),
    "six balls": World(num_balls=(6,)),
    "3 to 8 balls of masses 1, 5, 25": World(num_balls=(3, 8), masses=(1.0, 5.0, 25.0)),
    "obstacles": World(layouts=tuple(LAYOUTS), masses=(1.0, 5.0, 25.0)),
}


DATASET_SPEEDS = [name for name, world in WORLDS.items() if world.max_speed <= World().max_speed]


@functools.cache
def scenes_of(name):
    """150 scenes of a named world, raw states [S, F, N, 5] in float64."""
    world = WORLDS[name]
    return world, simulate_scenes(world, seed=3, start=0, stop=150, workers=1, progress=False).astype(np.float64)


def kinetic_energy(scenes):
    """scenes [S, F, N, 5] -> total kinetic energy of the balls per frame [S, F]."""
    return 0.5 * (np.maximum(scenes[..., MASS], 0) * (scenes[..., VEL] ** 2).sum(-1)).sum(-1)


def ball_positions(scenes):
    """The balls' centres [K, 2] over all scenes and frames (blocks and padding left out)."""
    return scenes[..., POS][is_ball(scenes)]


def velocity_unchanged(scenes):
    """[S, F - 1]: True where no ball's velocity changes from frame t to t + 1."""
    return np.all(scenes[:, 1:, :, VEL] == scenes[:, :-1, :, VEL], axis=(-1, -2))


@pytest.mark.parametrize("name", WORLDS)
def test_kinetic_energy_stays_within_one_percent_over_a_scene(name):
    world, scenes = scenes_of(name)
    energy = kinetic_energy(scenes)
    drift = np.abs(energy / energy[:, :1] - 1)
    assert not velocity_unchanged(scenes).all(), "no collision at all: the check would be vacuous"
    assert drift.max() < 0.01


def test_balls_bounce_less_when_elasticity_is_below_one():
    world = World(elasticity=0.5)
    scenes = simulate_scenes(world, seed=3, start=0, stop=50, workers=1, progress=False).astype(np.float64)
    energy = kinetic_energy(scenes)
    assert np.all(energy[:, -1] <= energy[:, 0] * 1.01)
    assert np.mean(energy[:, -1] < 0.9 * energy[:, 0]) > 0.5


@pytest.mark.parametrize("name", DATASET_SPEEDS)  # faster balls sink up to a sub-step's travel into a wall
def test_ball_centres_stay_inside_the_box(name):
    world, scenes = scenes_of(name)
    # pymunk lets a ball sink a little into a wall during contact, more when a heavy ball presses a light one
    r, slack = world.radius, 2.0 if len(world.masses) == 1 else 10.0  # measured: up to 6 px at 25:1
    x, y = ball_positions(scenes).T
    assert x.min() >= r - slack and x.max() <= world.width - r + slack
    assert y.min() >= r - slack and y.max() <= world.height - r + slack


def distance_to_blocks(pos, world, layout):
    """Distance [..., K] from ball centres pos [..., 2] to the nearest point of each block square."""
    blocks = world.blocks(layout)
    return np.linalg.norm(np.maximum(np.abs(pos[..., None, :] - blocks) - world.block_size / 2, 0), axis=-1)


@pytest.mark.parametrize("n, layout", [(4, "O"), (8, "O"), (8, "U")])
def test_initial_balls_do_not_overlap_and_lie_inside_the_box_clear_of_blocks(n, layout):
    world = World(num_balls=(n,), layouts=(layout,))
    for seed in range(300):
        pos, vel = initial_state(world, n, world.blocks(layout), np.random.default_rng(seed))
        gaps = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(n) * 1e9
        assert gaps.min() >= 2 * world.radius
        assert distance_to_blocks(pos, world, layout).min(initial=np.inf) >= world.radius
        assert np.all(pos >= world.radius) and np.all(pos <= [world.width - world.radius,
                                                                world.height - world.radius])


def test_initial_speeds_lie_in_the_configured_range():
    world = World()
    for seed in range(100):
        _, vel = initial_state(world, 4, world.blocks("O"), np.random.default_rng(seed))
        speed = np.linalg.norm(vel, axis=1)
        assert np.all((speed >= world.min_speed) & (speed <= world.max_speed))


def test_states_are_x_y_vx_vy_mass_per_ball_and_frame():
    world = World(masses=(2.5,))
    scene = simulate_scene(world, seed=0, scene_index=0)
    assert scene.shape == (world.frames_per_scene, world.num_objects, 5)
    assert scene.dtype == np.float32
    assert np.all(scene[..., MASS] == 2.5)


def test_same_seed_and_scene_index_give_identical_scenes():
    world = World()
    assert np.array_equal(simulate_scene(world, 5, 11), simulate_scene(world, 5, 11))
    batch = simulate_scenes(world, seed=5, start=10, stop=13, workers=1, progress=False)
    assert np.array_equal(batch[1], simulate_scene(world, 5, 11))


def test_different_seed_or_scene_index_give_different_scenes():
    world = World()
    scene = simulate_scene(world, 5, 11)
    assert not np.array_equal(scene[0], simulate_scene(world, 5, 12)[0])
    assert not np.array_equal(scene[0], simulate_scene(world, 6, 11)[0])


def test_simulate_scenes_gives_the_same_result_for_one_and_two_workers():
    world = World()
    # 260 scenes of 3 frames span two chunks of work, so both workers get one.
    one = simulate_scenes(world, seed=9, start=0, stop=260, workers=1, num_frames=3, progress=False)
    two = simulate_scenes(world, seed=9, start=0, stop=260, workers=2, num_frames=3, progress=False)
    assert one.shape == (260, 3, world.num_objects, 5)
    assert np.array_equal(one, two)


@pytest.mark.parametrize("name", WORLDS)
def test_positions_integrate_the_new_velocity_in_frames_without_collision(name):
    world, scenes = scenes_of(name)
    # Without a collision in frame t -> t + 1 (nor in t - 1 -> t: pymunk still nudges overlapping balls
    # apart for a step after a contact, without changing their velocity), x(t+1) = x(t) + v(t+1) dt.
    free = velocity_unchanged(scenes)
    free = free[:, 1:] & free[:, :-1]  # frames t -> t + 1 for t = 1 .. F - 2
    pos, vel = scenes[..., POS], scenes[..., VEL]
    error = np.abs(pos[:, 2:] - pos[:, 1:-1] - vel[:, 2:] * world.dt).max(axis=(-1, -2))
    assert free.sum() > 100
    assert error[free].max() < 1e-3  # px; float32 storage of positions up to 800 px
    assert error[~free].max() > 1.0, "collisions should break the rule, else the test is vacuous"


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if LAYOUTS[name]])
def test_balls_bounce_off_the_blocks_and_the_blocks_stay_put(layout):
    world = World(layouts=(layout,), num_balls=(6,))
    scenes = simulate_scenes(world, seed=4, start=0, stop=40, workers=1, progress=False)
    balls, blocks = scenes[..., :6, :], scenes[..., 6:, :]
    assert np.all(blocks[..., POS] == world.blocks(layout))
    assert np.all(blocks[..., 2:] == 0)  # velocity and mass 0
    gap = distance_to_blocks(balls[..., POS], world, layout) - world.radius
    assert gap.min() > -2.0  # px: no ball passes into a block
    assert (gap < 1.0).sum() > 20, "balls should touch the blocks, else the test is vacuous"


def test_scene_make_up_is_drawn_from_the_world_and_padded():
    world = World(num_balls=(3, 5), masses=(1.0, 25.0), layouts=("O", "L"))
    assert world.num_objects == 5 + 3
    drawn = [compose(world, 1, i) for i in range(200)]
    assert {n for n, _, _ in drawn} == {3, 5} and {layout for _, layout, _ in drawn} == {"O", "L"}
    assert set(np.concatenate([m for _, _, m in drawn])) == {1.0, 25.0}
    for i in range(5):
        n, layout, masses = drawn[i]
        scene = simulate_scene(world, 1, i, num_frames=3)
        blocks = len(LAYOUTS[layout])
        assert np.array_equal(scene[0, :n, MASS], masses)
        assert np.all(scene[:, n:n + blocks, MASS] == 0)
        assert np.all(scene[:, n + blocks:, MASS] == PAD_MASS) and np.all(scene[:, n + blocks:, :MASS] == 0)
