"""Dataset generation split across machines: shards of disjoint scenes that merge into exactly the files
a single run writes, and merges refused (one error line, exit status 2, no output) when the shards do
not belong together."""
import json
import shutil

import pytest
import torch

from conftest import NUM_SCENES, SEED, cli, is_one_error_line, ok
from npe.config import SPLITS
from npe.data import shard_scenes

GENERATE, MERGE = "generate_dataset_4ball.py", "merge_dataset_shards.py"
# 24 scenes (16 train, 4 val, 4 test) in 5 shards of 4 or 5: shard 3 holds train and val scenes, shard 4
# val and test ones, so merging has to join splits cut inside a shard.
NUM_SHARDS = 5


def generate_shard(prefix, shard, num_shards=NUM_SHARDS, seed=SEED):
    return cli(GENERATE, "--num_scenes", NUM_SCENES, "--seed", seed, "--workers", 1, "--out_prefix", prefix,
               "--shard", shard, "--num_shards", num_shards)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("shards") / "balls"
    for i in range(NUM_SHARDS):
        ok(generate_shard(prefix, i))
    return prefix


def copy_shards(shards, folder, indices=range(NUM_SHARDS)):
    """The prefix of a copy of some of the shards in `folder`."""
    for i in indices:
        shutil.copy(f"{shards}_shard{i}of{NUM_SHARDS}.pt", folder)
    return folder / shards.name


@pytest.fixture(scope="module")
def merged(shards, tmp_path_factory):
    prefix = copy_shards(shards, tmp_path_factory.mktemp("merged"))
    ok(cli(MERGE, "--out_prefix", prefix))
    return prefix


def meta_of(prefix):
    return json.loads(prefix.with_name(prefix.name + "_meta.json").read_text())


@pytest.mark.parametrize("num_scenes", [3, 24, 101])
def test_shard_scene_ranges_are_disjoint_contiguous_and_cover_every_scene(num_scenes):
    for num_shards in range(1, num_scenes + 1):
        ranges = [shard_scenes(num_scenes, i, num_shards) for i in range(num_shards)]
        assert ranges[0][0] == 0 and ranges[-1][1] == num_scenes
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_a_shard_writes_one_part_and_no_dataset_files(shards):
    assert sorted(p.name for p in shards.parent.iterdir()) == [f"balls_shard{i}of5.pt" for i in range(5)]


@pytest.mark.parametrize("split", SPLITS)
def test_merged_shards_are_the_split_files_of_a_single_run(merged, dataset, split):
    single = torch.load(f"{dataset}_{split}.pt", weights_only=True)
    assert torch.equal(torch.load(f"{merged}_{split}.pt", weights_only=True), single)


def test_merged_metadata_is_that_of_a_single_run_but_for_the_time(merged, dataset):
    mine, single = meta_of(merged), meta_of(dataset)
    assert mine.pop("generation_seconds") >= 0 and single.pop("generation_seconds") >= 0
    assert mine == single


def test_merged_generation_time_is_the_sum_of_the_shards(merged):
    parts = [torch.load(f"{merged}_shard{i}of5.pt", weights_only=True) for i in range(5)]
    assert meta_of(merged)["generation_seconds"] == round(sum(p["meta"]["generation_seconds"] for p in parts), 2)


def missing_shard(shards, folder):
    return copy_shards(shards, folder, [0, 1, 3, 4]), "shards 2 of 5 are missing"


def shard_of_another_seed(shards, folder):
    prefix = copy_shards(shards, folder, [0, 2, 3, 4])
    ok(generate_shard(prefix, 1, seed=SEED + 1))
    return prefix, "seed"


def stale_shard_of_another_count(shards, folder):
    prefix = copy_shards(shards, folder)
    ok(generate_shard(prefix, 0, num_shards=2))
    return prefix, "mixes runs of 2 and 5 shards"


def no_shards(shards, folder):
    return folder / "balls", "no dataset shards"


def not_a_shard(shards, folder):
    prefix = copy_shards(shards, folder, [0, 1, 2, 3])
    torch.save({"not": "a shard"}, f"{prefix}_shard4of5.pt")
    return prefix, "is not shard 4 of 5"


@pytest.mark.parametrize("mistake", [missing_shard, shard_of_another_seed, stale_shard_of_another_count, no_shards,
                                     not_a_shard], ids=lambda f: f.__name__.replace("_", " "))
def test_merge_of_shards_that_do_not_belong_together_is_one_error_line_and_writes_nothing(mistake, shards, tmp_path):
    prefix, named = mistake(shards, tmp_path)
    status, lines = cli(MERGE, "--out_prefix", prefix)
    assert status == 2 and is_one_error_line(lines) and named in lines[0], lines
    assert not [p for p in tmp_path.iterdir() if "_shard" not in p.name]


@pytest.mark.parametrize("flags,named", [(["--shard", 5, "--num_shards", 5], "--shard 5"),
                                         (["--num_shards", 25], "--num_shards 25")],
                         ids=["shard 5 of 5", "more shards than scenes"])
def test_impossible_shard_is_one_error_line_and_writes_nothing(flags, named, tmp_path):
    status, lines = cli(GENERATE, "--num_scenes", NUM_SCENES, "--workers", 1, "--out_prefix", tmp_path / "balls",
                        *flags)
    assert status == 2 and is_one_error_line(lines) and named in lines[0], lines
    assert not list(tmp_path.iterdir())
