"""The window dataset: scenes of normalized states cut into 3-frame windows (t-1, t, t+1).

On disk, for a prefix P: P_train.pt, P_val.pt, P_test.pt, each a float32 tensor
[num_windows, 3, num_objects, 5], and P_meta.json. Scenes with fewer objects than num_objects are
padded with empty slots (mass PAD_MASS, see config.py). Splits are by scene (70/15/15), the windows of a
scene stored contiguously and in time order; shuffling happens at training time.

Generation can be split across machines: shard i of n simulates a contiguous range of scenes and writes
them, cut at the split boundaries, to P_shard{i}of{n}.pt; merge_shards turns the n parts into the files
a single run writes.
"""
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import __version__
from .cli import NPEError
from .config import SPLIT_FRACTIONS, SPLITS, STATE_DIM, WINDOW, World, state_scale
from .files import ensure_parent, load_torch, save_text, save_torch
from .sim import simulate_scenes

GENERATE_HINT = "create it with generate_dataset_4ball.py"
SHARD_HINT = "write them with generate_dataset_4ball.py --shard I --num_shards N"


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


def shard_scenes(num_scenes, shard, num_shards):
    """The scenes [first, last) of shard `shard` of `num_shards`: contiguous, as equal in number as can be."""
    if shard >= num_shards:
        raise NPEError(f"--shard {shard} is not below --num_shards {num_shards} (shards count from 0)")
    if num_shards > num_scenes:
        raise NPEError(f"--num_shards {num_shards} is more than --num_scenes {num_scenes}; use fewer shards")
    return shard * num_scenes // num_shards, (shard + 1) * num_scenes // num_shards


def split_windows(scenes, sizes, first):
    """{split: windows [W, 3, N, 5]} of normalized scenes [S, F, N, 5] whose first is scene number `first`,
    each split holding those of its scenes (by the global 70/15/15 boundaries) that are among them."""
    out, start = {}, 0
    for split in SPLITS:
        end = start + sizes[split]
        lo, hi = max(start, first) - first, min(end, first + len(scenes)) - first
        out[split] = scenes_to_windows(scenes[lo:max(lo, hi)]).contiguous()
        start = end
    return out


def shard_path(prefix, shard, num_shards):
    return Path(f"{prefix}_shard{shard}of{num_shards}.pt")


def generate_dataset(out_prefix, num_scenes, seed, workers=None, world=World(), shard=0, num_shards=1):
    """Simulate num_scenes scenes and write the three splits and the metadata; returns the metadata.

    With num_shards > 1, simulate only shard `shard`'s scenes and write them, with the metadata of the
    whole dataset, to one part, shard_path(...), for merge_shards.
    """
    sizes = split_sizes(num_scenes)
    first, last = shard_scenes(num_scenes, shard, num_shards)
    ensure_parent(f"{out_prefix}_meta.json")
    start = time.time()
    scenes = normalize(simulate_scenes(world, seed, first, last, workers))  # [S, F, N, 5]
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
    windows = split_windows(scenes, sizes, first)
    if num_shards > 1:
        part = {"shard": shard, "num_shards": num_shards, "meta": meta, "windows": windows}
        save_torch(part, shard_path(out_prefix, shard, num_shards))
        return meta
    write_dataset(out_prefix, windows, meta)
    return meta


def write_dataset(out_prefix, windows, meta):
    for split in SPLITS:
        save_torch(windows[split], f"{out_prefix}_{split}.pt")
    save_text(json.dumps(meta, indent=2) + "\n", f"{out_prefix}_meta.json")


def _without_time(meta):
    """Metadata as compared between shards: all but the time each took."""
    return {k: v for k, v in meta.items() if k != "generation_seconds"}


def merge_shards(out_prefix):
    """Write the dataset of the parts out_prefix_shard{i}of{n}.pt, i = 0..n-1: the files a single run with
    the same flags writes, except that generation_seconds is the sum of the parts'. Checks everything
    before writing anything; returns the metadata."""
    prefix = Path(out_prefix)
    found = {}  # num_shards: shard indices
    for path in prefix.parent.glob(f"{prefix.name}_shard*of*.pt"):
        if match := re.fullmatch(rf"{re.escape(prefix.name)}_shard(\d+)of(\d+)\.pt", path.name):
            found.setdefault(int(match[2]), set()).add(int(match[1]))
    if not found:
        raise NPEError(f"no dataset shards {prefix}_shard*of*.pt found ({SHARD_HINT})")
    if len(found) > 1:
        raise NPEError(f"{prefix}_shard*of*.pt mixes runs of {' and '.join(map(str, sorted(found)))} shards; "
                       f"remove the stale ones")
    [(num_shards, indices)] = found.items()
    if missing := sorted(set(range(num_shards)) - indices):
        raise NPEError(f"shards {', '.join(map(str, missing))} of {num_shards} are missing for {prefix} "
                       f"({SHARD_HINT})")
    paths = [shard_path(prefix, i, num_shards) for i in range(num_shards)]
    parts = [load_torch(path, "dataset shard", SHARD_HINT) for path in paths]
    for i, (path, part) in enumerate(zip(paths, parts)):
        if not (isinstance(part, dict) and part.get("shard") == i and part.get("num_shards") == num_shards
                and isinstance(part.get("meta"), dict) and isinstance(part.get("windows"), dict)):
            raise NPEError(f"{path} is not shard {i} of {num_shards} of a dataset ({SHARD_HINT})")
    reference = _without_time(parts[0]["meta"])
    for path, part in zip(paths[1:], parts[1:]):
        mine = _without_time(part["meta"])
        if differ := sorted(k for k in mine.keys() | reference.keys() if mine.get(k) != reference.get(k)):
            key = differ[0]
            raise NPEError(f"{path} and {paths[0]} come from different runs ({key}: {mine.get(key)} vs "
                           f"{reference.get(key)}); regenerate the shards with the same flags")
    try:
        windows = {split: torch.cat([p["windows"][split] for p in parts]) for split in SPLITS}
        seconds = sum(p["meta"]["generation_seconds"] for p in parts)
    except (KeyError, TypeError, RuntimeError) as err:
        raise NPEError(f"the shards of {prefix} are not dataset parts ({type(err).__name__}: {err}); "
                       f"regenerate them ({SHARD_HINT})") from None
    meta = {**parts[0]["meta"], "generation_seconds": round(seconds, 2)}
    write_dataset(prefix, windows, meta)
    return meta


def load_meta(prefix):
    path = Path(f"{prefix}_meta.json")
    if not path.is_file():
        raise NPEError(f"dataset metadata not found: {path} ({GENERATE_HINT}, or fix --dataset_prefix)")
    try:
        meta = json.loads(path.read_text())
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


def load_dataset(prefix, split):
    """The windows [W, 3, N, 5] of one split (t-1, t, t+1) of the dataset at `prefix`, checked."""
    return load_split(prefix, split, load_meta(prefix))


def simulate(meta, seed, num_scenes, num_frames, workers=None, **changes):
    """Fresh normalized scenes [S, num_frames, N, 5] for rollouts, in a checkpoint's world with
    `changes` to its fields (for example num_balls=(8,) to test generalization).

    Refuses the seed the checkpoint's training data came from: those scenes are not fresh.
    """
    if seed == meta["seed"]:
        raise NPEError(f"--seed {seed} is the seed of the training data; pick another one for fresh scenes")
    world = replace(World.from_dict(meta["world"]), **changes)
    raw = simulate_scenes(world, seed, 0, num_scenes, workers, num_frames, progress=False)
    return normalize(raw)
