"""Neural Physics Engine (Chang et al., ICLR 2017) in PyTorch."""
__version__ = "0.1.0"

from .checkpoint import load_model  # noqa: E402
from .rollout import rollout  # noqa: E402

__all__ = ["load_model", "rollout", "__version__"]
