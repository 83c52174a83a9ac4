"""darts-nas: differentiable neural architecture search (DARTS and successors) in PyTorch."""

__version__ = "0.1.0"
