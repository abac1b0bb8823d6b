"""Network internals against ground truth: Integrated Gradients on nets with known gradients, dead-unit counting on
a constructed net, Monte Carlo dropout with and without dropout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from audit.explain.neural import hidden_activations, integrated_gradients, mc_dropout, reference_row
from audit.model.adapter import NetPredictor
from audit.model.network import Preprocessing, TabularNet
from audit.schema import Feature, Schema


def _setup(hidden, dropout=0.0, seed=0):
    rng = np.random.default_rng(seed)
    schema = Schema(
        (Feature("a", "numeric"), Feature("c", "categorical", ("x", "y", "z")), Feature("b", "numeric")), "t", "1", "0"
    )
    codes = np.column_stack([rng.normal(size=500), rng.integers(0, 3, 500), rng.normal(2, 3, size=500)])
    pre = Preprocessing.fit(schema, codes)
    torch.manual_seed(seed)
    net = TabularNet(2, pre.cardinalities, [2], hidden, dropout)
    return NetPredictor(net, pre, schema), codes


def test_ig_on_a_linear_net_equals_the_closed_form():
    # no hidden layer: logit = w . z + b, so IG of sigmoid(logit) is (z - z0) * w * (s(l) - s(l0)) / (l - l0)
    pred, codes = _setup(hidden=[])
    X, base = codes[:20], reference_row(codes, pred.schema.categorical_mask)
    res = integrated_gradients(pred, X, base)
    net = pred.net.double()
    with torch.no_grad():
        z = net.embed(*[t.double() if t.is_floating_point() else t for t in pred.tensors(X)])
        z0 = net.embed(*[t.double() if t.is_floating_point() else t for t in pred.tensors(base[None, :])])
        w = net.head.weight[0]
        lx, l0 = net.forward_embedded(z), net.forward_embedded(z0)
        per_col = ((z - z0) * w * ((torch.sigmoid(lx) - torch.sigmoid(l0)) / (lx - l0))[:, None]).numpy()
    expected = np.column_stack([per_col[:, 0], per_col[:, 2:4].sum(axis=1), per_col[:, 1]])  # a, c (2 dims), b
    np.testing.assert_allclose(res.attributions, expected, atol=1e-12)
    assert res.completeness_error.max() < 1e-10


def test_ig_on_a_relu_net_matches_a_fine_riemann_sum_and_is_complete():
    pred, codes = _setup(hidden=[8, 8], seed=3)
    X, base = codes[:4], reference_row(codes, pred.schema.categorical_mask)
    res = integrated_gradients(pred, X, base)
    assert res.completeness_error.max() < 1e-6
    net = pred.net.double()
    x_num, x_cat = pred.tensors(X)
    b_num, b_cat = pred.tensors(base[None, :])
    with torch.no_grad():
        z, z0 = net.embed(x_num.double(), x_cat), net.embed(b_num.double(), b_cat)
    steps = 20000
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps  # midpoint rule
    ref = []
    for i in range(len(X)):
        path = (z0 + alphas[:, None] * (z[i] - z0)).requires_grad_(True)
        (g,) = torch.autograd.grad(torch.sigmoid(net.forward_embedded(path)).sum(), path)
        ref.append(((z[i] - z0[0]) * g.mean(dim=0)).numpy())
    ref = np.array(ref)
    expected = np.column_stack([ref[:, 0], ref[:, 2:4].sum(axis=1), ref[:, 1]])
    np.testing.assert_allclose(res.attributions, expected, atol=1e-5)


def test_dead_and_always_active_units_are_counted_exactly():
    pred, codes = _setup(hidden=[6])
    first = pred.net.body[0]
    with torch.no_grad():
        first.weight[:2] = 0.0
        first.bias[:2] = -1.0  # units 0, 1: never active
        first.weight[2] = 0.0
        first.bias[2] = 5.0  # unit 2: always active
    (layer,) = hidden_activations(pred, codes)
    assert layer.dead.tolist()[:3] == [True, True, False] and int(layer.dead.sum()) >= 2
    assert layer.always_active[2] and int(layer.dead[:2].sum()) == 2
    assert layer.values.shape == (len(codes), 6)


def test_mc_dropout_has_zero_spread_without_dropout_and_is_seeded():
    pred0, codes = _setup(hidden=[16], dropout=0.0)
    u0 = mc_dropout(pred0, codes[:50], passes=10)
    assert u0.dropout == 0 and np.all(u0.std == 0) and np.array_equal(u0.low, u0.high)
    np.testing.assert_allclose(u0.mean, pred0.predict_codes(codes[:50]), atol=1e-7)
    pred1, _ = _setup(hidden=[16], dropout=0.3)
    a = mc_dropout(pred1, codes[:50], passes=10, random_state=1)
    b = mc_dropout(pred1, codes[:50], passes=10, random_state=1)
    assert a.std.min() > 0 and np.array_equal(a.mean, b.mean)
    assert not pred1.net.training  # the audited net is left in eval mode


def test_uncertainty_by_group_is_compared_at_matched_scores():
    """Issue 23, point 6: a probability's spread shrinks near 0, so a group with low scores looked most certain. At
    matched scores, two groups that differ only in their scores compare as equal (ratio ~1, was 5x on raw spreads),
    and a group planted with twice the spread at the same scores still shows 2x (the check can fail)."""
    from audit.modules.network import _matched_spread

    rng = np.random.default_rng(0)
    n = 4000
    score = np.r_[rng.uniform(0.01, 0.1, n), rng.uniform(0.3, 0.7, n)]  # group A low scores, B middling
    group = np.r_[np.zeros(n), np.ones(n)].astype(bool)
    std = 0.5 * score * (1 - score) * rng.uniform(0.8, 1.2, 2 * n)  # the same model noise, squashed by the sigmoid
    raw = std[group].mean() / std[~group].mean()
    rel = _matched_spread(std, score)
    assert raw > 3 and abs(rel[group].mean() / rel[~group].mean() - 1) < 0.05
    mixed = rng.uniform(size=2 * n) < 0.5  # a group spread over all scores, with twice the spread
    std2 = np.where(mixed, 2 * std, std)
    rel2 = _matched_spread(std2, score)
    assert 1.6 < rel2[mixed].mean() / rel2[~mixed].mean() < 2.4


def test_network_modules_say_not_applicable_for_other_models(tiny_model):
    from audit.model.adapter import CallablePredictor
    from audit.modules.base import AuditContext
    from audit.modules.network import ActivationsModule, GradientsModule, UncertaintyModule

    cfg, ds, pred, _ = tiny_model
    other = CallablePredictor(lambda df: np.full(len(df), 0.5), ds.schema)
    codes = ds.schema.to_codes(ds.X_test)
    ctx = AuditContext(
        cfg, ds, other, ds.X_test, ds.y_test, codes, np.full(len(codes), 0.5), np.full(len(ds.X_train), 0.5)
    )
    for module in (GradientsModule(), ActivationsModule(), UncertaintyModule()):
        res = module.run(ctx)
        assert res.summary == {"applicable": False} and "not applicable" in res.findings[0].title


@pytest.mark.parametrize("frame_rows", [300])
def test_network_modules_run_on_the_trained_net(tiny_model, frame_rows):
    from audit.modules.base import AuditContext
    from audit.modules.network import ActivationsModule, ArchitectureModule, GradientsModule, UncertaintyModule

    cfg, ds, pred, res = tiny_model
    X = ds.X_test.iloc[:frame_rows].reset_index(drop=True)
    codes = ds.schema.to_codes(X)
    info = {"history": res.history, "best_epoch": res.best_epoch}
    ctx = AuditContext(
        cfg,
        ds,
        pred,
        X,
        ds.y_test[:frame_rows],
        codes,
        pred.predict_codes(codes),
        pred.predict_proba(ds.X_train),
        model_info=info,
    )
    for module in (ArchitectureModule(), GradientsModule(), ActivationsModule(), UncertaintyModule()):
        out = module.run(ctx)
        assert out.figures and all(f.png[:4] == b"\x89PNG" for f in out.figures)
    grads = ctx.cache  # the gradients module used the shared instance selection
    assert "instances" in grads
    assert isinstance(pd.DataFrame(out.tables[0].frame), pd.DataFrame)
