"""Architecture steps of the bilevel search (DARTS paper section 2.3, REFERENCE section 3).

First order (``unrolled=False``) uses ``grad_a L_val(w, a)``. Second order (``unrolled=True``)
approximates the hypergradient through one virtual SGD step (Eq. 6-8 of the paper):

    w' = w - xi * (momentum * v + grad_w L_train(w, a) + wd * w)
    grad_a = grad_a L_val(w', a) - xi * [grad_a L_train(w+, a) - grad_a L_train(w-, a)] / (2 eps)
    w+- = w +- eps * grad_w' L_val(w', a),   eps = r / ||grad_w' L_val(w', a)||_2,  r = 0.01

Every forward pass here goes through ``torch.func.functional_call`` with copies of the BatchNorm
buffers, so the network is never copied or rebuilt and, after a step, the real weights and every
BatchNorm buffer are bit-identical to before. Only the gradients a formula needs are computed:
the first-order step never materialises weight gradients.

The architect serves every method of :mod:`darts_nas.methods` that trains its architecture
parameters by gradient: it updates whatever ``model.arch_parameters()`` holds (alphas, PC-DARTS's
betas), and adds the method's regulariser, if any, to the architecture loss.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .supernet import Supernet

Batch = Sequence[torch.Tensor]  # (images (B, C, H, W), labels (B,))


def _grads(loss: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d tensors, with zeros for tensors the loss does not use (e.g. the normal
    cell's alphas of a supernet whose every cell reduces, as with --layers 2)."""
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


