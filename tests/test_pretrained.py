"""The shipped checkpoints load, beat the constant-velocity baseline (the paper-experiment NPE: both baselines,
and chance at mass inference), and the README and docs show their results."""
import pytest

from conftest import REPO
from npe import load_model
from npe.config import MASS, World
from npe.data import simulate
from npe.mass import collides, collision_reach, infer_mass
from npe.rollouts import ConstantVelocity, compare

PRETRAINED = REPO / "pretrained"


@pytest.fixture(scope="module")
def table():
    models = {kind: load_model(PRETRAINED / f"npe_{kind}.pt", kind=kind) for kind in ("classic", "modern")}
    models["next_state"] = load_model(PRETRAINED / "npe_next_state.pt", kind="classic")
    models["constant_velocity"] = ConstantVelocity(models["classic"].pos_step)
    scenes = simulate(models["classic"].meta, seed=4242, num_scenes=40, num_frames=12, workers=1)
    return compare(models, scenes, 10).set_index(["model", "step"])


@pytest.mark.parametrize("kind", ["classic", "modern", "next_state"])
def test_shipped_checkpoint_beats_constant_velocity_at_step_10(table, kind):
    assert table.loc[(kind, 10), "cosine_similarity"] > table.loc[("constant_velocity", 10), "cosine_similarity"]


def test_the_shipped_next_state_model_predicts_positions():
    assert load_model(PRETRAINED / "npe_next_state.pt").dx_scale > 0
    assert load_model(PRETRAINED / "npe_classic.pt").dx_scale == 0


@pytest.mark.parametrize("generated, shown_in", [("results.md", "README.md"), ("results_physics.md", "README.md"),
                                                 ("results_frames.md", "docs/training.md")])
def test_results_tables_are_the_generated_ones(generated, shown_in):
    assert (PRETRAINED / generated).read_text().strip() in (REPO / shown_in).read_text()


PAPER = PRETRAINED / "paper"


@pytest.fixture(scope="module")
def paper_models():
    return {name: load_model(PAPER / f"{name}.pt") for name in ("npe", "npe_modern", "np", "lstm")}


@pytest.fixture(scope="module")
def seven_ball_cosine(paper_models):
    """Cosine similarity per (model, step) of every paper model in fresh scenes of 7 balls (trained: 3 to 5)."""
    scenes = simulate(paper_models["npe"].meta, seed=4242, num_scenes=30, num_frames=12, workers=1,
                          num_balls=(7,), layouts=("O",))
    return compare(paper_models, scenes, 10).set_index(["model", "step"]).cosine_similarity


@pytest.mark.parametrize("npe", ["npe", "npe_modern"])
def test_shipped_npe_beats_both_baselines_on_more_balls_than_it_was_trained_on(seven_ball_cosine, npe):
    cos = seven_ball_cosine
    assert cos[npe, 10] > cos["np", 10] and cos[npe, 10] > cos["lstm", 10]


@pytest.fixture(scope="module")
def collision_scenes(paper_models):
    """Fresh scenes of 4 balls in which ball 0 collides with another, and the training world's masses."""
    meta = paper_models["npe"].meta
    scenes = simulate(meta, seed=4242, num_scenes=100, num_frames=20, workers=1, num_balls=(4,), layouts=("O",))
    return scenes[collides(scenes, 0, collision_reach(meta))], World.from_dict(meta["world"]).masses


@pytest.mark.parametrize("npe", ["npe", "npe_modern"])
def test_shipped_npe_infers_masses_better_than_chance(paper_models, collision_scenes, npe):
    scenes, masses = collision_scenes
    guess = infer_mass(paper_models[npe], scenes, 0, masses)
    assert len(scenes) > 20 and (guess == scenes[:, 0, 0, MASS]).float().mean() > 1.5 / len(masses)


@pytest.mark.parametrize("table", ["generalization_balls.md", "generalization_layouts.md", "mass_inference.md"])
def test_readme_shows_the_paper_experiment_tables(table):
    assert (PAPER / table).read_text().strip() in (REPO / "docs" / "experiments.md").read_text()
