"""Neural Physics Engine (Chang et al., ICLR 2017) in PyTorch.

`npe.load_model` and `npe.rollout` are imported on first use, so that importing a light module (the
simulator, in each of its worker processes) does not load torch.
"""
__version__ = "0.1.0"
__all__ = ["load_model", "rollout", "__version__"]


def __getattr__(name):
    if name == "load_model":
        from .checkpoint import load_model
        return load_model
    if name == "rollout":
        from .rollout import rollout
        return rollout
    raise AttributeError(f"module 'npe' has no attribute {name!r}")
