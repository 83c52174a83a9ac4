"""DARTS (Liu, Simonyan and Yang, ICLR 2019): the defaults of :class:`~darts_nas.methods.base.Method`.

Every edge computes all candidate ops on all its channels and mixes them with ``softmax(alpha)``;
nodes sum their edges; the architecture step is first order, or second order with ``--unrolled``
(:mod:`darts_nas.architect`); the genotype keeps each node's two strongest edges (REFERENCE section 2).
"""

from __future__ import annotations

from .base import METHODS, Method


@METHODS.register("darts")
class Darts(Method):
    name = "darts"
    title = "DARTS"
