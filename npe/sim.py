"""Balls bouncing in a box, simulated with pymunk: elastic, frictionless, no gravity."""
import math
import multiprocessing as mp
import os
import signal

import numpy as np
import pymunk
from tqdm import tqdm

from .cli import NPEError
from .config import STATE_DIM, World

CHUNK = 250  # scenes per job handed to a worker process


def initial_state(world: World, rng: np.random.Generator):
    """Non-overlapping centres inside the box and random velocities.

    Centres ~ uniform over the box shrunk by one radius, rejected while they overlap a placed ball;
    speed ~ U[min_speed, max_speed], direction ~ U[0, 2 pi). Returns pos [N, 2], vel [N, 2] in px, px/s.
    """
    r = world.radius
    if 2 * r > min(world.width, world.height):
        _cannot_place(world)
    pos = np.zeros((world.num_balls, 2))
    for i in range(world.num_balls):
        for _ in range(10_000):
            p = rng.uniform((r, r), (world.width - r, world.height - r))
            if np.all(np.linalg.norm(pos[:i] - p, axis=1) >= 2 * r):
                break
        else:
            _cannot_place(world)
        pos[i] = p
    speed = rng.uniform(world.min_speed, world.max_speed, world.num_balls)
    angle = rng.uniform(0, 2 * math.pi, world.num_balls)
    vel = np.stack([speed * np.cos(angle), speed * np.sin(angle)], axis=1)
    return pos, vel


def _cannot_place(world):
    raise NPEError(f"cannot place {world.num_balls} non-overlapping balls of radius {world.radius:g} in a "
                   f"{world.width:g} x {world.height:g} box; use fewer or smaller balls")


def _space(world: World, pos, vel):
    space = pymunk.Space()
    w, h = world.width, world.height
    for a, b in [((0, 0), (w, 0)), ((w, 0), (w, h)), ((w, h), (0, h)), ((0, h), (0, 0))]:
        wall = pymunk.Segment(space.static_body, a, b, 0)
        wall.elasticity, wall.friction = 1.0, 0.0
        space.add(wall)
    bodies = []
    for p, v in zip(pos, vel):
        body = pymunk.Body(world.mass, math.inf)  # infinite moment: balls never spin
        body.position, body.velocity = tuple(p), tuple(v)
        ball = pymunk.Circle(body, world.radius)
        # pymunk multiplies the two shapes' elasticities; walls are 1, so the ball's sets the bounce.
        ball.elasticity, ball.friction = world.elasticity, 0.0
        space.add(body, ball)
        bodies.append(body)
    return space, bodies


def simulate_scene(world: World, seed: int, scene_index: int, num_frames: int | None = None):
    """One scene as raw states [frames, N, 5] (px, px/s, mass). Depends only on (seed, scene_index)."""
    num_frames = num_frames or world.frames_per_scene
    rng = np.random.default_rng([seed, scene_index])
    space, bodies = _space(world, *initial_state(world, rng))
    out = np.zeros((num_frames, world.num_balls, STATE_DIM), dtype=np.float32)
    for f in range(num_frames):
        if f:
            for _ in range(world.substeps):
                space.step(world.dt / world.substeps)
        for i, b in enumerate(bodies):
            out[f, i] = (b.position.x, b.position.y, b.velocity.x, b.velocity.y, b.mass)
    return out


def _simulate_chunk(job):
    world, seed, start, stop, num_frames = job
    return np.stack([simulate_scene(world, seed, i, num_frames) for i in range(start, stop)])


def simulate_scenes(world: World, seed: int, start: int, stop: int, workers: int | None = None,
                    num_frames: int | None = None, progress: bool = True):
    """Scenes start..stop-1 as raw states [S, frames, N, 5], in parallel processes.

    Each scene depends only on (seed, index), so the result is the same for any number of workers.
    """
    jobs = [(world, seed, a, min(a + CHUNK, stop), num_frames) for a in range(start, stop, CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(jobs))  # a pool costs seconds to start
    with tqdm(total=stop - start, unit="scene", desc="simulating", disable=not progress) as bar:
        parts = []
        for part in _run(_simulate_chunk, jobs, workers):
            parts.append(part)
            bar.update(len(part))
    return np.concatenate(parts)


def _run(fn, jobs, workers):
    """fn over jobs, in order, in `workers` processes (in this one when workers is 1)."""
    if workers == 1:
        yield from map(fn, jobs)
        return
    # Workers ignore Ctrl-C: the terminal sends it to them too, and only this process should handle it.
    with mp.get_context("spawn").Pool(workers, signal.signal, (signal.SIGINT, signal.SIG_IGN)) as pool:
        yield from pool.imap(fn, jobs)
