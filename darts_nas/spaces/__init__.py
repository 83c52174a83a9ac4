"""Search spaces as plug-ins: each module here builds the supernet of one space.

``SEARCH_SPACES`` maps a space's name (``--space``) to a builder (with its op registry as ``.ops``)
``(C, num_classes, layers, steps, in_channels, primitives, method) -> supernet``. A supernet
exposes ``forward(x) -> logits``, ``arch_groups()`` (its architecture parameters by name),
``arch_parameters()``, ``weights()``, ``named_weights()``, ``cell_types()`` and ``genotype()``,
and asks its method for every edge's plan; the run loop needs nothing else. The NAS-Bench-201
space plugs in here without touching the run loop.
"""

from ..registry import Registry

SEARCH_SPACES: Registry = Registry("search space")

# registers the built-in spaces, in this order
from . import darts, nas_bench_201, robust_darts, proxyless  # noqa: E402,F401,I001

__all__ = ["SEARCH_SPACES"]
