"""A dataset is one unit: its metadata, written last, records each split's window count and fingerprint;
loading refuses (one error line naming the file and the field, exit status 2) a split that does not match
it, a metadata that is not well formed, and NaN or inf; an interrupted write leaves the old dataset or
one that loading refuses, never a mix; a merge refuses a shard with windows missing, writing nothing."""
import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import npe.data
import npe.files
from conftest import CLASSIC, cli, is_one_error_line
from npe.cli import NPEError
from npe.config import SPLITS, World
from npe.data import fingerprint, generate_dataset, load_dataset, write_dataset

GENERATE, MERGE = "generate_dataset_4ball.py", "merge_dataset_shards.py"
NUM_SCENES = 3  # one scene per split


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{seed: prefix} of two small datasets with the same number of scenes, each in a folder of its own."""
    folder = tmp_path_factory.mktemp("runs")
    out = {}
    for seed in (1, 2):
        out[seed] = folder / f"seed{seed}" / "balls"
        generate_dataset(out[seed], NUM_SCENES, seed, workers=1)
    return out


def files(prefix):
    return [Path(f"{prefix}_{split}.pt") for split in SPLITS] + [Path(f"{prefix}_meta.json")]


def copy(prefix, folder):
    """The prefix of a copy of the dataset at `prefix` in `folder`."""
    for path in files(prefix):
        shutil.copy(path, folder)
    return folder / prefix.name


def read_meta(prefix):
    return json.loads(Path(f"{prefix}_meta.json").read_text())


def write_meta(prefix, meta):
    Path(f"{prefix}_meta.json").write_text(json.dumps(meta))


def contents(prefix):
    """{file name: bytes} of a dataset's files, and of anything else in its folder."""
    return {p.name: p.read_bytes() for p in sorted(prefix.parent.iterdir())}


def without_time(meta):
    return {k: v for k, v in meta.items() if k != "generation_seconds"}


def same_dataset(prefix, other):
    """Whether two datasets have the same split files, byte for byte, and metadata but for the time it took."""
    return (all(Path(f"{prefix}_{s}.pt").read_bytes() == Path(f"{other}_{s}.pt").read_bytes() for s in SPLITS)
            and without_time(read_meta(prefix)) == without_time(read_meta(other)))


def train(prefix, tmp_path):
    """Training on the dataset at `prefix`, as the user runs it: (exit status, messages)."""
    return cli(CLASSIC, "--dataset_prefix", prefix, "--name", "run", "--ckpt_dir", tmp_path / "ckpt",
               "--metrics_csv", tmp_path / "m.csv", "--device", "cpu", "--total_samples", 50)


def refused(prefix, tmp_path, *named):
    """Training refuses the dataset with one error line that names each of `named`; nothing trains."""
    status, lines = train(prefix, tmp_path)
    assert status == 2 and is_one_error_line(lines), lines
    assert all(str(n) in lines[0] for n in named), lines
    return lines[0]


def test_metadata_records_the_sha256_of_each_splits_float32_values(runs):
    meta = read_meta(runs[1])
    for split in SPLITS:
        windows = torch.load(f"{runs[1]}_{split}.pt", weights_only=True)
        assert meta["sha256"][split] == hashlib.sha256(windows.numpy()).hexdigest()
        assert meta["windows"][split] == len(windows)


def test_split_of_another_run_with_as_many_windows_beside_the_old_metadata_is_refused(runs, tmp_path):
    prefix = copy(runs[1], tmp_path)
    shutil.copy(f"{runs[2]}_train.pt", f"{prefix}_train.pt")
    line = refused(prefix, tmp_path, f"{prefix}_train.pt", f"{prefix}_meta.json", "sha256")
    assert "regenerate" in line


def test_split_with_more_windows_than_its_metadata_says_is_refused(runs, tmp_path):
    prefix = copy(runs[1], tmp_path)
    longer = torch.load(f"{prefix}_train.pt", weights_only=True).repeat(3, 1, 1, 1)
    torch.save(longer, f"{prefix}_train.pt")
    refused(prefix, tmp_path, f"{prefix}_train.pt", f"windows: {len(longer)} in the file, 58 in the metadata")


@pytest.mark.parametrize("change", [torch.Tensor.half, torch.Tensor.to_sparse, torch.Tensor.requires_grad_,
                                    lambda w: w.to("meta"), lambda w: [w]],
                         ids=["float16", "sparse", "requires grad", "meta device", "a list"])
