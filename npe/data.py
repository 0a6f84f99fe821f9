"""The window dataset: scenes of normalized states cut into 3-frame windows (t-1, t, t+1).

On disk, for a prefix P: P_train.pt, P_val.pt, P_test.pt, each a float32 tensor
[num_windows, 3, num_objects, 5], and P_meta.json. Scenes with fewer objects than num_objects are
padded with empty slots (mass PAD_MASS, see config.py). Splits are by scene (70/15/15), the windows of a
scene stored contiguously and in time order; shuffling happens at training time.
"""
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import __version__
from .cli import NPEError, list_of, positive_int
from .config import LAYOUTS, SPLIT_FRACTIONS, SPLITS, STATE_DIM, WINDOW, World, state_scale
from .files import ensure_parent, load_torch, save_text, save_torch
from .sim import simulate_scenes

GENERATE_HINT = "create it with generate_dataset_4ball.py"


def split_sizes(num_scenes):
    """Scenes per split, 70/15/15, at least one in each."""
    if num_scenes < len(SPLITS):
        raise NPEError(f"--num_scenes must be at least {len(SPLITS)} (one per split), got {num_scenes}")
    val = max(1, round(num_scenes * SPLIT_FRACTIONS[1]))
    test = max(1, round(num_scenes * SPLIT_FRACTIONS[2]))
    return {"train": num_scenes - val - test, "val": val, "test": test}


def normalize(raw):
    """raw states [..., 5] (px, px/s, mass) -> normalized, as a float32 tensor."""
    return torch.as_tensor(raw, dtype=torch.float32) / torch.tensor(state_scale())


def scenes_to_windows(scenes):
    """scenes [S, F, N, 5] -> windows [S * (F - 2), 3, N, 5], scene by scene, in time order."""
    s, f = scenes.shape[:2]
    windows = torch.stack([scenes[:, k : f - WINDOW + 1 + k] for k in range(WINDOW)], dim=2)
    return windows.reshape(s * (f - WINDOW + 1), WINDOW, *scenes.shape[2:])


def generate_dataset(out_prefix, num_scenes, seed, workers=None, world=World()):
    """Simulate num_scenes scenes and write the three splits and the metadata; returns the metadata."""
    sizes = split_sizes(num_scenes)
    ensure_parent(f"{out_prefix}_meta.json")
    start = time.time()
    scenes = normalize(simulate_scenes(world, seed, 0, num_scenes, workers))  # [S, F, N, 5]
    meta = {
        "num_objects": world.num_objects,
        "frames_per_scene": world.frames_per_scene,
        "windows_per_scene": world.frames_per_scene - WINDOW + 1,
        "scenes": sizes,
        "windows": {k: v * (world.frames_per_scene - WINDOW + 1) for k, v in sizes.items()},
        "seed": seed,
        "dt": world.dt,
        "world": world.to_dict(),
        "state_scale": state_scale(),
        "state_layout": ["x", "y", "vx", "vy", "mass (0: static block, -1: padding)"],
        "npe_version": __version__,
        "generation_seconds": round(time.time() - start, 2),
    }
    first = 0
    for split in SPLITS:
        last = first + sizes[split]
        save_torch(scenes_to_windows(scenes[first:last]).contiguous(), f"{out_prefix}_{split}.pt")
        first = last
    save_text(json.dumps(meta, indent=2) + "\n", f"{out_prefix}_meta.json")
    return meta


def load_meta(prefix):
    path = Path(f"{prefix}_meta.json")
    if not path.is_file():
        raise NPEError(f"dataset metadata not found: {path} ({GENERATE_HINT}, or fix --dataset_prefix)")
    try:
        meta = json.loads(path.read_text())
        meta.setdefault("num_objects", meta.get("num_balls"))  # npe 0.1 datasets: 4 balls, no blocks
        if World.from_dict(meta["world"]).num_objects != meta["num_objects"]:
            raise ValueError(f"num_objects {meta['num_objects']} does not fit its world")
        meta["state_scale"]
    except (ValueError, KeyError, TypeError) as err:
        raise NPEError(f"corrupt dataset metadata {path}: {err} ({GENERATE_HINT})") from None
    return meta


def load_split(prefix, split, meta):
    """One split as a float32 tensor [W, 3, N, 5], checked against the metadata."""
    path = f"{prefix}_{split}.pt"
    windows = load_torch(path, f"{split} split", GENERATE_HINT)
    expected = (WINDOW, meta["num_objects"], STATE_DIM)
    if not (isinstance(windows, torch.Tensor) and windows.dtype == torch.float32
            and windows.dim() == 4 and tuple(windows.shape[1:]) == expected and len(windows)):
        got = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise NPEError(f"{path} is not a window tensor [W, {', '.join(map(str, expected))}] (got {got}); "
                       f"regenerate it with generate_dataset_4ball.py")
    return windows


def scene_frames(meta, seed, num_scenes, num_frames, workers=None, **changes):
    """Fresh normalized scenes [S, num_frames, N, 5] for rollouts, in a checkpoint's world with
    `changes` to its fields (for example num_balls=(8,) to test generalization).

    Refuses the seed the checkpoint's training data came from: those scenes are not fresh.
    """
    if seed == meta["seed"]:
        raise NPEError(f"--seed {seed} is the seed of the training data; pick another one for fresh scenes")
    world = replace(World.from_dict(meta["world"]), **changes)
    raw = simulate_scenes(world, seed, 0, num_scenes, workers, num_frames, progress=False)
    return normalize(raw)


def add_world_flags(parser, what):
    """--num_balls and --layout: the worlds to test in, each value its own world (default: the training world)."""
    parser.add_argument("--num_balls", type=list_of(positive_int), default=None,
                        help=f"numbers of balls {what}, each a world of its own, e.g. 6,7,8 (default: as in training)")
    parser.add_argument("--layout", type=list_of(str, LAYOUTS), default=None,
                        help=f"obstacle layouts {what}, each a world of its own: {', '.join(LAYOUTS)} "
                             f"(default: as in training)")


def test_worlds(args, meta):
    """{label: changes to the training world} for every combination of --num_balls and --layout."""
    world = World.from_dict(meta["world"])
    counts = [(n,) for n in args.num_balls] if args.num_balls else [world.num_balls]
    layouts = [(name,) for name in args.layout] if args.layout else [world.layouts]
    return {f"{','.join(map(str, n))} balls, {','.join(lay)}": {"num_balls": n, "layouts": lay}
            for n in counts for lay in layouts}
