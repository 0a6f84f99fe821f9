"""Balls bouncing in a box, simulated with pymunk: elastic, frictionless, no gravity."""
import contextlib
import math
import multiprocessing as mp
import os
import signal
import threading

import numpy as np
import pymunk
from tqdm import tqdm

from .cli import NPEError, Terminated, raise_terminated
from .config import MASS, PAD_MASS, STATE_DIM, World

CHUNK = 250  # scenes per job handed to a worker process


def compose(world: World, seed: int, scene_index: int):
    """The scene's make-up: number of balls, layout name and ball masses [N], from its own stream.

    A separate stream from initial_state's, so a world with one choice of each (the default) draws
    the same scenes as before these choices existed.
    """
    rng = np.random.default_rng([seed, scene_index, 1])
    num_balls = world.num_balls[rng.integers(len(world.num_balls))]
    layout = world.layouts[rng.integers(len(world.layouts))]
    return num_balls, layout, rng.choice(world.masses, num_balls)


def initial_state(world: World, num_balls, blocks, rng: np.random.Generator):
    """Centres clear of the walls, the blocks and each other, and random velocities.

    Centres ~ uniform over the box shrunk by one radius, rejected while they overlap a block or a placed
    ball; speed ~ U[min_speed, max_speed], direction ~ U[0, 2 pi). Returns pos [N, 2], vel [N, 2] in px, px/s.
    """
    r, half = world.radius, world.block_size / 2
    if 2 * r > min(world.width, world.height):
        _cannot_place(world, num_balls)
    pos = np.zeros((num_balls, 2))
    for i in range(num_balls):
        for _ in range(10_000):
            p = rng.uniform((r, r), (world.width - r, world.height - r))
            # distance from the centre to the nearest point of each block square
            to_block = np.linalg.norm(np.maximum(np.abs(blocks - p) - half, 0), axis=1)
            if np.all(np.linalg.norm(pos[:i] - p, axis=1) >= 2 * r) and np.all(to_block >= r):
                break
        else:
            _cannot_place(world, num_balls)
        pos[i] = p
    speed = rng.uniform(world.min_speed, world.max_speed, num_balls)
    angle = rng.uniform(0, 2 * math.pi, num_balls)
    vel = np.stack([speed * np.cos(angle), speed * np.sin(angle)], axis=1)
    return pos, vel


def _cannot_place(world, num_balls):
    raise NPEError(f"cannot place {num_balls} non-overlapping balls of radius {world.radius:g} in a "
                   f"{world.width:g} x {world.height:g} box with layouts {','.join(world.layouts)}; "
                   f"use fewer or smaller balls")


def outline(blocks, size):
    """The boundary of the union of square blocks (centres [K, 2], side `size`) as maximal straight
    segments [((x0, y0), (x1, y1))].

    The walls are built from these rather than from one box per block: a ball striking the seam
    between two blocks would otherwise touch two boxes and get a contact normal from a face inside
    the wall.
    """
    half = size / 2
    edges = {}
    for x, y in blocks.tolist():
        corners = [(x - half, y - half), (x + half, y - half), (x + half, y + half), (x - half, y + half)]
        for a, b in zip(corners, corners[1:] + corners[:1]):
            key = tuple(sorted((a, b)))
            edges[key] = edges.get(key, 0) + 1
    segments = []
    for axis in (0, 1):  # 0: horizontal edges (y fixed), 1: vertical edges (x fixed)
        lines = {}
        for a, b in (e for e, count in edges.items() if count == 1 and e[0][1 - axis] == e[1][1 - axis]):
            lines.setdefault(a[1 - axis], []).append((a[axis], b[axis]))  # an edge inside two blocks is no wall
        for fixed, spans in lines.items():
            spans.sort()
            merged = [list(spans[0])]
            for lo, hi in spans[1:]:
                if lo == merged[-1][1]:
                    merged[-1][1] = hi
                else:
                    merged.append([lo, hi])
            point = lambda v: (v, fixed) if axis == 0 else (fixed, v)
            segments += [(point(lo), point(hi)) for lo, hi in merged]
    return segments


