"""Signs of architecture collapse: the Hessian's dominant eigenvalue and cheap per-epoch statistics.

RobustDARTS (Zela et al., ICLR 2020; ``../shared/reference/methods.md`` section 3.9) showed that
the dominant eigenvalue of the Hessian of the validation loss with respect to the architecture
parameters rises before a DARTS search collapses into parameter-free cells. Their code builds the
full Hessian on one validation batch by double back-propagation, row by row, with the
architecture weight decay on its diagonal (the gradient they differentiate includes ``wd * alpha``),
and takes the largest eigenvalue.

:func:`dominant_eigenvalue` does the same for any supernet and method: exactly (the full Hessian,
symmetrised, ``eigvalsh``) when the architecture parameters are few (``exact_limit``), otherwise by
Lanczos iteration on Hessian-vector products (double backward), whose largest Ritz value converges
to the largest eigenvalue from below. :func:`es_rule` is RobustDARTS's early-stopping rule on a
sequence of eigenvalues (local averages over a window, compared with the one ``delta``
measurements earlier); this module only uses it to warn.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

# RobustDARTS's DARTS-ES constants, as in their src/utils.py and argument defaults (fact sheet 3.9).
ES_WINDOW, ES_DELTA, ES_RATIO = 5, 4, 1.3
# P-DARTS caps the normal cell at M = 2 skip connections (fact sheet 3.7): more is DARTS's collapse.
SKIP_CAP = 2


def flat_hessian(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                 weight_decay: float = 0.0) -> torch.Tensor:
    """The full Hessian (n, n) of ``loss_fn()`` with respect to ``params`` (flattened in order),
    row by row by double back-propagation, symmetrised, plus ``weight_decay`` on the diagonal."""
    g = _gradient(loss_fn(), params)
    rows = []
    for i in range(g.numel()):
        if not g[i].requires_grad:  # a parameter the loss does not use (the normal cell with --layers 2)
            rows.append(torch.zeros_like(g))
            continue
        row = torch.autograd.grad(g[i], params, retain_graph=True, allow_unused=True)
        rows.append(_flat(params, row))
    h = torch.stack(rows).double()
    h = (h + h.T) / 2
    return h + weight_decay * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)


def _flat(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def _gradient(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The flat gradient with its graph kept (zeros for parameters the loss does not use)."""
    return _flat(params, torch.autograd.grad(loss, params, create_graph=True, allow_unused=True))


