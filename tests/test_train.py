"""The training loop (in process, a few hundred tiny steps): it learns, logs, and checkpoints a model
that load_model rebuilds exactly."""
import csv
import json
from types import SimpleNamespace

import pytest
import torch

import npe.train
from npe import load_model
from npe.data import load_meta, load_split
from npe.models import build_model, data_config, position_step
from npe.rollouts import rollout
from npe.train import CSV_COLUMNS, position_residual_std, rolled_inputs, train, train_parser

MODERN = ["--lr", "3e-3", "--msg_dim", "32", "--enc_blocks", "1", "--dec_blocks", "1", "--dropout", "0.3",
          "--warmup_frac", "0.1", "--max_grad_norm", "0"]
RUNS = {  # name: (kind, flags on top of the script's defaults); 300 steps of 32 windows, a validation every 5
    "classic": ("classic", []),  # the paper's recipe: RMSprop, lr 3e-4, constant
    "modern": ("modern", MODERN),
    "modern under bf16 autocast": ("modern", MODERN + ["--amp", "bf16"]),
    "classic next state, pushed forward, noisy": ("classic", ["--predict", "state", "--pushforward", "2",
                                                              "--noise_std", "1e-3"]),
}
BATCH, STEPS, EVAL_EVERY = 32, 300, 5
SLOW_RUNS = {"modern under bf16 autocast"}  # bf16 autocast on a CPU: the slowest of the three


@pytest.fixture(scope="module",
                params=[pytest.param(name, marks=pytest.mark.slow if name in SLOW_RUNS else ()) for name in RUNS])
def run(request, dataset, tmp_path_factory):
    """Train one model; keep what the live model predicted (in eval mode) when it was last saved."""
    (kind, flags), out = RUNS[request.param], tmp_path_factory.mktemp("train")
    args = train_parser(kind, "test").parse_args(
        ["--dataset_prefix", str(dataset), "--ckpt_dir", str(out), "--metrics_csv", str(out / "metrics.csv"),
         "--device", "cpu", "--name", "tiny", "--batch_size", str(BATCH), "--total_samples", str(BATCH * STEPS),
         "--eval_every", str(EVAL_EVERY), *flags])
    probe = torch.load(f"{dataset}_test.pt", weights_only=True)[:64, :2]  # [64, 2, N, 5]
    outputs, save = [], npe.train.save_checkpoint

    def save_and_probe(path, model, *rest):
        training = model.training
        model.eval()
        with torch.no_grad():
            outputs.append(model(probe))
        model.train(training)
        save(path, model, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(npe.train, "save_checkpoint", save_and_probe)
        ckpt = train(args)
    with open(out / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    meta = json.loads(dataset.with_name(dataset.name + "_meta.json").read_text())
    return SimpleNamespace(name=request.param, kind=kind, ckpt=ckpt, header=header, rows=rows, probe=probe,
                           outputs=outputs[-1], meta=meta)


def test_training_lowers_the_validation_loss_below_its_first_value(run):
    val = [float(r["val_loss"]) for r in run.rows]
    assert val[-1] < val[0]


def test_metrics_csv_has_the_documented_columns(run):
    assert run.header == ["step", "samples_seen", "train_loss", "val_loss", "lr", "elapsed_s", "model",
                          "predict"] == CSV_COLUMNS


def test_metrics_csv_has_a_row_per_validation(run):
    assert [int(r["step"]) for r in run.rows] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert [int(r["samples_seen"]) for r in run.rows] == [int(r["step"]) * BATCH for r in run.rows]
    elapsed = [float(r["elapsed_s"]) for r in run.rows]
    assert elapsed == sorted(elapsed)
    for r in run.rows:
        assert float(r["lr"]) >= 0 and float(r["train_loss"]) > 0 and float(r["val_loss"]) > 0


def test_checkpoint_loads_with_weights_only_and_describes_itself(run):
    ckpt = torch.load(run.ckpt, weights_only=True)
    assert {"kind", "config", "state_dict", "meta", "samples_seen"} <= set(ckpt)
    assert ckpt["kind"] == run.kind
    assert ckpt["meta"] == run.meta
    assert ckpt["samples_seen"] == BATCH * STEPS
    assert all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())


def test_load_model_returns_a_model_in_eval_mode(run):
    model = load_model(run.ckpt)
    assert model.kind == run.kind
    assert not any(m.training for m in model.modules())


def test_load_model_reproduces_the_trained_models_outputs(run):
    with torch.no_grad():
        torch.testing.assert_close(load_model(run.ckpt)(run.probe), run.outputs, rtol=0, atol=0)


def test_a_next_state_run_saves_the_position_residuals_scale(run, dataset):
    config = torch.load(run.ckpt, weights_only=True)["config"]
    if "--predict" not in RUNS[run.name][1]:
        assert "dx_scale" not in config
        return
    meta = load_meta(dataset)
    expected = position_residual_std(load_split(dataset, "train", meta), position_step(meta))
    assert config["dx_scale"] == pytest.approx(expected) and expected > 0


def test_pushforward_inputs_are_the_models_own_rollout_from_an_earlier_window(dataset):
    meta = load_meta(dataset)
    windows = load_split(dataset, "train", meta)
    torch.manual_seed(0)
    model = build_model("classic", data_config("classic", meta, 0.1, 0.01)).eval()
    per_scene = meta["windows_per_scene"]
    indices = torch.tensor([per_scene + 5, per_scene + 5, per_scene + 1, per_scene])  # scene 1
    back = torch.tensor([2, 0, 1, 0])
    inputs = rolled_inputs(model, windows, indices, back)
    torch.testing.assert_close(inputs[1], windows[per_scene + 5, :2], rtol=0, atol=0)  # 0 steps: the truth
    torch.testing.assert_close(inputs[3], windows[per_scene, :2], rtol=0, atol=0)
    two = rollout(model, windows[per_scene + 3, :2][None], 2)[0]  # [2, N, 5]: frames 5 and 6 of window 5's inputs
    torch.testing.assert_close(inputs[0], two, rtol=0, atol=1e-6)
    one = rollout(model, windows[per_scene, :2][None], 1)[0, 0]
    torch.testing.assert_close(inputs[2], torch.stack([windows[per_scene, 1], one]), rtol=0, atol=1e-6)