def _space(world: World, pos, vel, masses, blocks):
    space = pymunk.Space()
    w, h = world.width, world.height
    box = [((0, 0), (w, 0)), ((w, 0), (w, h)), ((w, h), (0, h)), ((0, h), (0, 0))]
    obstacles = outline(blocks, world.block_size)
    ends = {}  # corner -> the far ends of the obstacle segments that meet there
    for a, b in obstacles:
        ends.setdefault(a, []).append(b)
        ends.setdefault(b, []).append(a)
    for a, b in box + obstacles:
        wall = pymunk.Segment(space.static_body, a, b, 0)
        wall.elasticity, wall.friction = 1.0, 0.0
        if (a, b) in obstacles:
            # A ball striking near a corner of an obstacle touches both of its segments; told its
            # neighbours, pymunk skips the second contact, which otherwise gave the ball up to 4% more
            # or less energy (measured with the U layout; no drift with this).
            wall.set_neighbors(*[next(e for e in ends[p] if e != q) for p, q in ((a, b), (b, a))])
        space.add(wall)
    bodies = []
    for p, v, m in zip(pos, vel, masses):
        body = pymunk.Body(float(m), math.inf)  # infinite moment: balls never spin
        body.position, body.velocity = tuple(p), tuple(v)
        ball = pymunk.Circle(body, world.radius)
        # pymunk multiplies the two shapes' elasticities; walls are 1, so the ball's sets the bounce.
        ball.elasticity, ball.friction = world.elasticity, 0.0
        space.add(body, ball)
        bodies.append(body)
    return space, bodies


def simulate_scene(world: World, seed: int, scene_index: int, num_frames: int | None = None):
    """One scene as raw states [frames, world.num_objects, 5] (px, px/s, mass). Depends only on
    (seed, scene_index). Objects in order: the balls, the blocks (mass 0), then padding (PAD_MASS)."""
    num_frames = num_frames or world.frames_per_scene
    num_balls, layout, masses = compose(world, seed, scene_index)
    blocks = world.blocks(layout)  # [K, 2]
    pos, vel = initial_state(world, num_balls, blocks, np.random.default_rng([seed, scene_index]))
    space, bodies = _space(world, pos, vel, masses, blocks)
    out = np.zeros((num_frames, world.num_objects, STATE_DIM), dtype=np.float32)
    out[:, num_balls:num_balls + len(blocks), :2] = blocks  # static: velocity and mass stay 0
    out[:, num_balls + len(blocks):, MASS] = PAD_MASS
    for f in range(num_frames):
        if f:
            for _ in range(world.substeps):
                space.step(world.dt / world.substeps)
        for i, b in enumerate(bodies):
            out[f, i] = (b.position.x, b.position.y, b.velocity.x, b.velocity.y, b.mass)
    return out


def next_velocities(world: World, states):
    """The simulator's own velocities [N, 2] one frame after any raw state [N, 5] of a scene (balls, blocks
    and padding, in px, px/s and mass), built anew from positions and velocities alone, as a rolled-out
    state gives them; 0 for blocks and padding."""
    return simulate_from(world, states, 1)[0, :, 2:4] * (states[:, MASS, None] > 0)


def simulate_from(world: World, states, num_frames):
    """The simulator run on from any raw state [N, 5] of a scene (as next_velocities takes it): the
    states [num_frames, N, 5] of the frames after it, one space throughout, as simulate_scene steps."""
    balls, blocks = states[:, MASS] > 0, states[:, MASS] == 0
    centres = np.round(states[blocks, :2], 3)  # float32 rounding would keep shared block edges apart
    space, bodies = _space(world, states[balls, :2], states[balls, 2:4], states[balls, MASS], centres)
    out = np.repeat(states[None].astype(np.float64), num_frames, axis=0)
    for f in range(num_frames):
        for _ in range(world.substeps):
            space.step(world.dt / world.substeps)
        out[f, balls, :4] = [(b.position.x, b.position.y, b.velocity.x, b.velocity.y) for b in bodies]
    return out


def _simulate_chunk(job):
    world, seed, start, stop, num_frames = job
    return np.stack([simulate_scene(world, seed, i, num_frames) for i in range(start, stop)])


