"""Animated rollouts: render --gif writes a looping GIF of every frame through pillow, the README opens with
one (small enough for a web page), and the seed's render command names its videos as the seed documents."""
import pytest
from PIL import Image

from conftest import REPO, cli
from npe.render import START_FRAMES

RENDER = "render_rollout_triple.py"
NEXT_STATE, CLASSIC, MODERN = (REPO / "pretrained" / f"npe_{n}.pt" for n in ("next_state", "classic", "modern"))


def test_render_gif_writes_a_looping_gif_of_the_start_and_every_rollout_step(tmp_path):
    status, lines = cli(RENDER, "--ckpts", NEXT_STATE, "--num_scenes", 1, "--rollout_steps", 3, "--gif",
                        "--out_dir", tmp_path)
    assert status == 0, lines
    [gif] = tmp_path.iterdir()
    assert gif.name == "rollout_gt_npe_next_state_scene0.gif"
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == START_FRAMES + 3 and image.info["loop"] == 0


def test_the_readme_animation_is_a_gif_under_a_megabyte():
    gif = REPO / "pretrained" / "rollout_scene0.gif"
    assert "](pretrained/rollout_scene0.gif)" in (REPO / "README.md").read_text()
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames > 50
    assert gif.stat().st_size < 1_000_000


@pytest.mark.slow
def test_the_seeds_two_flags_label_the_models_classic_and_modern(tmp_path):
    status, lines = cli(RENDER, "--classic_ckpt", CLASSIC, "--modern_ckpt", MODERN, "--num_scenes", 1,
                        "--rollout_steps", 2, "--out_dir", tmp_path)
    assert status == 0, lines
    assert [p.name for p in tmp_path.iterdir()] == ["rollout_gt_classic_modern_scene0.mp4"]
