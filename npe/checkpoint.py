"""Checkpoints that describe themselves: model kind, constructor config, weights, the dataset's
metadata (world, dt, state_scale) and samples seen. Plain tensors and containers only, so they load
with torch.load(..., weights_only=True)."""
import math
from pathlib import Path

import torch

from .cli import NPEError, checkpoint_paths
from .config import CHECKPOINT_FORMAT, MAX_MODEL_SIZE, MAX_PARAMETERS
from .data import check_meta
from .files import first_line, load_torch, save_torch
from .models import MODELS, build_model

TRAIN_HINT = "train one with train_npe_4ball.py or train_npe_4ball_modern.py, or fix the path"


def save_checkpoint(path, model, config, meta, samples_seen, args=None, train_state=None):
    """train_state (optimizer, schedule, RNG, batch order, metrics so far) makes it resumable."""
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "kind": model.kind,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
        "samples_seen": samples_seen,
        "args": args or {},
    }
    if train_state is not None:
        ckpt["train_state"] = train_state
    save_torch(ckpt, path)


def load_checkpoint(path, kind=None):
    """The checkpoint dict, checked; `kind` ("classic" / "modern") if the caller needs one."""
    ckpt = load_torch(path, "checkpoint", TRAIN_HINT)
    if not isinstance(ckpt, dict) or ckpt.get("kind") not in MODELS or "state_dict" not in ckpt:
        raise NPEError(f"{path} is not an NPE checkpoint ({TRAIN_HINT})")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise NPEError(f"{path} has checkpoint format {ckpt.get('format')}, this code reads format "
                       f"{CHECKPOINT_FORMAT}; train it again with this version")
    if kind and ckpt["kind"] != kind:
        raise NPEError(f"{path} holds a {ckpt['kind']} model, but --{kind}_ckpt takes a {kind} NPE "
                       f"(pass it with --ckpts)")
    if problem := checkpoint_problem(ckpt):
        raise NPEError(f"{path} is not a usable checkpoint: {problem} ({TRAIN_HINT})")
    check_meta(ckpt.get("meta"), path, TRAIN_HINT)  # the dataset metadata it carries, checked as a dataset's
    return ckpt


def shown(value):
    """A value of a crafted file, fit for one line of a message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def finite_number(value, positive=False):
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (value > 0 or not positive))


def checkpoint_problem(ckpt):
    """What is wrong with a loaded checkpoint dict's config or weights, naming the field; None if nothing. A
    crafted file can load with weights_only and still hold a config of text or NaN weights."""
    config, weights = ckpt.get("config"), ckpt["state_dict"]
    if not isinstance(config, dict):
        return f"config is a {type(config).__name__}, not a dict"
    if bad := [k for k, v in config.items() if not (finite_number(v) or isinstance(v, list) and v
                                                     and all(finite_number(x) for x in v))]:
        return f"config field {shown(bad[0])} is {shown(config[bad[0]])}, not a finite number (or a list of them)"
    if large := [k for k, v in config.items() if isinstance(v, int) and v > MAX_MODEL_SIZE]:
        return (f"config field {shown(large[0])} is {config[large[0]]:,}, more than any size of a model "
                f"({MAX_MODEL_SIZE:,})")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "state_dict is not a dict of tensors"
    if bad := [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]:
        return f"weights {shown(bad[0])} hold non-finite values (NaN or inf)"
    return None


def build_checked(kind, config, weights=None, source="the size flags"):
    """The model of `kind` with `config`, built only once it is known to fit: first on the meta device, which
    allocates nothing, where its parameters are counted and, given a checkpoint's `weights`, their names and
    shapes compared with the model's; then for real, with `weights` loaded. Else one NPEError naming `source`."""
    try:
        with torch.device("meta"):
            skeleton = build_model(kind, config)
    except (TypeError, RuntimeError, KeyError, ValueError) as err:
        raise NPEError(f"{source} does not match its model config: {first_line(err)}") from None
    if (parameters := sum(p.numel() for p in skeleton.parameters())) > MAX_PARAMETERS:
        raise NPEError(f"{source} asks for a {kind} model of {parameters:,} parameters, more than the "
                       f"{MAX_PARAMETERS:,} this code builds; use smaller sizes")
    if weights is not None:
        shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        if differ := sorted(shapes.keys() ^ weights.keys()) or [k for k in shapes if shapes[k] != weights[k].shape]:
            key = differ[0]
            model, file = (f"{shapes[key]}" if key in shapes else "absent",
                           f"{tuple(weights[key].shape)}" if key in weights else "absent")
            raise NPEError(f"{source} does not match its model config: tensor {shown(key)} is {model} in the model "
                           f"its config builds, {file} in the file")
    model = build_model(kind, config)
    if weights is not None:
        model.load_state_dict(weights)
    return model


def load_model(path, device="cpu", kind=None):
    """The model of any checkpoint, on `device`, in eval mode; its dataset metadata is `model.meta`."""
    ckpt = load_checkpoint(path, kind)
    model = build_checked(ckpt["kind"], ckpt["config"], ckpt["state_dict"], str(path))
    model.meta, model.path = ckpt["meta"], Path(path)
    return model.to(device).eval()


def same_world(metas, paths):
    """Checkpoints (and datasets) used side by side must share one world; returns the first metadata.
    A mismatch names each field that differs, with both values."""
    first = metas[0]["world"]
    for path, meta in zip(paths[1:], metas[1:]):
        world = meta["world"]
        if differ := [k for k in sorted(first.keys() | world.keys()) if first.get(k) != world.get(k)]:
            fields = ", ".join(f"{k} {world.get(k)} vs {first.get(k)}" for k in differ)
            raise NPEError(f"{path} comes from another world than {paths[0]} ({fields}); use checkpoints "
                           f"and data made with the same settings")
    return metas[0]


def runnable(models, scenes, label):
    """The models {name: model} that can run scenes [S, F, N, 5]; says which are left out and why (an LSTM
    has a fixed number of input slots, the paper's model a fixed set of masses)."""
    why = {name: m.refuses(scenes) for name, m in models.items()}
    for name, reason in why.items():
        if reason:
            print(f"{label}: {name} skipped: {reason}")
    return {name: m for name, m in models.items() if not why[name]}


def load_models(args):
    """The checkpoints named by cli.add_checkpoint_flags' flags, trained in one world -> ({label: model},
    that world's metadata). Each model's file is `model.path`."""
    models = {label: load_model(path, kind=kind) for label, path, kind in checkpoint_paths(args)}
    return models, same_world([m.meta for m in models.values()], [m.path for m in models.values()])


def describe_models(models):
    """"label (path), ..." of models {label: model} loaded by load_model."""
    return ", ".join(f"{label} ({model.path})" for label, model in models.items())
