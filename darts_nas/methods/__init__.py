"""Search methods as plug-ins: each module here is one method of the DARTS family.

``METHODS`` maps a method's name (``--method``) to its :class:`~darts_nas.methods.base.Method`
subclass. Importing this package registers the built-in methods; a new method is a module that
subclasses ``Method`` and registers itself (see the README's "Adding a method").
"""

from .base import METHODS, EdgePlan, Method, Stage, node_slices
from . import darts, pc_darts, gdas, darts_minus, beta_darts, sdarts, drnas, fair_darts, sampling, pdarts  # noqa: F401,I001  (registers the built-ins, in this order)

__all__ = ["METHODS", "EdgePlan", "Method", "Stage", "node_slices"]
