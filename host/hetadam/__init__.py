"""hetadam: the Adam optimizer on heterogeneous hardware."""

from .optim import HetAdam, NonFiniteGradientError

__all__ = ["HetAdam", "NonFiniteGradientError"]