def lanczos_top(hvp: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int = 30, seed: int = 0,
                dtype: torch.dtype = torch.float64, device=None) -> float:
    """The largest eigenvalue of a symmetric operator ``hvp`` on R^n by ``steps`` of Lanczos with
    full reorthogonalisation (the largest Ritz value; exact once ``steps`` reaches ``n``)."""
    steps = min(steps, n)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    q = q / torch.linalg.vector_norm(q)
    basis, alphas, betas = [q], [], []
    for k in range(steps):
        w = hvp(basis[-1]).to(dtype)
        a = torch.dot(w, basis[-1])
        alphas.append(a)
        for v in basis:  # full reorthogonalisation: Krylov vectors stay orthogonal in floating point
            w = w - torch.dot(w, v) * v
        b = torch.linalg.vector_norm(w)
        if k == steps - 1 or float(b) < 1e-10:
            break
        betas.append(b)
        basis.append(w / b)
    m = len(alphas)
    t = torch.diag(torch.stack(alphas))
    if m > 1:
        off = torch.stack(betas[: m - 1])
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(t.double()).max())


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Training-mode passes that leave no trace: BatchNorm's running statistics, torch's random
    states and the method's state (GDAS's draw count) come out as they went in."""
    from .supernet import _running_stats_frozen

    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    method = getattr(model, "method", None)
    saved = method.state_dict() if method is not None else None
    was_training = model.training
    model.train()
    try:
        with _running_stats_frozen(model):
            yield
    finally:
        model.train(was_training)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if method is not None:
            method.load_state_dict(saved)


def dominant_eigenvalue(model: nn.Module, batches: Sequence, weight_decay: float = 0.0, exact_limit: int = 64,
                        steps: int = 30, seed: int = 0) -> dict[str, float | str | int]:
    """The dominant eigenvalue of the Hessian of the mean cross-entropy over ``batches`` (each
    ``(images, labels)`` on the model's device) with respect to ``model.arch_parameters()``, plus
    ``weight_decay`` on the diagonal (RobustDARTS's). The model runs in training mode (as the
    architecture step sees it) and nothing of it changes. Exact up to ``exact_limit`` parameters,
    Lanczos with ``steps`` Hessian-vector products above."""
    params = list(model.arch_parameters())
    n = sum(p.numel() for p in params)

    def loss_fn() -> torch.Tensor:
        total = 0.0
        for x, y in batches:
            total = total + torch.nn.functional.cross_entropy(model(x), y)
        return total / len(batches)

    with _untouched(model):
        if n <= exact_limit:
            h = flat_hessian(loss_fn, params, weight_decay)
            return {"value": float(torch.linalg.eigvalsh(h).max()), "how": "exact", "parameters": n}
        g = _gradient(loss_fn(), params)

        def hvp(v: torch.Tensor) -> torch.Tensor:
            out = torch.autograd.grad(torch.dot(g, v.to(g.dtype)), params, retain_graph=True, allow_unused=True)
            return _flat(params, out).double() + weight_decay * v.double()

        value = lanczos_top(hvp, n, steps, seed, device=g.device)
        return {"value": value, "how": f"lanczos ({min(steps, n)} steps)", "parameters": n}


def es_rule(values: Sequence[float], window: int = ES_WINDOW, delta: int = ES_DELTA,
            ratio: float = ES_RATIO) -> int | None:
    """RobustDARTS's DARTS-ES rule on a sequence of eigenvalue measurements: with local averages
    over ``window`` measurements, the first index (of the measurement completing the current
    window) at which the current local average exceeds ``ratio`` times the one ``delta``
    measurements earlier; None while it does not fire."""
    for end in range(window + delta, len(values) + 1):
        current = sum(values[end - window:end]) / window
        previous = sum(values[end - window - delta:end - delta]) / window
        if previous > 0 and current / previous > ratio:
            return end - 1
    return None


def es_ratio(values: Sequence[float], window: int = ES_WINDOW, delta: int = ES_DELTA) -> float | None:
    """The latest local average over its predecessor ``delta`` measurements earlier (None until
    there are ``window + delta`` measurements, or when the earlier average is not positive)."""
    if len(values) < window + delta:
        return None
    current = sum(values[-window:]) / window
    previous = sum(values[len(values) - window - delta:len(values) - delta]) / window
    return current / previous if previous > 0 else None


def skip_connections(genotype) -> int | None:
    """Skip connections in the normal cell of a DARTS-space genotype (None for other spaces)."""
    normal = getattr(genotype, "normal", None)
    if normal is None:
        return None
    return sum(1 for op, _ in normal if op == "skip_connect")


def collapse_warnings(eigenvalues: Sequence[float], genotype) -> list[str]:
    """The signs of collapse after an epoch (the eigenvalues measured so far, the derived genotype),
    each with its threshold and source."""
    signs = []
    skips = skip_connections(genotype)
    if skips is not None and skips > SKIP_CAP:
        signs.append(f"the derived normal cell has {skips} skip connections (P-DARTS caps it at {SKIP_CAP}: more is "
                     f"DARTS's collapse into parameter-free cells)")
    rise = es_ratio(eigenvalues)
    if rise is not None and rise > ES_RATIO:
        signs.append(f"the Hessian's dominant eigenvalue rose {rise:.2f}x between local averages {ES_DELTA} "
                     f"measurements apart, above RobustDARTS's DARTS-ES threshold of {ES_RATIO}x (window {ES_WINDOW})")
    return signs


def epoch_diagnostics(model: nn.Module, genotype, primitives=None) -> dict[str, float | int]:
    """The always-on statistics of an epoch (a few softmaxes over the alphas: no measurable cost):
    per cell type the mean share of the mixing weight on parameter-free ops (pooling, skip and
    S4's noise; ``none`` excluded) and the mean entropy of the mixing weights; the derived normal
    cell's skip connections. Each edge is read with its own ops (``model.edge_ops``, see
    :mod:`darts_nas.edge_ops`; ``primitives``, one shared op list, overrides it)."""
    from .tracking import alpha_entropy, alpha_probabilities, parameter_free_weight

    out: dict[str, float | int] = {}
    for cell in model.cell_types():
        probs = alpha_probabilities(model.arch_group(f"alphas_{cell}"))
        ops = primitives if primitives is not None else model.edge_ops[cell]
        out[f"parameter_free_{cell}"] = parameter_free_weight(probs, ops)
        out[f"entropy_{cell}"] = alpha_entropy(probs)
    skips = skip_connections(genotype)
    if skips is not None:
        out["normal_skip_connections"] = skips
    return out


def es_stop(eigenvalues: Sequence[float], epochs: Sequence[int], start_epoch: int = 10, window: int = ES_WINDOW,
            delta: int = ES_DELTA, ratio: float = ES_RATIO) -> tuple[int, float] | None:
    """DARTS-ES at the latest measurement: ``(epoch to return to, ratio)`` when the local average
    of the last ``window`` eigenvalues exceeds ``ratio`` times the one ``delta`` measurements
    earlier, and that earlier average ends at ``start_epoch`` or later; the epoch returned is the
    one the earlier average ends at (RobustDARTS's code returns the genotype of that epoch).
    ``epochs[i]`` is the (1-based) epoch of ``eigenvalues[i]``."""
    rise = es_ratio(eigenvalues, window, delta)
    if rise is None or rise <= ratio:
        return None
    earlier = epochs[len(epochs) - 1 - delta]
    return (earlier, rise) if earlier >= start_epoch else None
