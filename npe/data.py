"""The window dataset: scenes of normalized states cut into 3-frame windows (t-1, t, t+1).

On disk, for a prefix P: P_train.pt, P_val.pt, P_test.pt, each a float32 tensor
[num_windows, 3, num_objects, 5], and P_meta.json. Scenes with fewer objects than num_objects are
padded with empty slots (mass PAD_MASS, see config.py). Splits are by scene (70/15/15), the windows of a
scene stored contiguously and in time order; shuffling happens at training time.

P_meta.json is written last and is the commit point: it records each split's window count and
fingerprint (the sha256 of its float32 values), and load_split refuses a split that does not match it,
so a reader never uses a mix of two runs, even after one was killed while replacing the other.

Generation can be split across machines: shard i of n simulates a contiguous range of scenes and writes
them, cut at the split boundaries, to P_shard{i}of{n}.pt; merge_shards turns the n parts into the files
a single run writes.
"""
import contextlib
import hashlib
import itertools
import json
import os
import re
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from . import __version__
from .cli import FLOAT32_MAX, NPEError
from .config import (LAYOUTS, MAX_BALLS, MAX_FRAMES, MAX_FRAMES_PER_SCENE, MAX_SUBSTEPS, SPLIT_FRACTIONS, SPLITS,
                     STATE_DIM, WINDOW, World, state_scale)
from .files import atomic_paths, check_writable, load_torch, regular_file, save_torch, write_torch
from .sim import simulate_scenes

GENERATE_HINT = "create it with generate_dataset_4ball.py"
REGENERATE_HINT = "regenerate the dataset with generate_dataset_4ball.py"
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


def split_ranges(sizes):
    """{split: (first, last)}: the scenes [first, last) of each split, in the order train, val, test."""
    out, start = {}, 0
    for split in SPLITS:
        out[split] = start, start + sizes[split]
        start += sizes[split]
    return out


def scenes_in(sizes, first, last):
    """{split: how many of the scenes [first, last) are in it}."""
    return {split: max(0, min(end, last) - max(start, first)) for split, (start, end) in split_ranges(sizes).items()}


def split_windows(scenes, sizes, first):
    """{split: windows [W, 3, N, 5]} of normalized scenes [S, F, N, 5] whose first is scene number `first`,
    each split holding those of its scenes (by the global 70/15/15 boundaries) that are among them."""
    out = {}
    for split, (start, end) in split_ranges(sizes).items():
        lo, hi = max(start, first) - first, min(end, first + len(scenes)) - first
        out[split] = scenes_to_windows(scenes[lo:max(lo, hi)]).contiguous()
    return out


def shard_path(prefix, shard, num_shards):
    return Path(f"{prefix}_shard{shard}of{num_shards}.pt")


def split_path(prefix, split):
    return Path(f"{prefix}_{split}.pt")


def meta_path(prefix):
    return Path(f"{prefix}_meta.json")


def dataset_paths(prefix):
    """The files of the dataset at `prefix`: its splits, then its metadata."""
    return [*(split_path(prefix, split) for split in SPLITS), meta_path(prefix)]


def generate_dataset(out_prefix, num_scenes, seed, workers=None, world=World(), shard=0, num_shards=1):
    """Simulate num_scenes scenes and write the three splits and the metadata; returns the metadata.

    With num_shards > 1, simulate only shard `shard`'s scenes and write them, with the metadata of the
    whole dataset, to one part, shard_path(...), for merge_shards.
    """
    sizes = split_sizes(num_scenes)
    first, last = shard_scenes(num_scenes, shard, num_shards)
    if num_shards > 1:
        check_writable(shard_path(out_prefix, shard, num_shards))
    else:
        check_replaceable(out_prefix)
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
        path = shard_path(out_prefix, shard, num_shards)
        refuse_nonfinite(windows, path)
        save_torch({"shard": shard, "num_shards": num_shards, "meta": meta, "windows": windows}, path)
        return meta
    return write_dataset(out_prefix, windows, meta)