def simulate_scenes(world: World, seed: int, start: int, stop: int, workers: int | None = None,
                    num_frames: int | None = None, progress: bool = True):
    """Scenes start..stop-1 as raw states [S, frames, objects, 5], in parallel processes.

    Each scene depends only on (seed, index), so the result is the same for any number of workers.
    """
    jobs = [(world, seed, a, min(a + CHUNK, stop), num_frames) for a in range(start, stop, CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(jobs))  # a worker costs about a second to start
    with tqdm(total=stop - start, unit="scene", desc="simulating", disable=not progress) as bar:
        parts = []
        with contextlib.closing(_run(_simulate_chunk, jobs, workers)) as results:  # workers end with the loop
            for part in results:
                parts.append(part)
                bar.update(len(part))
    return np.concatenate(parts)


def _run(fn, jobs, workers):
    """fn over jobs, in order, in `workers` processes (in this one when workers is 1).

    Worker w runs jobs w, w + workers, ... and sends each result, or the exception it raised, down a pipe
    of its own, so results come back in order through nothing the workers share. (multiprocessing.Pool
    shares a task queue behind a lock: SIGTERM to the process group could kill a worker holding it, and
    the pool's terminate() then waited on that lock forever.)
    """
    if workers == 1:
        yield from _signals_between_jobs(fn, jobs)
        return
    ctx = mp.get_context("spawn")
    procs, pipes = [], []
    try:
        # Workers ignore Ctrl-C: the terminal sends it to them too, and only this process should handle
        # it. They inherit "ignored" from this process while it starts them, so they ignore it from their
        # first instruction on. SIGTERM keeps its default action in them: it ends a worker silently, and
        # this process says "terminated" for it.
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for w in range(workers):
                receive, send = ctx.Pipe(duplex=False)
                procs.append(ctx.Process(target=_work, args=(fn, jobs[w::workers], send), daemon=True))
                pipes.append(receive)
                procs[-1].start()
                send.close()  # this process keeps only the reading end: a worker's death reads as EOF
        finally:
            signal.signal(signal.SIGINT, handler)
        for i in range(len(jobs)):
            try:
                ok, result = pipes[i % workers].recv()
            except EOFError:
                raise _worker_lost(procs[i % workers]) from None
            if not ok:
                raise result
            yield result
    finally:
        for proc in procs:
            if proc.pid is not None:
                proc.kill()
                proc.join()
        for pipe in pipes:
            pipe.close()


def _work(fn, jobs, results):
    """A worker process: fn over jobs, each result or the first exception sent down the pipe `results`."""
    try:
        for job in jobs:
            results.send((True, fn(job)))
    except Exception as err:  # raised again in the main process (NPEError: a world with no room for its balls)
        results.send((False, err))


def _worker_lost(proc):
    proc.join(timeout=5)
    if proc.exitcode == -signal.SIGTERM:
        return Terminated()  # SIGTERM to the process group: the generation was terminated
    return NPEError(f"a simulation worker process ended unexpectedly (exit code {proc.exitcode}), perhaps "
                    f"killed for memory; run again, with fewer --workers")


# The handlers that raise: Python's for Ctrl-C, run_cli's for SIGTERM.
RAISING = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: raise_terminated}


def _signals_between_jobs(fn, jobs):
    """fn over jobs in this process, with Ctrl-C and SIGTERM raised after the job they came in.

    pymunk calls back into Python from inside its C step, and an interrupt raised in such a callback is
    printed and swallowed: the generation went on as if nothing had happened.
    """
    deferred = {s: h for s, h in RAISING.items() if signal.getsignal(s) is h}  # ignored or handled elsewhere: left so
    if not deferred or threading.current_thread() is not threading.main_thread():
        yield from map(fn, jobs)
        return
    asked = []
    for s in deferred:
        signal.signal(s, lambda signum, frame: asked.append(signum))
    try:
        for job in jobs:
            result = fn(job)
            if asked:
                deferred[asked[0]](asked[0], None)
            yield result
    finally:
        for s, handler in deferred.items():
            signal.signal(s, handler)