def test_split_that_is_not_a_plain_float32_tensor_is_refused(change, runs, tmp_path):
    prefix = copy(runs[1], tmp_path)
    torch.save(change(torch.load(f"{prefix}_train.pt", weights_only=True)), f"{prefix}_train.pt")
    refused(prefix, tmp_path, f"{prefix}_train.pt", "not a float32 window tensor")


def test_nan_put_into_a_split_is_refused(runs, tmp_path):
    prefix = copy(runs[1], tmp_path)
    windows = torch.load(f"{prefix}_val.pt", weights_only=True)
    windows[5, 1, 2, 3] = math.nan
    torch.save(windows, f"{prefix}_val.pt")
    refused(prefix, tmp_path, f"{prefix}_val.pt")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_value_in_a_split_is_refused_even_where_its_fingerprint_matches(value, runs, tmp_path):
    prefix = copy(runs[1], tmp_path)
    windows = torch.load(f"{prefix}_train.pt", weights_only=True)
    windows[-1, 2, 0, 0] = value
    torch.save(windows, f"{prefix}_train.pt")
    meta = read_meta(prefix)
    meta["sha256"]["train"] = fingerprint(windows)
    write_meta(prefix, meta)
    refused(prefix, tmp_path, f"{prefix}_train.pt", "1 NaN or infinite value")


def test_windows_with_nan_are_never_written(runs, tmp_path):
    windows = {split: load_dataset(runs[1], split) for split in SPLITS}
    windows["test"][0, 0, 0, 4] = math.nan
    with pytest.raises(NPEError, match="test windows .* hold 1 NaN or infinite values; nothing was written"):
        write_dataset(tmp_path / "balls", windows, read_meta(runs[1]))
    assert not list(tmp_path.iterdir())


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # the simulation's own, as the masses become inf
def test_masses_beyond_float32_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(NPEError, match="NaN or infinite values; nothing was written"):
        generate_dataset(tmp_path / "balls", NUM_SCENES, 1, workers=1, world=World(masses=(1e39,)))
    assert not list(tmp_path.iterdir())


def test_dataset_without_fingerprints_is_checked_by_window_count_shape_and_values(runs, tmp_path):
    prefix = copy(runs[1], tmp_path)
    meta = read_meta(prefix)
    del meta["sha256"]
    write_meta(prefix, meta)
    assert all(torch.equal(load_dataset(prefix, s), load_dataset(runs[1], s)) for s in SPLITS)
    shutil.copy(f"{runs[2]}_train.pt", f"{prefix}_train.pt")  # as many windows: only a fingerprint would tell
    load_dataset(prefix, "train")
    torch.save(torch.zeros(1, 3, 4, 5), f"{prefix}_train.pt")
    refused(prefix, tmp_path, f"{prefix}_train.pt", "windows")


def without(key):
    def change(meta):
        del meta[key]
    return change


def setting(path, value):
    """A change of the metadata: the field at `path` (keys, dot-separated) set to `value`."""
    def change(meta):
        *parents, last = path.split(".")
        for key in parents:
            meta = meta[key]
        meta[int(last) if isinstance(meta, list) else last] = value
    return change