def fingerprint(windows):
    """The sha256 of a split's float32 values in C order: hashlib.sha256(windows.numpy()).hexdigest()."""
    return hashlib.sha256(windows.contiguous().numpy()).hexdigest()


def count_nonfinite(windows):
    """How many values of `windows` are NaN or infinite (0 after one fast pass: min and max propagate both)."""
    if not windows.numel() or torch.isfinite(torch.stack(torch.aminmax(windows))).all():
        return 0
    return int((~torch.isfinite(windows)).sum())


def refuse_nonfinite(windows, destination):
    """NPEError if a split of {split: windows} holds NaN or inf, which no training may see."""
    for split in SPLITS:
        if bad := count_nonfinite(windows[split]):
            raise NPEError(f"the {split} windows to write to {destination} hold {bad:,} NaN or infinite values; "
                           f"nothing was written (are the world's masses within float32 range?)")


def check_replaceable(prefix):
    """NPEError, before any work, if the dataset at `prefix` could not be written, or if a file under one of
    its split names is not a split (a checkpoint named P_train.pt, say), which writing it would replace."""
    check_writable(*dataset_paths(prefix))
    for path in (split_path(prefix, split) for split in SPLITS):
        if not os.path.lexists(path):
            continue
        held = None
        with contextlib.suppress(Exception):  # not a regular file, or not one torch.save wrote: not a split
            if path.is_file():  # (a FIFO would block the load) memory-mapped: gigabytes cost no reading
                held = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        if not isinstance(held, torch.Tensor):
            what = "unreadable as a split" if held is None else \
                f"a {type(held).__name__}, a checkpoint or another script's file"
            raise NPEError(f"{path} exists and is not a dataset split ({what}); writing the dataset would "
                           f"replace it: pick another --out_prefix or move that file")


def write_dataset(out_prefix, windows, meta):
    """Write the splits {split: windows [W, 3, N, 5]} and their metadata as one unit; returns the metadata,
    which then records each split's fingerprint.

    Every file is first written in full under a temporary name (files.atomic_paths); only then does the
    old metadata go, the splits take their names and the metadata takes its name, last: the commit point.
    Stopped before that, the old dataset stays as it was (a kill -9 leaves temporary files, which the next
    write of the dataset removes); stopped during it, there is no metadata, which loading refuses; and a
    split of another run beside a metadata does not match its fingerprint.
    """
    refuse_nonfinite(windows, f"{out_prefix}_*")
    meta = {**meta, "sha256": {split: fingerprint(windows[split]) for split in SPLITS}}
    with atomic_paths(*dataset_paths(out_prefix)) as staged:  # the metadata last
        for split, path in zip(SPLITS, staged):
            write_torch(windows[split], path)
        staged[-1].write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _without_time(meta):
    """Metadata as compared between shards: all but the time each took."""
    return {k: v for k, v in meta.items() if k != "generation_seconds"}