class Architect:
    """Updates the supernet's alphas with Adam from first- or second-order hypergradients.

    ``w_optimizer`` is the weights' SGD optimizer: its momentum, weight decay and momentum
    buffers define the virtual step of the second-order gradient.

    ``average_gradients`` (set by :mod:`darts_nas.distributed` under torchrun) averages a list of
    gradients over the processes; every gradient a formula uses passes through it first, so each
    process computes the hypergradient of the global batch.
    """

    average_gradients: Callable[[Sequence[torch.Tensor | None]], list[torch.Tensor | None]] | None = None

    def __init__(self, model: Supernet, w_optimizer: torch.optim.SGD, lr: float = 3e-4,
                 betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 1e-3,
                 unrolled: bool = False, hessian_r: float = 1e-2,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                 regulariser: Callable[[Supernet], torch.Tensor | None] | None = None,
                 grad_clip: float | None = None) -> None:
        self.model = model
        # P-DARTS clips the architecture gradient's norm too (None or 0: no clipping)
        self.grad_clip = grad_clip
        # A method's extra term of the architecture loss (a function of the architecture
        # parameters only), added to the validation loss whose gradient the step follows.
        self.regulariser = regulariser
        # Context of the forward passes (bf16 autocast with --amp); the finite-difference
        # Hessian-vector product runs in float32 regardless.
        self.autocast = autocast
        self.w_optimizer = w_optimizer
        self.unrolled = unrolled
        self.hessian_r = hessian_r
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=betas,
                                          weight_decay=weight_decay)
        self._names = [n for n, _ in model.named_weights()]
        self._weights = [p for _, p in model.named_weights()]

    # -- functional evaluation -------------------------------------------------------------
    def loss(self, batch: Batch, weights: Sequence[torch.Tensor] | None = None, float32: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the supernet on ``batch`` with ``weights`` in place of the real ones
        (the real ones when None). BatchNorm buffers are copied, never updated. ``float32``
        turns autocast off for this pass."""
        x, y = batch
        state = {n: b.clone() for n, b in self.model.named_buffers()}
        if weights is not None:
            state.update(zip(self._names, weights))
        # Recomputing activations in the backward pass would see the real weights again, not
        # the swapped-in ones: passes with other weights keep their activations.
        keep = self.model.recompute_disabled() if weights is not None else contextlib.nullcontext()
        with torch.autocast(x.device.type, enabled=False) if float32 else self.autocast(), keep:
            logits = functional_call(self.model, state, (x,))
            return F.cross_entropy(logits, y), logits

    # -- gradients ---------------------------------------------------------------------------
    def _averaged(self, grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        return list(grads) if self.average_gradients is None else self.average_gradients(grads)

    def _with_regulariser(self, loss: torch.Tensor) -> torch.Tensor:
        term = None if self.regulariser is None else self.regulariser(self.model)
        return loss if term is None else loss + term

    def first_order_grad(self, val_batch: Batch) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        loss, logits = self.loss(val_batch)
        grads = _grads(self._with_regulariser(loss), self.model.arch_parameters())
        return self._averaged(grads), loss.detach(), logits.detach()

    def virtual_step(self, train_batch: Batch, xi: float) -> list[torch.Tensor]:
        """w' = w - xi * (momentum * v + grad_w L_train(w, a) + wd * w), detached."""
        group = self.w_optimizer.param_groups[0]
        momentum, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        loss, _ = self.loss(train_batch)
        grads = self._averaged(torch.autograd.grad(loss, self._weights, allow_unused=True))
        virtual = []
        with torch.no_grad():
            for p, g in zip(self._weights, grads):
                d = wd * p if g is None else g + wd * p
                buf = self.w_optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None and momentum:
                    d = d + momentum * buf
                virtual.append(p - xi * d)
        return virtual

    def hessian_vector_product(self, vector: Sequence[torch.Tensor], train_batch: Batch
                               ) -> list[torch.Tensor]:
        """Central finite difference of grad_a L_train around the ORIGINAL weights w:
        (grad_a L_train(w + eps v, a) - grad_a L_train(w - eps v, a)) / (2 eps), which
        approximates (d^2 L_train / da dw) v (Eq. 8 of the paper)."""
        alphas = self.model.arch_parameters()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in vector]))
        if norm == 0:
            return [torch.zeros_like(a) for a in alphas]
        eps = self.hessian_r / norm
        with torch.no_grad():
            w_plus = [p + eps * v for p, v in zip(self._weights, vector)]
        g_plus = _grads(self.loss(train_batch, w_plus, float32=True)[0], alphas)
        del w_plus
        with torch.no_grad():
            w_minus = [p - eps * v for p, v in zip(self._weights, vector)]
        g_minus = _grads(self.loss(train_batch, w_minus, float32=True)[0], alphas)
        return [(gp - gm) / (2 * eps) for gp, gm in zip(g_plus, g_minus)]

    def unrolled_grad(self, train_batch: Batch, val_batch: Batch, xi: float
                      ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        alphas = self.model.arch_parameters()
        virtual = [w.requires_grad_(True) for w in self.virtual_step(train_batch, xi)]
        loss, logits = self.loss(val_batch, virtual)
        # grad_w' is averaged with grad_alpha, before eps and w+- are derived from it.
        grads = self._averaged(_grads(self._with_regulariser(loss), alphas + virtual))
        d_alpha, d_virtual = grads[: len(alphas)], grads[len(alphas):]
        del virtual, grads
        implicit = self._averaged(self.hessian_vector_product(d_virtual, train_batch))
        return [da - xi * h for da, h in zip(d_alpha, implicit)], loss.detach(), logits.detach()

    # -- the step ----------------------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Batch, xi: float) -> dict[str, torch.Tensor]:
        """One Adam step on the alphas. ``xi`` is the weights' current learning rate.

        Returns the architecture-half loss and logits (at w for first order, at w' for second).
        """
        if self.unrolled:
            grads, loss, logits = self.unrolled_grad(train_batch, val_batch, xi)
        else:
            grads, loss, logits = self.first_order_grad(val_batch)
        self.optimizer.zero_grad(set_to_none=True)
        for a, g in zip(self.model.arch_parameters(), grads):
            a.grad = g
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.arch_parameters(), self.grad_clip)
        self.optimizer.step()
        return {"loss": loss, "logits": logits}
