"""Neural Physics Engine (Chang et al., ICLR 2017) in PyTorch.

    model = npe.load_model(path)                          # any checkpoint, in eval mode
    scenes = npe.simulate(model.meta, seed, num_scenes, num_frames)   # fresh normalized scenes
    states = npe.rollout(model, scenes[:, :2], steps)     # autoregressive rollout
    windows = npe.load_dataset(prefix, "test")            # a split of a generated dataset

These are imported on first use, so that importing a light module (the simulator, in each of its
worker processes) does not load torch.
"""
import importlib

from . import cli  # noqa: F401 - first, so that a Ctrl-C while torch loads is one line in the scripts

__version__ = "0.1.0"
_PUBLIC = {"load_model": "checkpoint", "rollout": "rollouts", "simulate": "data", "load_dataset": "data"}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'npe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__():
    return sorted({*globals(), *__all__})