def merge_shards(out_prefix):
    """Write the dataset of the parts out_prefix_shard{i}of{n}.pt, i = 0..n-1: the files a single run with
    the same flags writes, except that generation_seconds is the sum of the parts'. Checks everything
    before writing anything; returns the metadata."""
    prefix = Path(out_prefix)
    found = {}  # num_shards: shard indices
    names = [path.name for path in prefix.parent.iterdir()] if prefix.parent.is_dir() else []
    for name in names:  # matched as text, not as a glob: a prefix may hold [, ? or *
        if match := re.fullmatch(rf"{re.escape(prefix.name)}_shard(\d+)of(\d+)\.pt", name):
            found.setdefault(int(match[2]), set()).add(int(match[1]))
    if not found:
        raise NPEError(f"no dataset shards {prefix}_shard*of*.pt found ({SHARD_HINT})")
    if len(found) > 1:
        raise NPEError(f"{prefix}_shard*of*.pt mixes runs of {' and '.join(map(str, sorted(found)))} shards; "
                       f"remove the stale ones")
    [(num_shards, indices)] = found.items()
    if stray := sorted(i for i in indices if i >= num_shards):
        raise NPEError(f"{shard_path(prefix, stray[0], num_shards)} names no shard of {num_shards} (they count "
                       f"from 0); remove it")
    if len(indices) < num_shards:  # the first few named, so that a name claiming 10^10 shards costs nothing
        missing = list(itertools.islice((i for i in range(num_shards) if i not in indices), 5))
        more = num_shards - len(indices) - len(missing)
        raise NPEError(f"shards {', '.join(map(str, missing))}{f' and {more:,} more' if more else ''} of "
                       f"{num_shards:,} are missing for {prefix} ({SHARD_HINT})")
    check_replaceable(prefix)
    paths = [shard_path(prefix, i, num_shards) for i in range(num_shards)]
    parts = [load_torch(path, "dataset shard", SHARD_HINT) for path in paths]
    for i, (path, part) in enumerate(zip(paths, parts)):
        if not (isinstance(part, dict) and part.get("shard") == i and part.get("num_shards") == num_shards
                and isinstance(part.get("meta"), dict) and isinstance(part.get("windows"), dict)):
            raise NPEError(f"{path} is not shard {i} of {num_shards} of a dataset ({SHARD_HINT})")
    meta = check_meta(parts[0]["meta"], paths[0], SHARD_HINT)
    reference = _without_time(meta)
    for path, part in zip(paths[1:], parts[1:]):
        mine = _without_time(part["meta"])
        if differ := sorted(k for k in mine.keys() | reference.keys() if mine.get(k) != reference.get(k)):
            key = differ[0]
            raise NPEError(f"{path} and {paths[0]} come from different runs ({key}: {mine.get(key)} vs "
                           f"{reference.get(key)}); regenerate the shards with the same flags")
    num_scenes = sum(meta["scenes"].values())
    for i, (path, part) in enumerate(zip(paths, parts)):
        check_part(path, part, meta, *shard_scenes(num_scenes, i, num_shards))
    windows = {split: torch.cat([p["windows"][split] for p in parts]) for split in SPLITS}
    seconds = sum(check_meta(p["meta"], path, SHARD_HINT)["generation_seconds"] for path, p in zip(paths, parts))
    return write_dataset(prefix, windows, {**meta, "generation_seconds": round(seconds, 2)})


def check_part(path, part, meta, first, last):
    """NPEError unless the shard `part` holds, in each split, the windows of its scenes [first, last)."""
    counts = scenes_in(meta["scenes"], first, last)
    for split in SPLITS:
        windows = part["windows"].get(split)
        expected = (counts[split] * meta["windows_per_scene"], WINDOW, meta["num_objects"], STATE_DIM)
        if not (is_window_tensor(windows) and tuple(windows.shape) == expected):
            raise NPEError(f"{path} does not hold the {split} windows of its scenes {first} to {last - 1} "
                           f"(expected [{', '.join(map(str, expected))}], got {describe(windows)}): written by "
                           f"an interrupted or another run? regenerate it ({SHARD_HINT})")