# (change of a good metadata, or the bytes of a whole file; what the error line must name)
DEFECTS = {
    "a list": (b"[1, 2, 3]", "list"),
    "not JSON": (b'{"dt": ', "meta.json"),
    "nested too deep": (b"[" * 100000 + b"]" * 100000, "meta.json"),
    "not UTF-8": (b'{"dt": "\xff"}', "meta.json"),
    "no dt": (without("dt"), "dt"),
    "no world": (without("world"), "world"),
    "zero state_scale": (setting("state_scale.2", 0), "state_scale[2]"),
    "negative state_scale": (setting("state_scale.0", -800), "state_scale[0]"),
    "nan state_scale": (setting("state_scale.1", math.nan), "state_scale[1]"),
    "string state_scale": (setting("state_scale.4", "1"), "state_scale[4]"),
    "short state_scale": (setting("state_scale", [800, 800, 500, 500]), "state_scale"),
    "world a list": (setting("world", [800, 600]), "world"),
    "unknown world field": (setting("world.gravity", 9.8), "world.gravity"),
    "negative radius": (setting("world.radius", -60), "world.radius"),
    "infinite width": (setting("world.width", math.inf), "world.width"),
    "zero mass": (setting("world.masses", [1, 0]), "world.masses"),
    "mass beyond float32": (setting("world.masses", [1e39]), "world.masses"),
    "unknown layout": (setting("world.layouts", ["O", "Q"]), "world.layouts"),
    "ball count 2.5": (setting("world.num_balls", [2.5]), "world.num_balls"),
    "world of other dt": (setting("world.dt", 0.1), "dt"),
    "world of other objects": (setting("world.num_balls", [5]), "num_objects"),
    "zero dt": (setting("dt", 0), "dt"),
    "string dt": (setting("dt", "0.033"), "dt"),
    "negative seed": (setting("seed", -1), "seed"),
    "bool num_objects": (setting("num_objects", True), "num_objects"),
    "no scenes": (without("scenes"), "scenes"),
    "zero test scenes": (setting("scenes.test", 0), "scenes.test"),
    "windows not scenes x 58": (setting("windows.train", 59), "windows.train"),
    "windows a float": (setting("windows.val", 58.0), "windows.val"),
    "windows_per_scene": (setting("windows_per_scene", 57), "windows_per_scene"),
    "frames_per_scene 2": (setting("frames_per_scene", 2), "frames_per_scene"),
    "sha256 not hex": (setting("sha256.val", "xyz"), "sha256"),
    "sha256 a string": (setting("sha256", "abc"), "sha256"),
    "negative generation_seconds": (setting("generation_seconds", -1), "generation_seconds"),
    "no generation_seconds": (without("generation_seconds"), "generation_seconds"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_metadata_defect_is_one_error_line_naming_the_file_and_the_field(defect, runs, tmp_path):
    prefix = copy(runs[1], tmp_path)
    change, field = DEFECTS[defect]
    if isinstance(change, bytes):
        Path(f"{prefix}_meta.json").write_bytes(change)
    else:
        meta = read_meta(prefix)
        change(meta)
        write_meta(prefix, meta)
    refused(prefix, tmp_path, f"{prefix}_meta.json", field)


def test_regenerating_over_an_old_dataset_replaces_all_of_it(runs, tmp_path):
    prefix = copy(runs[1], tmp_path)
    generate_dataset(prefix, NUM_SCENES, 2, workers=1)
    assert same_dataset(prefix, runs[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files(prefix))
    generate_dataset(prefix, 5, 3, workers=1)
    assert read_meta(prefix)["seed"] == 3 and len(load_dataset(prefix, "train")) == 3 * 58


@pytest.mark.parametrize("foreign", ["checkpoint", "text"])
def test_generation_refuses_to_replace_a_file_under_a_split_name_that_is_not_a_split(foreign, runs, tmp_path):
    prefix = copy(runs[1], tmp_path)
    val = Path(f"{prefix}_val.pt")
    if foreign == "checkpoint":
        torch.save({"config": {"kind": "classic"}, "model": {"w": torch.zeros(2)}}, val)
    else:
        val.write_text("notes\n")
    before = contents(prefix)
    status, lines = cli(GENERATE, "--num_scenes", NUM_SCENES, "--workers", 1, "--out_prefix", prefix)
    assert status == 2 and is_one_error_line(lines), lines
    assert str(val) in lines[0] and "not a dataset split" in lines[0], lines
    assert contents(prefix) == before


class Killed(BaseException):
    """Stands for Ctrl-C or kill -9 at one moment of a write."""


def killed_at_call(patch, owner, name, call):
    """Make owner.name raise Killed at its `call`-th call (counting from 1), after the earlier ones ran."""
    real, calls = getattr(owner, name), []

    def fake(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Killed
        return real(*args, **kwargs)
    patch.setattr(owner, name, fake)


def test_generation_stopped_while_writing_the_splits_leaves_the_old_dataset_as_it_was(runs, tmp_path, monkeypatch):
    prefix = copy(runs[1], tmp_path)
    before = contents(prefix)
    killed_at_call(monkeypatch, npe.data, "write_torch", 2)  # after the train split
    with pytest.raises(Killed):
        generate_dataset(prefix, NUM_SCENES, 2, workers=1)
    assert contents(prefix) == before


@pytest.mark.parametrize("call", [1, 2, 3, 4], ids=["before train", "before val", "before test", "before metadata"])
def test_generation_stopped_while_committing_leaves_a_dataset_that_loading_refuses(call, runs, tmp_path,
                                                                                 monkeypatch):
    prefix = copy(runs[1], tmp_path)
    killed_at_call(monkeypatch, npe.files.os, "replace", call)
    with pytest.raises(Killed):
        generate_dataset(prefix, NUM_SCENES, 2, workers=1)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files(prefix)[:-1])
    line = refused(prefix, tmp_path, f"{prefix}_meta.json", "interrupted")
    assert "regenerate" in line


def test_a_split_and_metadata_of_two_runs_never_load_together(runs, tmp_path):
    for split in SPLITS:
        (tmp_path / split).mkdir()
        prefix = copy(runs[1], tmp_path / split)
        shutil.copy(f"{runs[2]}_{split}.pt", f"{prefix}_{split}.pt")
        with pytest.raises(NPEError, match="sha256 differs"):
            load_dataset(prefix, split)


# Merging shards ------------------------------------------------------------------------------------

NUM_SHARDS = 2  # of 3 scenes: shard 0 holds the train scene, shard 1 the val and test ones


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("shards") / "balls"
    for i in range(NUM_SHARDS):
        status, lines = cli(GENERATE, "--num_scenes", NUM_SCENES, "--seed", 1, "--workers", 1, "--out_prefix", prefix,
                            "--shard", i, "--num_shards", NUM_SHARDS)
        assert status == 0, lines
    return prefix


def copy_shards(shards, folder):
    for i in range(NUM_SHARDS):
        shutil.copy(f"{shards}_shard{i}of{NUM_SHARDS}.pt", folder)
    return folder / shards.name


def cut(windows):
    return windows[:-1]


def emptied(windows):
    return windows[:0]


def doubled(windows):
    return torch.cat([windows, windows])


def one_scene(windows):
    return torch.zeros(58, *windows.shape[1:])


def as_float64(windows):
    return windows.double()


def with_nan(windows):
    windows = windows.clone()
    windows[0, 0, 0, 0] = math.nan
    return windows


@pytest.mark.parametrize("shard,split,change,named", [
    (0, "train", cut, "does not hold the train windows of its scenes 0 to 0"),
    (1, "test", emptied, "does not hold the test windows of its scenes 1 to 2"),
    (1, "val", doubled, "does not hold the val windows"),
    (0, "val", one_scene, "does not hold the val windows"),
    (1, "val", as_float64, "torch.float64"),
    (1, "test", with_nan, "NaN or infinite"),
    (0, "train", None, "does not hold the train windows"),
], ids=["one window cut", "split emptied", "windows doubled", "a scene in a split it has none of",
        "float64", "nan", "split missing"])
def test_merge_refuses_a_shard_whose_windows_do_not_fit_its_scenes_and_writes_nothing(shard, split, change, named,
                                                                                    shards, tmp_path):
    prefix = copy_shards(shards, tmp_path)
    path = f"{prefix}_shard{shard}of{NUM_SHARDS}.pt"
    part = torch.load(path, weights_only=True)
    if change is None:
        del part["windows"][split]
    else:
        part["windows"][split] = change(part["windows"][split])
    torch.save(part, path)
    before = contents(prefix)
    status, lines = cli(MERGE, "--out_prefix", prefix)
    assert status == 2 and is_one_error_line(lines) and named in lines[0], lines
    assert contents(prefix) == before


def test_merge_refuses_to_replace_a_file_under_a_split_name_that_is_not_a_split(shards, tmp_path):
    prefix = copy_shards(shards, tmp_path)
    torch.save({"config": {"kind": "classic"}, "model": {}}, f"{prefix}_train.pt")
    before = contents(prefix)
    status, lines = cli(MERGE, "--out_prefix", prefix)
    assert status == 2 and is_one_error_line(lines) and "not a dataset split" in lines[0], lines
    assert contents(prefix) == before


def test_merge_over_an_old_dataset_replaces_all_of_it(shards, runs, tmp_path):
    prefix = copy(runs[2], tmp_path)
    copy_shards(shards, tmp_path)
    status, lines = cli(MERGE, "--out_prefix", prefix)
    assert status == 0, lines
    assert same_dataset(prefix, runs[1])
