"""The shipped checkpoints load, beat the constant-velocity baseline, and the README shows their results."""
import pytest

from conftest import REPO
from npe import load_model
from npe.data import scene_frames
from npe.rollout import ConstantVelocity, compare

PRETRAINED = REPO / "pretrained"


@pytest.fixture(scope="module")
def table():
    models = {kind: load_model(PRETRAINED / f"npe_{kind}.pt", kind=kind) for kind in ("classic", "modern")}
    models["constant_velocity"] = ConstantVelocity(models["classic"].pos_step)
    scenes = scene_frames(models["classic"].meta, seed=4242, num_scenes=40, num_frames=12, workers=1)
    return compare(models, scenes, 10).set_index(["model", "step"])


@pytest.mark.parametrize("kind", ["classic", "modern"])
def test_shipped_checkpoint_beats_constant_velocity_at_step_10(table, kind):
    assert table.loc[(kind, 10), "cosine_similarity"] > table.loc[("constant_velocity", 10), "cosine_similarity"]


def test_readme_results_table_is_the_generated_one():
    generated = (PRETRAINED / "results.md").read_text()
    assert generated.strip() in (REPO / "README.md").read_text()
