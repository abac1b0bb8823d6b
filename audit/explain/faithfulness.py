"""Are the explanations faithful to the model? Deletion and insertion curves, the randomisation check, rank agreement.

**Deletion and insertion** (Petsiuk et al. 2018, for tabular rows): for a row ``x`` with attributions ``phi``, let
``s`` be the sign of ``f(x) - f_bg`` (``f_bg`` the model's mean output on the background rows) and order the features
by ``s * phi`` descending: first the features that pushed this row's score where it is. Deleting the first ``k`` means
giving them a background row's values (averaged over the background rows); inserting them means starting from a
background row and giving it ``x``'s values for those ``k`` features. Each curve is ``s * (f(.) - f_bg)``: deletion starts
at the row's deviation ``|f(x) - f_bg|`` and ends at 0, insertion the reverse. The area under each (the mean over
``k = 0 .. F``), averaged over rows and divided by the mean deviation, summarises it: a faithful ordering gives a
*low* deletion area and a *high* insertion area (1 would be the whole deviation at once). A random ordering is the yardstick: a method whose deletion area is not significantly below random's
(paired over rows) is no better than chance at telling what drives the score.

**Randomisation check** (Adebayo et al. 2018): the same attribution method on a copy of the network with re-initialised
weights must give different attributions; the check is the median over rows of Spearman's correlation between the two
rankings of ``|phi|`` (near 1: the method ignores the model).

**Rank agreement**: Kendall's tau between two methods' rankings of ``|phi|``, per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Curves:
    """Per row and number of features ``k``: ``s * (f(.) - f_bg)``, in score units (``deletion`` starts at the row's
    deviation ``|f(x) - f_bg|`` and ends at 0; ``insertion`` the reverse); the areas are the means over ``k``.
    :meth:`normalised` divides a mean over rows by the mean deviation (a ratio of means: rows whose score is close to
    the background mean weigh little, instead of blowing up as a per-row ratio would)."""

    deletion: np.ndarray  # (n_rows, n_features + 1)
    insertion: np.ndarray
    deletion_auc: np.ndarray  # (n_rows,)
    insertion_auc: np.ndarray
    usable: np.ndarray  # rows whose score differs from the background mean
    rows_evaluated: int
    deviation: np.ndarray  # |f(x) - f_bg| per row

    def normalised(self, values: np.ndarray) -> float:
        """A mean over the usable rows of ``values`` (areas or a curve's points), over their mean deviation."""
        u = self.usable
        return float(np.mean(values[u], axis=0).mean() if np.ndim(values) > 1 else np.mean(values[u])) / float(
            np.mean(self.deviation[u])
        )


def orders(X_pred: np.ndarray, attributions: np.ndarray, f_bg: float) -> np.ndarray:
    """Feature orders per row: by ``sign(f(x) - f_bg) * phi`` descending (ties by feature index)."""
    s = np.where(X_pred >= f_bg, 1.0, -1.0)
    return np.argsort(-(s[:, None] * attributions), axis=1, kind="stable")


def deletion_insertion(
    predict, X: np.ndarray, attributions: np.ndarray, background: np.ndarray, *, batch_rows: int = 1 << 17
) -> Curves:
    """Deletion and insertion curves of ``predict`` (code-space rows -> scores) for rows ``X`` ordered by
    ``attributions`` (same shape as ``X``), masking with the ``background`` rows (see the module docstring)."""
    X = np.asarray(X, dtype=np.float64)
    A = np.asarray(attributions, dtype=np.float64)
    B = np.asarray(background, dtype=np.float64)
    n, F = X.shape
    nb = len(B)
    f_x = np.asarray(predict(X), dtype=np.float64)
    f_bg = float(np.mean(predict(B)))
    order = orders(f_x, A, f_bg)
    # mask[i, k, j]: feature j is among the first k of row i's order
    rank = np.empty_like(order)
    rank[np.arange(n)[:, None], order] = np.arange(F)[None, :]
    mask = rank[:, None, :] < np.arange(F + 1)[None, :, None]  # (n, F+1, F)
    out = {}
    evaluated = 2 * nb + n
    for name, take_x in (("deletion", ~mask), ("insertion", mask)):
        # (n, F+1, nb, F): x where take_x, the background row elsewhere
        vals = np.empty(n * (F + 1))
        flat_take = take_x.reshape(n * (F + 1), F)
        flat_x = np.repeat(X, F + 1, axis=0)
        step = max(1, batch_rows // nb)
        for a in range(0, n * (F + 1), step):
            t = flat_take[a : a + step]
            rows = np.where(t[:, None, :], flat_x[a : a + step][:, None, :], B[None, :, :]).reshape(-1, F)
            vals[a : a + step] = np.asarray(predict(rows), dtype=np.float64).reshape(len(t), nb).mean(axis=1)
            evaluated += len(rows)
        out[name] = vals.reshape(n, F + 1)
    dev = f_x - f_bg
    usable = np.abs(dev) > 1e-9
    sign = np.where(dev >= 0, 1.0, -1.0)[:, None]
    dele = (out["deletion"] - f_bg) * sign
    ins = (out["insertion"] - f_bg) * sign
    return Curves(dele, ins, dele.mean(axis=1), ins.mean(axis=1), usable, evaluated, np.abs(dev))


def paired_interval(a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over rows and its 95% percentile bootstrap interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def rank_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau (tau-b) between the rankings of ``|a|`` and ``|b|``, per row."""
    from scipy.stats import kendalltau

    return np.array([kendalltau(np.abs(x), np.abs(y)).statistic for x, y in zip(a, b, strict=True)])


def randomisation_similarity(original: np.ndarray, randomised: np.ndarray) -> np.ndarray:
    """Spearman's correlation between the rankings of ``|phi|`` on the model and on its randomised copy, per row."""
    from scipy.stats import spearmanr

    out = []
    for x, y in zip(original, randomised, strict=True):
        r = spearmanr(np.abs(x), np.abs(y)).statistic
        out.append(r if np.isfinite(r) else 1.0)  # a constant ranking on both sides: no difference
    return np.array(out)


def randomised_copy(net, *, seed: int):
    """A copy of the network with every layer's parameters re-initialised (seeded), as Adebayo et al.'s cascading
    randomisation ends."""
    import copy

    import torch

    torch_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        other = copy.deepcopy(net)
        for m in other.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    finally:
        torch.random.set_rng_state(torch_state)
    return other.eval()
