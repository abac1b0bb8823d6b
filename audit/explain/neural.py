"""Inside the built-in network: gradient attributions, hidden-unit activity, and Monte Carlo dropout uncertainty.

These need the network itself (a :class:`~audit.model.adapter.NetPredictor`), not only a predict function.
Attributions are computed on the first-layer input (numerics followed by the categorical embeddings, see
:meth:`TabularNet.embed`) and summed back to one value per raw feature: a categorical's attribution is the sum over
its embedding dimensions. All computations run in float64 on a copy of the network, so the completeness check of
Integrated Gradients measures the integration, not float32 rounding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from audit.explain._network import columns_per_feature, double_net, embedded
from audit.model.adapter import NetPredictor


def reference_row(training: np.ndarray, categorical_mask: np.ndarray) -> np.ndarray:
    """The attribution baseline in code space: numerics at their training median, categoricals at their mode.

    Medians rather than means: a mean can be a value almost no row has (Adult's mean capital gain is 1,077 where
    92% of rows have 0), which would put the baseline far from the data.
    """
    t = np.asarray(training, dtype=np.float64)
    ref = np.nanmedian(t, axis=0)
    for j in np.flatnonzero(categorical_mask):
        vals, counts = np.unique(t[:, j], return_counts=True)
        ref[j] = vals[np.argmax(counts)]
    return ref


@dataclass(frozen=True)
class GradientAttributions:
    """Result of :func:`integrated_gradients`.

    Attributes
    ----------
    attributions : ndarray (n, n_features)
        Integrated Gradients per raw feature, in probability units.
    saliency : ndarray (n, n_features)
        L2 norm of the probability's gradient over each feature's input columns, at the instance.
    predictions, baseline_prediction : ndarray (n,), float
    completeness_error : ndarray (n,)
        ``|sum(attributions) - (f(x) - f(baseline))| / max(|f(x) - f(baseline)|, 1e-6)``.
    steps : ndarray (n,)
        Points on the path evaluated per row.
    """

    attributions: np.ndarray
    saliency: np.ndarray
    predictions: np.ndarray
    baseline_prediction: float
    completeness_error: np.ndarray
    steps: np.ndarray


def _path_points(net, e, e0, rows: np.ndarray, alphas: np.ndarray):
    """Logit, its gradient and the ReLU on/off pattern at ``e0 + alpha (e - e0)`` for each (row, alpha)."""
    r = torch.from_numpy(rows)
    z = (e0[r] + torch.from_numpy(alphas)[:, None] * (e[r] - e0[r])).requires_grad_(True)
    h, masks = z, []
    for layer in net.body:
        if isinstance(layer, nn.ReLU):
            masks.append(h > 0)
        h = layer(h)
    logit = net.head(h).squeeze(-1)
    (g,) = torch.autograd.grad(logit.sum(), z)
    pattern = torch.cat(masks, dim=1).numpy() if masks else np.zeros((len(rows), 0), dtype=bool)
    return logit.detach().numpy(), g.numpy(), pattern


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _ig_piecewise(net, e, e0, steps: int, levels: int, split: int):
    """Integrated Gradients of sigmoid(logit) for a ReLU network, segment by segment.

    Along the straight path the logit is piecewise linear: on a segment where no ReLU switches (same on/off pattern
    at both ends) its gradient ``g`` is constant and the path integral of the probability's gradient is exactly
    ``(e - e0) * g * (sigmoid(l_b) - sigmoid(l_a)) * (b - a) / (l_b - l_a)``. Segments whose pattern changes are
    split ``split`` ways, ``levels`` times; what is left uses the trapezoidal rule. Returns attributions (n, D) and
    the points evaluated per row.
    """
    n, d = e.shape
    diff = (e - e0).numpy()
    attr = np.zeros((n, d))
    grid = np.linspace(0.0, 1.0, steps + 1)
    logit, g, pat = _path_points(net, e, e0, np.repeat(np.arange(n), steps + 1), np.tile(grid, n))
    evaluated = np.full(n, steps + 1)
    L = logit.reshape(n, steps + 1)
    G = g.reshape(n, steps + 1, d)
    P = pat.reshape(n, steps + 1, -1)
    A = np.tile(grid, (n, 1))
    seg_row = np.repeat(np.arange(n), steps)
    for level in range(levels + 1):
        m, k1 = L.shape
        la, lb = L[:, :-1].ravel(), L[:, 1:].ravel()
        ga, gb = G[:, :-1].reshape(-1, d), G[:, 1:].reshape(-1, d)
        linear = (P[:, :-1] == P[:, 1:]).all(axis=2).ravel()
        width = (A[:, 1:] - A[:, :-1]).ravel()
        dl = lb - la
        small = np.abs(dl) < 1e-12
        sa, sb = _sigmoid(la), _sigmoid(lb)
        factor = np.where(small, sa * (1 - sa) * width, (sb - sa) * width / np.where(small, 1.0, dl))
        contrib = ga * factor[:, None]
        last = level == levels
        if last:  # switching points left unresolved: trapezoidal rule on the probability's gradient
            trap = ((sa * (1 - sa))[:, None] * ga + (sb * (1 - sb))[:, None] * gb) / 2 * width[:, None]
            contrib = np.where(linear[:, None], contrib, trap)
        done = np.ones_like(linear) if last else linear
        np.add.at(attr, seg_row[done], diff[seg_row[done]] * contrib[done])
        if last or done.all():
            break
        # split every segment with a switching ReLU into `split` pieces
        todo = np.flatnonzero(~done)
        sr = seg_row[todo]
        a0 = A[:, :-1].ravel()[todo]
        a1 = A[:, 1:].ravel()[todo]
        inner = a0[:, None] + (a1 - a0)[:, None] * (np.arange(1, split) / split)[None, :]
        li, gi, pi = _path_points(net, e, e0, np.repeat(sr, split - 1), inner.ravel())
        np.add.at(evaluated, sr, split - 1)
        t = len(todo)
        L = np.column_stack([la[todo], li.reshape(t, split - 1), lb[todo]])
        G = np.concatenate([ga[todo][:, None], gi.reshape(t, split - 1, d), gb[todo][:, None]], axis=1)
        Pf = P[:, :-1].reshape(m * (k1 - 1), -1)
        Pb = P[:, 1:].reshape(m * (k1 - 1), -1)
        P = np.concatenate([Pf[todo][:, None], pi.reshape(t, split - 1, -1), Pb[todo][:, None]], axis=1)
        A = np.column_stack([a0, inner, a1])
        seg_row = np.repeat(sr, split)
    return attr, evaluated


def integrated_gradients(
    pred: NetPredictor,
    X: np.ndarray,
    baseline: np.ndarray,
    *,
    steps: int = 32,
    levels: int = 8,
    split: int = 8,
) -> GradientAttributions:
    """Integrated Gradients of the positive-class probability, from ``baseline`` to each row of ``X``.

    The straight path is taken in the network's embedded input space (a categorical moves from the baseline level's
    embedding to its own). The integral is computed segment by segment: exactly where no ReLU switches, by
    subdivision where one does (see :func:`_ig_piecewise`), so the completeness error measures only the switching
    points left unresolved.

    Parameters
    ----------
    pred : NetPredictor
    X : ndarray (n, n_features)
        Rows in code space.
    baseline : ndarray (n_features,)
        Reference row in code space (see :func:`reference_row`).
    steps : int, default 32
        Initial segments of the path.
    levels, split : int, default 8 and 8
        Segments with a switching ReLU are split ``split`` ways, up to ``levels`` times.

    Returns
    -------
    GradientAttributions
    """
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    net = double_net(pred)
    cols = columns_per_feature(pred)
    e = embedded(net, pred, X)
    e0 = embedded(net, pred, np.asarray(baseline, dtype=np.float64)[None, :]).expand_as(e).contiguous()
    with torch.no_grad():
        f_x = torch.sigmoid(net.forward_embedded(e)).numpy()
        f_b = float(torch.sigmoid(net.forward_embedded(e0[:1]))[0])
    delta = f_x - f_b
    attr_e, used = _ig_piecewise(net, e, e0, steps, levels, split)
    err = np.abs(attr_e.sum(axis=1) - delta) / np.maximum(np.abs(delta), 1e-6)
    attributions = np.column_stack([attr_e[:, c].sum(axis=1) for c in cols])
    z = e.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.sigmoid(net.forward_embedded(z)).sum(), z)
    g = g.numpy()
    saliency = np.column_stack([np.linalg.norm(g[:, c], axis=1) for c in cols])
    return GradientAttributions(attributions, saliency, f_x, f_b, err, used)


@dataclass(frozen=True)
class LayerActivity:
    """Per hidden layer: activation share per unit and activation samples."""

    name: str
    active_share: np.ndarray  # (units,): share of rows where the unit's ReLU output is > 0
    values: np.ndarray  # (rows, units): activations of the rows passed

    @property
    def dead(self) -> np.ndarray:
        """Units never active on the rows passed."""
        return self.active_share == 0

    @property
    def always_active(self) -> np.ndarray:
        """Units active on every row (they act as linear units: the ReLU never cuts)."""
        return self.active_share == 1


def hidden_activations(pred: NetPredictor, X: np.ndarray, *, batch_size: int = 16384) -> list[LayerActivity]:
    """ReLU outputs of every hidden layer for the rows of ``X`` (code space), in eval mode."""
    net = pred.net.eval()
    relus = [(f"hidden {i + 1} ({m_prev.out_features} units)", m) for i, (m_prev, m) in enumerate(_relu_pairs(net))]
    store: dict[int, list[np.ndarray]] = {i: [] for i in range(len(relus))}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, i=i: store[i].append(out.detach().numpy().copy()))
        for i, (_, m) in enumerate(relus)
    ]
    try:
        with torch.inference_mode():
            for s in range(0, len(X), batch_size):
                x_num, x_cat = pred.tensors(X[s : s + batch_size])
                net(x_num, x_cat)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for i, (name, _) in enumerate(relus):
        v = np.concatenate(store[i])
        out.append(LayerActivity(name, (v > 0).mean(axis=0), v))
    return out


def _relu_pairs(net) -> list[tuple[nn.Linear, nn.ReLU]]:
    mods = list(net.body)
    return [
        (mods[i - 1], m) for i, m in enumerate(mods) if isinstance(m, nn.ReLU) and isinstance(mods[i - 1], nn.Linear)
    ]


@dataclass(frozen=True)
class DropoutUncertainty:
    """Result of :func:`mc_dropout`: per-row mean, standard deviation and interval of the predicted probability."""

    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    passes: int
    dropout: float


def mc_dropout(
    pred: NetPredictor, X: np.ndarray, *, passes: int = 30, level: float = 0.9, random_state: int = 0
) -> DropoutUncertainty:
    """Monte Carlo dropout: ``passes`` stochastic forward passes with dropout on (everything else in eval mode).

    The global torch RNG is seeded inside a forked RNG state, so the caller's random state is untouched and the same
    seed gives the same numbers. A network without dropout gives zero spread.
    """
    net = copy.deepcopy(pred.net).eval()
    p_drop = 0.0
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.train()
            p_drop = max(p_drop, m.p)
    x_num, x_cat = pred.tensors(X)
    draws = np.empty((passes, len(X)))
    with torch.random.fork_rng(), torch.inference_mode():
        torch.manual_seed(random_state)
        for t in range(passes):
            draws[t] = torch.sigmoid(net(x_num, x_cat)).double().numpy()
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a], axis=0)
    return DropoutUncertainty(draws.mean(axis=0), draws.std(axis=0), lo, hi, passes, p_drop)
