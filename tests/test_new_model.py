"""Adding a model kind means writing its class and nothing else: a class defined here trains through the
training script's parser with its own size flag, and its checkpoint loads, rolls out, renders, and runs in
the comparison and mass inference."""
from argparse import Namespace

import pytest
import torch
from torch import nn

from conftest import TINY_TRAINING
from npe.checkpoint import load_models
from npe.cli import NPEError, positive_int
from npe.data import simulate
from npe.mass import infer_mass
from npe.models import FEATURES, MODELS, Dynamics
from npe.render import render_rollouts
from npe.rollouts import compare, rollout
from npe.train import train, train_parser


@pytest.fixture(scope="module")
def new_kind():
    """A model kind of its own: a small MLP of each ball's two states, registered while the tests run."""
    class Drift(Dynamics):
        kind, run_name = "drift_test", "drift_test_run"
        flags = {"width": (positive_int, "hidden units")}

        def __init__(self, dv_scale, pos_step, width=8):
            super().__init__(dv_scale, pos_step)
            self.net = nn.Sequential(nn.Linear(FEATURES, width), nn.ReLU(), nn.Linear(width, 2))

        def delta(self, frames):
            b, _, n, _ = frames.shape
            return self.net(frames.permute(0, 2, 1, 3).reshape(b, n, FEATURES))

    yield Drift
    MODELS.pop(Drift.kind)


def flags(dataset, folder, *extra):
    return [*map(str, ["--dataset_prefix", dataset, "--ckpt_dir", folder, "--metrics_csv", folder / "m.csv",
                       *TINY_TRAINING, *extra])]


@pytest.fixture(scope="module")
def trained(new_kind, dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("new_kind")
    return train(train_parser("classic", "test").parse_args(flags(dataset, folder, "--model", "drift_test",
                                                                  "--width", 5)))


def test_a_new_kind_trains_under_its_run_name_with_its_size_flag(new_kind, trained):
    models, _ = load_models(Namespace(ckpts=[trained], labels=None))
    assert trained.name == "drift_test_run.pt"
    assert isinstance(models["drift_test_run"], new_kind) and models["drift_test_run"].net[0].out_features == 5


def test_a_new_kinds_size_flag_is_refused_for_another_model(new_kind, dataset, tmp_path):
    args = train_parser("classic", "test").parse_args(flags(dataset, tmp_path, "--width", 5))
    with pytest.raises(NPEError, match="--width is a flag of the drift_test model"):
        train(args)


def test_a_new_kinds_checkpoint_rolls_out_renders_compares_and_infers_masses(trained, tmp_path):
    models, meta = load_models(Namespace(ckpts=[trained], labels=["drift"]))
    scenes = simulate(meta, seed=99, num_scenes=3, num_frames=6, workers=1)  # [3, 6, 4, 5]
    states = rollout(models["drift"], scenes[:, :2], 4)
    assert states.shape == (3, 4, 4, 5) and torch.isfinite(states).all()
    table = compare(models, scenes, 4)
    assert set(table.model) == {"drift"} and table.cosine_similarity.notna().all()
    guesses = infer_mass(models["drift"], scenes, 0, (1.0, 2.0))
    assert set(guesses.tolist()) <= {1.0, 2.0}
    render_rollouts({"truth": scenes[0], "drift": torch.cat([scenes[0, :2], states[0]])}, meta, tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").stat().st_size > 0


def test_a_kind_without_a_position_output_refuses_to_predict_states(new_kind, dataset, tmp_path):
    args = train_parser("classic", "test").parse_args(flags(dataset, tmp_path, "--model", "drift_test",
                                                            "--predict", "state"))
    with pytest.raises(NPEError, match="predicts velocities only"):
        train(args)