def _number(value, low=0.0, inclusive=False):
    """Whether `value` is a JSON number (not a bool) above `low` (or equal to it, if inclusive) that stays
    finite in float32, as every state, mass and scale ends up."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= FLOAT32_MAX
            and (value > low or (inclusive and value == low)))


def _count(value, low):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


WORLD_LIMITS = {"num_balls": MAX_BALLS, "frames_per_scene": MAX_FRAMES_PER_SCENE, "substeps": MAX_SUBSTEPS}


def _world_problem(world):
    """What is wrong with the metadata's world (a dict of World fields; one left out keeps its default), or None."""
    if not isinstance(world, dict):
        return f"world is a {type(world).__name__}, not an object"
    defaults = {f.name: f.default for f in fields(World)}
    for key, value in world.items():
        if key not in defaults:
            return f"world.{key} is not a field of the world"
        default = defaults[key]
        if isinstance(default, tuple) and not (isinstance(value, (list, tuple)) and value):
            return f"world.{key} is {value!r}, not a non-empty list"
        kind = default[0] if isinstance(default, tuple) else default
        if isinstance(kind, str):
            ok, want = (lambda v: v in LAYOUTS), f"one of the layouts {', '.join(LAYOUTS)}"
        elif isinstance(kind, int):
            most = WORLD_LIMITS[key]
            ok, want = (lambda v: _count(v, 1) and v <= most), f"an integer from 1 to {most:,}"
        elif key in ("elasticity", "min_speed"):  # these may be 0, no other length, time or mass may
            ok, want = (lambda v: _number(v, inclusive=True)), "a non-negative number"
        else:
            ok, want = _number, "a positive number"
        for v in value if isinstance(default, tuple) else [value]:
            if not ok(v):
                return f"world.{key} holds {v!r}, not {want}"
    return None


def check_meta(meta, path, hint=REGENERATE_HINT):
    """`meta`, a dataset's metadata read from `path`, if its fields have the types and ranges every reader
    relies on; else one NPEError naming the file and the field. A metadata without fingerprints (written
    before they were recorded) passes: its splits are then checked by count, shape and values only."""
    def problem():
        if not isinstance(meta, dict):
            return f"it holds a {type(meta).__name__}, not an object"
        for key in ("num_objects", "frames_per_scene", "windows_per_scene", "scenes", "windows", "seed", "dt",
                    "world", "state_scale", "generation_seconds"):
            if key not in meta:
                return f"{key} is missing"
        if not _count(meta["num_objects"], 1):
            return f"num_objects is {meta['num_objects']!r}, not a positive integer"
        if not _count(meta["frames_per_scene"], WINDOW):
            return f"frames_per_scene is {meta['frames_per_scene']!r}, not an integer of at least {WINDOW}"
        if meta["windows_per_scene"] != meta["frames_per_scene"] - WINDOW + 1:
            return f"windows_per_scene is {meta['windows_per_scene']!r}, not frames_per_scene - {WINDOW - 1}"
        for key in ("scenes", "windows"):
            if not (isinstance(meta[key], dict) and set(SPLITS) <= meta[key].keys()):
                return f"{key} is {meta[key]!r}, not an object with {', '.join(SPLITS)}"
        for split in SPLITS:
            if not _count(meta["scenes"][split], 1):
                return f"scenes.{split} is {meta['scenes'][split]!r}, not a positive integer"
            if not (_count(meta["windows"][split], 1)
                    and meta["windows"][split] == meta["scenes"][split] * meta["windows_per_scene"]):
                return f"windows.{split} is {meta['windows'][split]!r}, not scenes.{split} x windows_per_scene"
        if not _count(meta["seed"], 0):
            return f"seed is {meta['seed']!r}, not a non-negative integer"
        if not _number(meta["dt"]):
            return f"dt is {meta['dt']!r}, not a positive number"
        scale = meta["state_scale"]
        if not (isinstance(scale, list) and len(scale) == STATE_DIM):
            return f"state_scale is {scale!r}, not a list of {STATE_DIM} numbers"
        if bad := [i for i, v in enumerate(scale) if not _number(v)]:
            return f"state_scale[{bad[0]}] is {scale[bad[0]]!r}, not a positive number"
        if world_problem := _world_problem(meta["world"]):
            return world_problem
        world = World.from_dict(meta["world"])
        for key in ("num_objects", "frames_per_scene", "dt"):
            if getattr(world, key) != meta[key]:
                return f"{key} is {meta[key]!r}, but its world's is {getattr(world, key)!r}"
        if not _number(meta["generation_seconds"], inclusive=True):
            return f"generation_seconds is {meta['generation_seconds']!r}, not a non-negative number"
        if "sha256" in meta:
            if not isinstance(meta["sha256"], dict):
                return f"sha256 is {meta['sha256']!r}, not an object with {', '.join(SPLITS)}"
            for split in SPLITS:
                if not re.fullmatch(r"[0-9a-f]{64}", str(meta["sha256"].get(split))):
                    return f"sha256.{split} is {meta['sha256'].get(split)!r}, not 64 hex digits"
        return None

    if why := problem():
        raise NPEError(f"corrupt dataset metadata {path}: {why[:300]}; {hint}")
    return meta


