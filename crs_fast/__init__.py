"""crs_fast: fused RLHF kernels (C++ for the CPU, Triton for NVIDIA GPUs) and an implicit-feedback
RLHF toolkit for LLM conversational recommenders. The ops are re-exported from crs_fast.ops."""

from . import ops
from .ops import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [*ops.__all__, "__version__"]
