"""The window dataset on disk: files, layout, metadata, scene boundaries, splits, determinism, units."""
import json

import pytest
import torch

from conftest import NUM_SCENES, SEED
from npe.config import POS, SPLITS, VEL, World, state_scale
from npe.data import generate_dataset, split_sizes

WINDOWS_PER_SCENE = World().frames_per_scene - 2  # 58


def load(prefix, split):
    return torch.load(f"{prefix}_{split}.pt", weights_only=True)


def meta_of(prefix):
    return json.loads(prefix.with_name(prefix.name + "_meta.json").read_text())


def scenes_of(windows):
    """windows [S * 58, 3, N, 5] -> [S, 58, 3, N, 5]."""
    return windows.reshape(-1, WINDOWS_PER_SCENE, *windows.shape[1:])


def test_dataset_is_three_splits_and_a_metadata_file(dataset):
    names = sorted(p.name for p in dataset.parent.iterdir())
    assert names == sorted(f"{dataset.name}_{s}" for s in ["train.pt", "val.pt", "test.pt", "meta.json"])


@pytest.mark.parametrize("split", SPLITS)
def test_each_split_is_a_float32_window_tensor(dataset, split):
    windows = load(dataset, split)
    assert isinstance(windows, torch.Tensor) and windows.dtype == torch.float32
    assert windows.shape[1:] == (3, 4, 5) and len(windows) > 0


def test_metadata_describes_the_dataset(dataset):
    meta = meta_of(dataset)
    world = World()
    assert meta["num_objects"] == 4
    assert meta["frames_per_scene"] == 60
    assert meta["windows_per_scene"] == 58
    assert meta["seed"] == SEED
    assert meta["dt"] == world.dt
    assert World.from_dict(meta["world"]) == world
    assert meta["state_scale"] == state_scale()
    assert set(meta["scenes"]) == set(SPLITS) and sum(meta["scenes"].values()) == NUM_SCENES


@pytest.mark.parametrize("split", SPLITS)
def test_windows_per_split_are_scenes_times_58(dataset, split):
    meta = meta_of(dataset)
    assert len(load(dataset, split)) == meta["scenes"][split] * 58 == meta["windows"][split]


@pytest.mark.parametrize("num_scenes", [3, 4, 10, 24, 101, 12000])
def test_splits_are_about_70_15_15_with_at_least_one_scene_each(num_scenes):
    sizes = split_sizes(num_scenes)
    assert sum(sizes.values()) == num_scenes and min(sizes.values()) >= 1
    if num_scenes >= 100:
        assert abs(sizes["train"] / num_scenes - 0.70) < 0.02
        assert abs(sizes["val"] / num_scenes - 0.15) < 0.02


@pytest.mark.parametrize("split", SPLITS)
def test_consecutive_windows_of_a_scene_share_two_frames(dataset, split):
    scenes = scenes_of(load(dataset, split))  # [S, 58, 3, N, 5]
    assert torch.equal(scenes[:, 1:, 0:2], scenes[:, :-1, 1:3])


@pytest.mark.parametrize("split", SPLITS)
def test_windows_of_different_scenes_do_not_chain(dataset, split):
    scenes = scenes_of(load(dataset, split))
    assert len(scenes) >= 2
    last, first = scenes[:-1, -1], scenes[1:, 0]  # last window of scene s, first of scene s + 1
    assert not (last[:, 1:3] == first[:, 0:2]).all(dim=(1, 2, 3)).any()


def test_no_scene_is_in_two_splits(dataset):
    first_frames = [tuple(s[0, 0].flatten().tolist()) for split in SPLITS for s in scenes_of(load(dataset, split))]
    assert len(first_frames) == NUM_SCENES
    assert len(set(first_frames)) == NUM_SCENES


@pytest.mark.slow  # dataset_two_workers runs the script in its own interpreter
@pytest.mark.parametrize("split", SPLITS)
def test_same_seed_gives_identical_tensors_for_any_worker_count(dataset, dataset_two_workers, split):
    one, two = load(dataset, split), load(dataset_two_workers, split)
    assert one.numpy().tobytes() == two.numpy().tobytes()


@pytest.mark.slow
def test_same_seed_gives_byte_identical_files(dataset, dataset_two_workers):
    for split in SPLITS:
        one = dataset.with_name(f"{dataset.name}_{split}.pt").read_bytes()
        two = dataset_two_workers.with_name(f"{dataset_two_workers.name}_{split}.pt").read_bytes()
        assert one == two, f"{split} files differ (a checksum of the dataset would not reproduce)"


def test_different_seeds_give_different_scenes(tmp_path):
    a = generate_dataset(tmp_path / "a", num_scenes=3, seed=1, workers=1)
    b = generate_dataset(tmp_path / "b", num_scenes=3, seed=2, workers=1)
    assert a["seed"] != b["seed"]
    assert not torch.equal(load(tmp_path / "a", "train")[0], load(tmp_path / "b", "train")[0])


def test_generation_creates_the_output_folder(tmp_path):
    prefix = tmp_path / "not" / "yet" / "there" / "p"
    generate_dataset(prefix, num_scenes=3, seed=0, workers=1)
    assert all(prefix.with_name(f"p_{s}.pt").is_file() for s in SPLITS)


def test_denormalized_states_are_in_pixels_and_seconds(dataset):
    meta = meta_of(dataset)
    raw = (load(dataset, "train") * torch.tensor(meta["state_scale"])).double()  # [W, 3, N, 5]
    pos, vel = raw[..., POS], raw[..., VEL]
    # Windows where no velocity changes (no collision, none just before): x(t+1) = x(t) + v(t+1) dt.
    free = ((vel[:, 0] == vel[:, 1]) & (vel[:, 1] == vel[:, 2])).all(dim=(-1, -2))
    error = (pos[:, 2] - pos[:, 1] - vel[:, 2] * meta["dt"]).abs().amax(dim=(-1, -2))
    assert free.sum() > 100
    assert error[free].max() < 2e-3  # px
    assert raw[..., POS].min() > 0 and raw[..., 0].max() < meta["world"]["width"]
    assert raw[..., 1].max() < meta["world"]["height"]
    initial_speed = scenes_of(raw)[:, 0, 0, :, VEL].norm(dim=-1)  # first frame of each scene
    assert initial_speed.min() >= meta["world"]["min_speed"] - 1e-3
    assert initial_speed.max() <= meta["world"]["max_speed"] + 1e-3