def load_meta(prefix):
    """The metadata of the dataset at `prefix`, checked (check_meta)."""
    path = meta_path(prefix)
    if split_path(prefix, "train").exists() and not path.exists():
        raise NPEError(f"dataset metadata not found: {path}, though {split_path(prefix, 'train')} is there "
                       f"(a generation or merge that was interrupted?); {REGENERATE_HINT}")
    regular_file(path, "dataset metadata", f"{GENERATE_HINT}, or fix --dataset_prefix")  # a FIFO would hang
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        raise NPEError(f"corrupt dataset metadata {path}: {str(err)[:200]}; {REGENERATE_HINT}") from None
    return check_meta(meta, path)


def is_window_tensor(windows):
    """Whether `windows` is a plain 4-d float32 tensor: dense, on the CPU, not part of an autograd graph."""
    return (isinstance(windows, torch.Tensor) and windows.dtype == torch.float32 and windows.layout == torch.strided
            and windows.device.type == "cpu" and not windows.requires_grad and windows.dim() == 4)


def describe(windows):
    if isinstance(windows, torch.Tensor):
        grad = ", requires grad" if windows.requires_grad else ""
        return f"{windows.dtype} {windows.layout} on {windows.device}{grad} [{', '.join(map(str, windows.shape))}]"
    return type(windows).__name__


def load_split(prefix, split, meta):
    """One split as a float32 tensor [W, 3, N, 5], checked against the metadata (as load_meta returns it):
    its window count and shape, its fingerprint where the metadata records one, and finite values."""
    path, against = split_path(prefix, split), meta_path(prefix)
    windows = load_torch(path, f"{split} split", GENERATE_HINT)
    expected = (meta["windows"][split], WINDOW, meta["num_objects"], STATE_DIM)
    if not is_window_tensor(windows):
        raise NPEError(f"{path} is not a float32 window tensor [W, {WINDOW}, N, {STATE_DIM}] (got "
                       f"{describe(windows)}); {REGENERATE_HINT}")
    if tuple(windows.shape) != expected:
        if windows.shape[1:] == expected[1:]:
            differs = f"windows: {len(windows):,} in the file, {expected[0]:,} in the metadata"
        else:
            differs = f"shape: [{', '.join(map(str, windows.shape))}] in the file, [{', '.join(map(str, expected))}] " \
                      f"in the metadata"
        raise NPEError(f"{path} does not match {against} ({differs}: written by another run, or an interrupted "
                       f"one?); {REGENERATE_HINT}")
    if "sha256" in meta and fingerprint(windows) != meta["sha256"][split]:
        raise NPEError(f"{path} does not match {against} (sha256 differs: written by another run, or an "
                       f"interrupted one?); {REGENERATE_HINT}")
    if bad := count_nonfinite(windows):
        raise NPEError(f"{path} holds {bad:,} NaN or infinite values; {REGENERATE_HINT}")
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
    if min(num_scenes, num_frames) < 1:  # 0 frames would have given the world's default number
        raise NPEError(f"{num_scenes} scenes of {num_frames} frames: ask for at least one of each")
    if num_scenes * num_frames > MAX_FRAMES:
        raise NPEError(f"{num_scenes:,} scenes of {num_frames:,} frames are more than the {MAX_FRAMES:,} frames "
                       f"simulated at once; ask for fewer scenes or steps")
    world = replace(World.from_dict(meta["world"]), **changes)
    raw = simulate_scenes(world, seed, 0, num_scenes, workers, num_frames, progress=False)
    return normalize(raw)
