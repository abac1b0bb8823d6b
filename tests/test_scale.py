"""Large data: population audits in partitions, the Poisson bootstrap, the Dask backend, batch reason codes."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.compute import Backend
from audit.config import config_from_dict
from audit.fairness import BOOTSTRAP_BLOCK, _row_stats, bootstrap_sums, group_fairness, poisson_weights
from audit.model.adapter import CallablePredictor
from audit.population import (
    open_population,
    partial_dependence_population,
    permutation_importance_population,
    reason_codes_population,
    score_population,
)
from audit.schema import Feature, Schema

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("scale_data", ROOT / "bench" / "scale_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A training file and a 40k-row population in row groups of 4096 (chunk_rows 8192: 5 partitions)."""
    gen = _generator()
    d = tmp_path_factory.mktemp("scale")
    gen.generate(d / "train.parquet", 6000, seed=1)
    gen.generate(d / "pop.parquet", 40_000, seed=2, block_rows=4096)
    return d


def _cfg(d: Path, **extra) -> dict:
    cfg = {
        "name": "scale-test",
        "seed": 3,
        "dataset": {
            "train": {"path": "train.parquet"},
            "population": {"path": "pop.parquet"},
            "target": "outcome",
            "positive_label": "repaid",
            "drop": ["applicant_id", "sex", "ethnicity"],
        },
        "model": {"hidden": [16], "max_epochs": 2, "threshold": 0.6},
        "fairness": {
            "sensitive_features": ["sex", "ethnicity", "age"],
            "bins": {"age": [30, 60]},
            "intersections": [["sex", "ethnicity"]],
            "n_bootstrap": 60,
        },
        "compute": {"chunk_rows": 8192, "threads": 1},  # the local backend has one thread either way on 2 cores
        "report": {"output_dir": "reports", "formats": ["json"]},
    }
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def _load(d: Path, **extra):
    return config_from_dict(_cfg(d, **extra), base_dir=d)


@pytest.fixture(scope="module")
def linear(files):
    """A known model on the population's schema: logistic in income, utilization and employment only."""
    from audit.data import load_dataset

    cfg = _load(files)
    ds = load_dataset(cfg)
    names = ds.schema.feature_names

    def predict(df: pd.DataFrame) -> np.ndarray:
        z = (
            0.8 * (np.log(df["income"].to_numpy(dtype=float)) - 10.5)
            - 1.5 * df["utilization"].to_numpy(dtype=float)
            + 0.6 * (df["employment"].astype(str).to_numpy() == "employed")
            + 1.0
        )
        return 1 / (1 + np.exp(-z))

    return cfg, ds, CallablePredictor(predict, ds.schema), names


# ------------------------------------------------------------------------------------------------ backends
def _slow_square(x: int) -> int:
    import time

    time.sleep(0.02 * (5 - x % 5))  # later items finish first
    return x * x


def _blas_threads(_item) -> list[int]:
    from threadpoolctl import threadpool_info

    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_local_backend_yields_results_in_item_order_with_torch_on_one_thread():
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    gen = Backend(n_threads=3).map(_slow_square, range(10))
    assert next(gen) == 0
    assert torch.get_num_threads() == 1  # while tasks run
    assert list(gen) == [x * x for x in range(1, 10)]
    assert torch.get_num_threads() == before  # restored
    with threadpool_limits(limits=2, user_api="blas"):  # tasks side by side: BLAS on one thread each (issue 17)
        inside = list(Backend(n_threads=2).map(_blas_threads, range(4)))
        assert all(n == [1] * len(n) for n in inside) and inside[0]
        assert _blas_threads(None) == [2] * len(inside[0])  # restored


# ------------------------------------------------------------------------------------------------ bootstrap
def test_poisson_weights_have_mean_and_variance_one_and_depend_only_on_the_block():
    w = poisson_weights(5, 0, 50, BOOTSTRAP_BLOCK)
    assert w.shape == (BOOTSTRAP_BLOCK, 50)
    assert abs(w.mean() - 1) < 0.01 and abs(w.var() - 1) < 0.02
    assert np.array_equal(w, poisson_weights(5, 0, 50, BOOTSTRAP_BLOCK))
    assert not np.array_equal(w, poisson_weights(5, 1, 50, BOOTSTRAP_BLOCK))


@pytest.mark.parametrize(
    "rows,replicates", [(BOOTSTRAP_BLOCK, 200), (2001, 201), (1001, 7), (5, 3), (777, 199), (1, 1)]
)
def test_poisson_counts_from_the_generators_bits_equal_the_inverse_cdf_of_its_uniforms(rows, replicates):
    """Issue 17: the counts are looked up from the top bits of the generator's outputs; they equal comparing the
    float32 uniforms ``Generator.random`` gives with every step of the Poisson(1) CDF, for odd sizes too."""
    from audit.fairness import _POISSON1_STEPS, poisson_counts

    for seed, block in [(3, 5), (0, 0), (2**62, 12345)]:
        u = np.random.default_rng([seed, block]).random((rows, replicates), dtype=np.float32)
        want = np.searchsorted(_POISSON1_STEPS, u, side="right").astype(np.uint8)
        got = poisson_counts(seed, block, replicates, rows)
        assert got.dtype == np.uint8 and got.shape == (rows, replicates)
        np.testing.assert_array_equal(got, want)


def test_bootstrap_sums_do_not_depend_on_how_rows_are_chunked():
    rng = np.random.default_rng(0)
    n = 3 * BOOTSTRAP_BLOCK + 123
    y, p = rng.integers(0, 2, n), rng.random(n)
    codes = [rng.integers(0, 3, n), rng.integers(0, 5, n)]
    args = dict(threshold=0.5, n_bins=10, n_replicates=20, seed=9)
    a = bootstrap_sums(y, p, codes, [3, 5], rows_per_task=BOOTSTRAP_BLOCK, **args)
    b = bootstrap_sums(y, p, codes, [3, 5], rows_per_task=4 * BOOTSTRAP_BLOCK, **args)
    for x, z in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[..., :5], z[..., :5])  # counts: integers, exact whatever the order
        np.testing.assert_allclose(x, z, rtol=1e-12)


@pytest.mark.parametrize("sizes", [[2, 5, 4, 10], [3], [60, 70]])  # cells, one grouping, too many cells
def test_bootstrap_sums_equal_each_groups_own_weighted_sums_bit_for_bit(sizes):
    """The groupings share one sort into joint cells (issue 17); a group's sums are still exactly the sums over its
    own rows (computed here with a mask per group), including groups absent from a block."""
    rng = np.random.default_rng(3)
    n = 2 * BOOTSTRAP_BLOCK + 77
    y, p = rng.integers(0, 2, n), rng.random(n)
    codes = [rng.integers(0, g - 1 if g > 2 else g, n) for g in sizes]  # the last group of each has no rows
    got = bootstrap_sums(y, p, codes, sizes, threshold=0.4, n_bins=10, n_replicates=30, seed=4)
    want = [np.zeros((30, g, 25)) for g in sizes]
    for b, s in enumerate(range(0, n, BOOTSTRAP_BLOCK)):
        e = min(s + BOOTSTRAP_BLOCK, n)
        W = poisson_weights(4, b, 30, e - s)
        S = _row_stats(y[s:e], p[s:e], 0.4, 10, quantize=True)
        for acc, c in zip(want, codes, strict=True):
            for g in range(acc.shape[1]):
                acc[:, g] += W[c[s:e] == g].T @ S[c[s:e] == g]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bootstrap_interval_of_a_selection_rate_matches_the_binomial_interval():
    # Ground truth: for a group of n rows with selection rate s, the 95% interval half-width is 1.96 sqrt(s(1-s)/n).
    rng = np.random.default_rng(1)
    n = 40_000
    groups = np.where(rng.random(n) < 0.5, "a", "b")
    p = np.where(groups == "a", rng.random(n) < 0.3, rng.random(n) < 0.6).astype(float)
    y = rng.integers(0, 2, n)
    res = group_fairness(y, p, groups, n_bootstrap=400, random_state=2)
    t = res.table.set_index("group")
    for g in ("a", "b"):
        s, m = t.loc[g, "selection_rate"], t.loc[g, "count"]
        expected = 2 * 1.96 * math.sqrt(s * (1 - s) / m)
        width = t.loc[g, "selection_rate_high"] - t.loc[g, "selection_rate_low"]
        assert abs(width / expected - 1) < 0.15, (g, width, expected)


# ------------------------------------------------------------------------------------------------ population
def test_population_scores_equal_scoring_the_whole_file_at_once(files, linear):
    cfg, ds, predictor, _ = linear
    pop = open_population(cfg, ds.schema)
    assert len(pop.partitions) == 5 and pop.rows == 40_000
    sp = score_population(pop, predictor, Backend())
    whole = pd.read_parquet(files / "pop.parquet")
    np.testing.assert_array_equal(sp.proba, predictor.predict_proba(whole))
    np.testing.assert_array_equal(sp.y, (whole["outcome"] == "repaid").to_numpy())
    pd.testing.assert_frame_equal(sp.sensitive, whole[["sex", "ethnicity", "age"]])


def test_population_reads_feature_text_as_categoricals_with_the_same_codes(tmp_path, files):
    """Issue 17: text columns that are only categorical features are read from the file's dictionary pages as
    pandas categoricals; their codes equal the reference coding of the plain text, with missing values, a level
    never seen in training, a number-like level and row groups whose dictionaries differ."""
    from audit.data import load_dataset

    cfg = _load(files)
    ds = load_dataset(cfg)
    whole = pd.read_parquet(files / "pop.parquet").iloc[:9000].reset_index(drop=True)
    whole.loc[::7, "purpose"] = None
    whole.loc[5::11, "housing"] = "caravan"  # never seen in training
    whole.loc[3::13, "region"] = "7"  # a number-like text level
    whole.loc[4000:, "employment"] = whole.loc[4000:, "employment"].str.upper()  # later row groups: other levels
    path = tmp_path / "messy_pop.parquet"
    whole.to_parquet(path, row_group_size=1000)
    pop = open_population(cfg, ds.schema, path=path, key="--input")
    cats = [f.name for f in ds.schema.features if f.is_categorical]
    assert set(pop.dictionary) == {*cats, "outcome"} and cats and "sex" not in pop.dictionary
    frames = [pop.read(part) for part in pop.partitions]
    assert all(isinstance(f[c].dtype, pd.CategoricalDtype) for f in frames for c in [*cats, "outcome"])
    assert pd.api.types.is_string_dtype(frames[0]["sex"])
    got = np.concatenate([ds.schema.to_codes(f) for f in frames])
    np.testing.assert_array_equal(got, ds.schema.to_codes_reference(whole))
    # the scoring path: a net's scores and categorical codes straight from the categoricals, as from the text
    _, net = _random_net(cfg)
    j = [i for i, f in enumerate(ds.schema.features) if f.is_categorical]
    scored = [net.predict_frame(f) for f in frames]
    np.testing.assert_array_equal(np.concatenate([c for _, c in scored]), got[:, j].astype(np.int64))
    np.testing.assert_array_equal(np.concatenate([p for p, _ in scored]), net.predict_codes(got))
    # with a filter on a feature, that column keeps its text (the filter reads it)
    filtered = open_population(_load(files, dataset={"filter": "purpose == 'car'"}), ds.schema)
    assert "purpose" not in filtered.dictionary and "housing" in filtered.dictionary


def test_population_labels_read_as_a_categorical_are_the_labels_of_the_text(tmp_path, files):
    """Issue 17: the target is read from the dictionary pages too; the 0/1 labels and the label problems (missing,
    unknown labels in first-seen order, label_map, spaces) are those of the same column as text, row group by row
    group with different dictionaries."""
    import dataclasses

    from audit.data import load_dataset

    whole = pd.read_parquet(files / "pop.parquet").iloc[:6000].reset_index(drop=True)
    whole.loc[::17, "outcome"] = None
    whole.loc[5::23, "outcome"] = " repaid "
    whole.loc[7::29, "outcome"] = "defaulted"
    whole.loc[3000::31, "outcome"] = "written off"
    whole.loc[3000::37, "outcome"] = "paid"
    path = tmp_path / "labels.parquet"
    whole.to_parquet(path, row_group_size=1000)
    for label_map in ({}, {"paid": "repaid"}):
        cfg = _load(files, dataset={"label_map": label_map})
        pop = open_population(cfg, load_dataset(cfg).schema, path=path, key="--input")
        assert "outcome" in pop.dictionary
        as_text = dataclasses.replace(pop, dictionary=tuple(c for c in pop.dictionary if c != "outcome"))
        for part in pop.partitions:
            frame, text = pop.read(part), as_text.read(part)  # the labels as read now, and as they were read before
            assert isinstance(frame["outcome"].dtype, pd.CategoricalDtype)
            assert pd.api.types.is_string_dtype(text["outcome"].dtype)
            (y, problems), (y_text, problems_text) = pop.labels(frame), pop.labels(text)
            np.testing.assert_array_equal(y, y_text)
            assert list(problems.items()) == list(problems_text.items())
            assert problems["missing"] > 0 and any("written off" in k for k in problems)
    # a population without the target column: nothing is read as the labels
    no_target = tmp_path / "unlabelled.parquet"
    whole.drop(columns="outcome").to_parquet(no_target)
    pop = open_population(cfg, load_dataset(cfg).schema, path=no_target, key="--input")
    assert not pop.has_labels and "outcome" not in pop.dictionary


@pytest.mark.parametrize("share", [0.3, 0.0, 1.0])
def test_classes_gathered_by_row_number_are_the_masked_classes_to_the_bit(share):
    """roc_auc_fast and permutation importance's many ROC AUCs (issue 17) take each class's scores by row number,
    found once per label vector; the sorted classes, hence the AUC, are the same bits as with boolean masks, with
    float32 ties, and the AUC is NaN when a class is empty."""
    from audit.metrics import class_rows, roc_auc_fast, roc_auc_sorted, sorted_classes

    rng = np.random.default_rng(4)
    y = (rng.uniform(size=5000) < share).astype(np.int8)
    rows = class_rows(y)
    for _ in range(3):
        p = np.round(rng.uniform(size=5000) * 0.7 + 0.3 * y, 2).astype(np.float32)
        want = np.sort(p[y.astype(bool)]), np.sort(p[~y.astype(bool)])
        got = sorted_classes(p, rows)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
            assert g.dtype == w.dtype
        auc = roc_auc_fast(y, p)
        assert auc == roc_auc_sorted(*want) or (np.isnan(auc) and share in (0.0, 1.0))


def test_population_permutation_importance_is_zero_for_unused_features(linear):
    cfg, ds, predictor, names = linear
    pop = open_population(cfg, ds.schema)
    sp = score_population(pop, predictor, Backend())
    res = permutation_importance_population(
        pop, predictor, Backend(), y=sp.y, proba=sp.proba, n_repeats=2, random_state=0, max_bytes=1 << 20
    )
    imp = dict(zip(res.names, res.importances_mean, strict=True))
    used = {"income", "utilization", "employment"}
    assert all(imp[n] == 0 for n in names if n not in used)
    assert all(imp[n] > 0.005 for n in used)
    assert res.n_rows == 40_000 and res.baseline_score > 0.5


def test_population_partial_dependence_equals_the_in_memory_average(files, linear):
    from audit.explain.partial_dependence import partial_dependence

    cfg, ds, predictor, names = linear
    pop = open_population(cfg, ds.schema)
    X = ds.schema.to_codes(pd.read_parquet(files / "pop.parquet"))
    cols = [names.index("utilization"), names.index("employment")]
    grids = [np.array([0.0, 0.5, 1.0]), np.arange(6.0)]
    got = partial_dependence_population(pop, predictor, Backend(), columns=cols, grids=grids, chunk_rows=5000)
    for j, g, avg in zip(cols, grids, got, strict=True):
        np.testing.assert_allclose(avg, partial_dependence(predictor.predict_codes, X, j, g).average, rtol=1e-12)


def test_population_explainers_of_the_built_in_net_in_its_input_space_equal_the_code_space_ones(files):
    """Issue 17: with the built-in net, permutation importance and PD change columns of the transformed rows
    (transformed once per partition) instead of code rows; every number is the same as through ``predict_codes``."""
    import torch

    from audit.data import load_dataset
    from audit.model.adapter import NetPredictor, Predictor
    from audit.model.network import Preprocessing, build_net, embedding_dim_for

    cfg = _load(files)
    ds = load_dataset(cfg)
    pre = Preprocessing.fit(ds.schema, ds.schema.to_codes(ds.X_train))
    torch.manual_seed(0)
    dims = [embedding_dim_for(c, None) for c in pre.cardinalities]
    fast = NetPredictor(build_net(pre, {"hidden": [16], "dropout": 0.0, "embedding_dims": dims}), pre, ds.schema)

    class CodesOnly(NetPredictor):  # the code rows as the model's inputs, as for every other model
        inputs, input_column, predict_inputs = Predictor.inputs, Predictor.input_column, Predictor.predict_inputs
        row_wise = False  # every permuted row scored (the reuse of unchanged rows has its own test)

    slow = CodesOnly(fast.net, pre, ds.schema)
    pop = open_population(cfg, ds.schema)
    sp = score_population(pop, fast, Backend())
    names = ds.schema.feature_names
    kw = dict(y=sp.y, proba=sp.proba, groups={"both": ["income", "employment"]}, n_repeats=2, random_state=4)
    a = permutation_importance_population(pop, fast, Backend(n_threads=2), **kw)
    b = permutation_importance_population(pop, slow, Backend(), **kw)
    np.testing.assert_array_equal(a.importances, b.importances)
    assert a.n_rows == b.n_rows
    cols = [names.index("income"), names.index("employment"), names.index("utilization")]
    X = ds.schema.to_codes(ds.X_test)
    grids = [np.quantile(X[:, cols[0]], [0.1, 0.5, 0.9]), np.arange(-1.0, 5.0), np.array([np.nan, 0.3])]
    a = partial_dependence_population(pop, fast, Backend(), columns=cols, grids=grids, chunk_rows=5000)
    b = partial_dependence_population(pop, slow, Backend(), columns=cols, grids=grids, chunk_rows=5000)
    for x, z in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, z)
    # blocks of 192 rows: built block by block, they cross from one grid value to the next inside a block
    small = NetPredictor(fast.net, pre, ds.schema, batch_size=192)
    c = partial_dependence_population(pop, small, Backend(), columns=cols, grids=grids, chunk_rows=5000)
    for x, z in zip(c, b, strict=True):
        np.testing.assert_array_equal(x, z)
    assert any(pre.log1p) and names.index("employment") in pre.categorical_idx


def _random_net(cfg):
    import torch

    from audit.data import load_dataset
    from audit.model.adapter import NetPredictor
    from audit.model.network import Preprocessing, build_net, embedding_dim_for

    ds = load_dataset(cfg)
    pre = Preprocessing.fit(ds.schema, ds.schema.to_codes(ds.X_train))
    torch.manual_seed(1)
    dims = [embedding_dim_for(c, None) for c in pre.cardinalities]
    return ds, NetPredictor(build_net(pre, {"hidden": [16], "dropout": 0.0, "embedding_dims": dims}), pre, ds.schema)


@pytest.mark.parametrize("where", [None, "employment != 'student'"])
def test_population_permutation_importance_reuses_the_scores_of_unchanged_rows_bit_for_bit(files, where):
    """Issue 17: a row that a permutation leaves as it was keeps its score (the built-in net's scores are row-wise);
    the importances are the same bits as when every permuted row is scored, with and without a filter (rows per
    partition then differ from the file's), for single features, a group, and ties in numeric columns."""
    cfg = _load(files, dataset={"filter": where} if where else {})
    ds, fast = _random_net(cfg)
    slow = type(fast)(fast.net, fast.preprocessing, ds.schema)
    slow.row_wise = False
    pop = open_population(cfg, ds.schema)
    sp = score_population(pop, fast, Backend())
    pop = replace(pop, kept=sp.kept)  # as the pipeline does: rows per partition after the filter
    kw = dict(y=sp.y, proba=sp.proba, groups={"both": ["term_months", "housing"]}, n_repeats=3, random_state=2)
    a = permutation_importance_population(pop, fast, Backend(n_threads=2), **kw)
    b = permutation_importance_population(pop, slow, Backend(), **kw)
    np.testing.assert_array_equal(a.importances, b.importances)
    n, units = len(sp.proba), len(b.names)
    assert b.rows_evaluated == n * (1 + 3 * units)
    saved = 1 - (a.rows_evaluated - n) / (b.rows_evaluated - n)
    assert 0.05 < saved < 0.6, saved  # categorical and small-integer columns: many rows draw their own value
    # scores that are not this predictor's (here: halved; the same ROC AUC) are never reused: the check on each
    # partition sends every row to the model, so the importances are still right
    c = permutation_importance_population(pop, fast, Backend(), **{**kw, "proba": sp.proba * 0.5})
    assert c.rows_evaluated == b.rows_evaluated
    np.testing.assert_array_equal(c.importances, b.importances)


def test_population_permutation_importance_compares_rows_once_for_a_column_of_distinct_values(files, monkeypatch):
    """A permutation of a column of distinct values moves nearly every row: after the first repeat in a partition,
    the unit's other repeats score every row without looking for unchanged rows first; the same bits and the same
    rows scored as when every repeat looks."""
    import audit.population as population

    cfg = _load(files)
    ds, fast = _random_net(cfg)
    pop = open_population(cfg, ds.schema)
    sp = score_population(pop, fast, Backend())
    assert ds.X_test["income"].nunique() > 0.9 * len(ds.X_test)  # nearly distinct values: nearly every row moves
    calls = []
    moved_rows = population._moved_rows
    monkeypatch.setattr(population, "_moved_rows", lambda *a: calls.append(1) or moved_rows(*a))
    kw = dict(y=sp.y, proba=sp.proba, n_repeats=4, random_state=3)
    a = permutation_importance_population(pop, fast, Backend(), **kw)
    skipping = len(calls)
    monkeypatch.setattr(population, "SKIP_COMPARE_ABOVE", 1.0)  # every repeat looks for unchanged rows
    calls.clear()
    b = permutation_importance_population(pop, fast, Backend(), **kw)
    np.testing.assert_array_equal(a.importances, b.importances)
    assert a.rows_evaluated == b.rows_evaluated
    assert len(calls) - skipping >= 3 * len(pop.partitions)  # at least income: 1 look per partition instead of 4


def test_moved_rows_compare_bits():
    from audit.population import _moved_rows

    x = np.array([0.0, np.nan, -0.0, 4.0], dtype=np.float32)
    codes = np.array([1, 2, 3, 4])
    emb = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]], dtype=np.float32)
    x2 = np.array([0.0, np.nan, 0.0, 4.5], dtype=np.float32)  # same, NaN alike, -0.0 -> 0.0, changed
    codes2 = np.array([1, 2, 4, 4])
    emb2 = emb.copy()
    emb2[0, 1] = 7.0
    assert _moved_rows([x2], [x]).tolist() == [2, 3]
    assert _moved_rows([x2, codes2], [x, codes]).tolist() == [2, 3]
    assert _moved_rows([codes2], [codes]).tolist() == [2]
    assert _moved_rows([emb], [emb]).tolist() == []
    assert _moved_rows([emb2], [emb]).tolist() == [0]  # an embedding's columns: any of them
    assert _moved_rows([emb2, codes2], [emb, codes]).tolist() == [0, 2]


def test_reason_codes_are_exact_for_an_additive_model(tmp_path, files):
    # For f(x) = sum_j w_j x_j every Shapley value is w_j (x_j - mean over the background), whatever the orders.
    schema = Schema(
        (Feature("income", "numeric"), Feature("utilization", "numeric"), Feature("delinquencies", "numeric")),
        "outcome",
        "repaid",
        "default",
    )
    w = np.array([1e-5, -0.8, -0.3])
    predictor = CallablePredictor(lambda df: df[schema.feature_names].to_numpy(dtype=float) @ w, schema)
    cfg = _load(files, fairness={"sensitive_features": [], "intersections": [], "bins": {}})
    pop = open_population(cfg, schema, path=files / "pop.parquet", key="--input", labelled=False)
    background = np.array([[30000.0, 0.3, 0.0], [60000.0, 0.5, 1.0]])
    out = tmp_path / "codes.parquet"
    run = reason_codes_population(
        pop, predictor, Backend(), background=background, output=out, threshold=0.2, top_k=2, id_column="applicant_id"
    )
    codes = pd.read_parquet(out)
    whole = pd.read_parquet(files / "pop.parquet")
    X = whole[schema.feature_names].to_numpy(dtype=float)
    f = X @ w
    assert run.declined == len(codes) == int((f < 0.2).sum()) > 100
    np.testing.assert_array_equal(codes["row"], np.flatnonzero(f < 0.2))
    np.testing.assert_array_equal(codes["applicant_id"], whole["applicant_id"].to_numpy()[codes["row"]])
    phi = w * (X[codes["row"]] - background.mean(axis=0))
    ranked = np.sort(phi, axis=1)
    index = {n: j for j, n in enumerate(schema.feature_names)}
    for r in range(2):
        want = ranked[:, r]
        adverse = want < -1e-9
        got = codes[f"contribution_{r + 1}"].to_numpy()
        np.testing.assert_allclose(got[adverse], want[adverse], atol=1e-9)  # the r-th most negative value
        named = [index[n] for n in codes[f"reason_{r + 1}"].to_numpy()[adverse]]
        np.testing.assert_allclose(phi[adverse][np.arange(adverse.sum()), named], want[adverse], atol=1e-9)
        assert codes[f"reason_{r + 1}"][~adverse].isna().all() and np.isnan(got[~adverse]).all()
    assert (codes["score"] < 0.2).all()


# ---------------------------------------------------------------------------------------------------- dask
def test_local_and_dask_backends_give_identical_numbers(files):
    """The acceptance test: the whole population audit on a 2-worker LocalCluster equals the local run exactly."""
    import distributed  # noqa: F401 - `make` installs the dask extra; a missing one must fail, not skip

    from audit.modules.fairness import FairnessModule
    from audit.modules.global_explain import PartialDependenceModule, PermutationModule
    from audit.modules.monitoring import DataQualityModule, DriftModule
    from audit.modules.performance import PerformanceModule
    from audit.pipeline import run_audit

    def modules():
        return [
            PerformanceModule(), PermutationModule(), PartialDependenceModule(), FairnessModule(), DriftModule(),
            DataQualityModule(),
        ]  # fmt: skip

    extra = {"modules": {"partial_dependence": {"features": ["income", "employment"], "grid_resolution": 5}}}
    local = run_audit(_load(files, **extra), quiet=True, write=False, modules=modules())
    dask = run_audit(
        _load(files, compute={"backend": "dask", "n_workers": 2}, **extra), quiet=True, write=False, modules=modules()
    )
    assert dask.exit_code == local.exit_code
    assert local.compute["backend"] == "local" and dask.compute["backend"] == "dask" and dask.compute["workers"] == 2
    assert local.compute["population"]["partitions"] == 5
    for a, b in zip(local.modules, dask.modules, strict=True):
        assert a.status == b.status == "ok", (a.name, a.error, b.error)
        assert json.dumps(_plain(a.result.data), sort_keys=True) == json.dumps(_plain(b.result.data), sort_keys=True)
    perf = local.modules[0].result.data
    assert perf["population"]["rows"] == 40_000
    fair = local.modules[3].result.data
    assert set(fair) - {"flagged_proxies", "flagged_proxy_pairs"} == {"sex", "ethnicity", "age", "sex x ethnicity"}
    assert "60 Poisson resamples of the population (40000 rows)" in local.modules[3].result.tables[0].caption
    assert local.modules[0].result.tables[0].title.startswith("Metrics on the population, test and training")
    assert "population (40000 rows)" in local.modules[0].result.tables[1].title  # confusion matrix
    assert not math.isnan(fair["sex"]["measures"]["ci_low"][0])


def test_dask_backend_joins_a_running_scheduler_and_sends_the_model_once(files, linear):
    import distributed  # noqa: F401 - `make` installs the dask extra; a missing one must fail, not skip
    from distributed import LocalCluster

    from audit.compute import DaskBackend

    cfg, ds, predictor, _ = linear
    pop = open_population(cfg, ds.schema)
    local = score_population(pop, predictor, Backend())
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with DaskBackend(cluster.scheduler_address) as backend:
            assert backend.describe()["address"] == cluster.scheduler_address
            assert backend.share(predictor) is backend.share(predictor)  # one scatter per backend
            remote = score_population(pop, predictor, backend)
            np.testing.assert_array_equal(remote.proba, local.proba)
            pd.testing.assert_frame_equal(remote.sensitive, local.sensitive)


def _plain(obj):
    from audit.jsonable import to_jsonable

    return to_jsonable(obj)


def test_reason_codes_cli_local_and_dask_write_the_same_file(files, tmp_path):
    import distributed  # noqa: F401 - `make` installs the dask extra; a missing one must fail, not skip
    import yaml

    from audit.modules.performance import PerformanceModule
    from audit.pipeline import run_audit

    cfg = _cfg(files, report={"output_dir": str(tmp_path / "reports"), "formats": ["json"]})
    (tmp_path / "local.yaml").write_text(yaml.safe_dump({**cfg, "dataset": _abs(cfg["dataset"], files)}))
    dask_cfg = {**cfg, "compute": {"chunk_rows": 8192, "backend": "dask", "n_workers": 2}}
    (tmp_path / "dask.yaml").write_text(yaml.safe_dump({**dask_cfg, "dataset": _abs(cfg["dataset"], files)}))
    # no model yet: a config that trains needs an audit run first
    cmd = [sys.executable, "-m", "audit", "reason-codes", str(tmp_path / "local.yaml"), "--input"]
    res = subprocess.run(
        [*cmd, str(files / "pop.parquet"), "--output", str(tmp_path / "a.parquet")], capture_output=True, text=True
    )
    assert res.returncode == 2 and "run the audit first" in res.stderr
    from audit.config import load_config

    run_audit(load_config(tmp_path / "local.yaml"), quiet=True, modules=[PerformanceModule()])
    outs = []
    for name in ("local", "dask"):
        out = tmp_path / f"{name}.parquet"
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "audit",
                "reason-codes",
                str(tmp_path / f"{name}.yaml"),
                "--input",
                str(files / "pop.parquet"),
                "--output",
                str(out),
                "--id-column",
                "applicant_id",
                "--top-k",
                "3",
                "--background",
                "8",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        assert "reason codes for" in res.stdout
        outs.append(pd.read_parquet(out))
    pd.testing.assert_frame_equal(outs[0], outs[1])
    assert len(outs[0]) > 100 and (outs[0]["score"] < 0.6).all()
    assert list(outs[0].columns[:3]) == ["row", "applicant_id", "score"]


def _abs(dataset: dict, d: Path) -> dict:
    return {
        **dataset,
        "train": {"path": str(d / "train.parquet")},
        "population": {"path": str(d / "pop.parquet")},
    }


def test_comparison_tracks_the_population_metrics_between_runs(files, tmp_path):
    """Monthly use: this month's population against last month's, not the fixed test split."""
    from audit.modules.comparison import ComparisonModule
    from audit.modules.performance import PerformanceModule
    from audit.pipeline import run_audit

    frame = pd.read_parquet(files / "pop.parquet")
    flip = frame.index % 5 == 0  # a fifth of the labels flipped: the population's ROC AUC drops
    frame.loc[flip, "outcome"] = np.where(frame.loc[flip, "outcome"] == "repaid", "default", "repaid")
    frame.to_parquet(tmp_path / "next.parquet", row_group_size=8192)
    report = {"output_dir": str(tmp_path / "reports"), "formats": ["json"]}
    first = run_audit(_load(files, report=report), quiet=True, modules=[PerformanceModule(), ComparisonModule()])
    cfg = _load(files, report=report, dataset={"population": {"path": str(tmp_path / "next.parquet")}})
    second = run_audit(cfg, quiet=True, modules=[PerformanceModule(), ComparisonModule()])
    before = first.modules[0].result.data["population"]["roc_auc"]
    after = second.modules[0].result.data["population"]["roc_auc"]
    assert after < before - 0.05
    table = next(t for t in second.modules[1].result.tables if t.name == "performance")
    assert table.title.startswith("Population metrics")
    row = table.frame.set_index("metric").loc["roc_auc"]
    assert row["baseline"] == before and row["current"] == after
    assert any("Population roc_auc moved" in f.title for f in second.findings)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"dataset": {"population": {"path": "pop.csv"}}}, "must be a Parquet file"),
        ({"dataset": {"population": {"path": "missing.parquet"}}}, "does not exist"),
        ({"dataset": {"population": {"path": "train.parquet", "sha256": "0" * 64}}}, "checksum mismatch"),
        ({"compute": {"backend": "dask", "address": "localhost:1"}}, "compute.address"),
        ({"compute": {"backend": "dask", "address": "tcp://127.0.0.1:1"}}, "cannot reach a Dask scheduler"),
        ({"compute": {"backend": "cluster"}}, "compute.backend"),
    ],
)
def test_bad_population_and_compute_settings_exit_2(files, tmp_path, change, needle):
    import yaml

    cfg = _cfg(files, report={"output_dir": str(tmp_path / "reports")})
    cfg["dataset"] = _abs(cfg["dataset"], files)
    for key, value in change.items():
        if key == "dataset":
            cfg["dataset"] = {
                **cfg["dataset"],
                "population": {
                    "path": str(files / value["population"]["path"]),
                    **{k: v for k, v in value["population"].items() if k != "path"},
                },
            }
        else:
            cfg[key] = {**cfg[key], **value}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "audit", "run", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.assign(outcome=d["outcome"].where(d.index % 97 != 0)), "missing"),
        (lambda d: d.assign(outcome=d["outcome"].where(d.index % 89 != 0, "chargeoff")), "unknown 'chargeoff'"),
    ],
)
def test_population_labels_must_be_the_two_classes(files, tmp_path, edit, needle):
    import yaml

    edit(pd.read_parquet(files / "pop.parquet")).to_parquet(tmp_path / "p.parquet", row_group_size=8192)
    cfg = _cfg(files, report={"output_dir": str(tmp_path / "reports")})
    cfg["dataset"] = {**_abs(cfg["dataset"], files), "population": {"path": str(tmp_path / "p.parquet")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run(
        [sys.executable, "-m", "audit", "run", str(tmp_path / "c.yaml")], capture_output=True, text=True
    )
    assert res.returncode == 2, res.stderr
    assert "dataset.population: column 'outcome' has" in res.stderr and needle in res.stderr
    assert "dataset.label_map" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    "raw",
    [
        pd.array([" repaid", "default", None, "repaid ", "maybe", "x", "maybe", "y", "z", "default"], dtype="str"),
        pd.Series([1, 0, 1, 2, 0, 3, 1, 1, 4, 5]),
        pd.Series([1.0, np.nan, 0.0, 2.5, 1.0, 0.0, np.nan, 7.0, 1.0, 0.0]),
        pd.Series(["repaid", 1, None, " default", 2.0, "repaid", np.nan, "1", "q", "q"], dtype=object),
        pd.Categorical(["repaid", "default", None, "repaid", "w", "w", "v", "u", "default", "t"]),
    ],
)
@pytest.mark.parametrize("label_map", [(), (("1", "repaid"), ("0", "default"), ("w", "default"))])
def test_population_labels_per_distinct_value_equal_the_value_by_value_labels(files, raw, label_map):
    """Issue 17: labels are worked out once per distinct value; the 0/1 labels and the problems (missing, the first
    three unknown labels with their counts) equal those of converting every row, whatever the column's type."""
    import dataclasses

    from audit.schema import category_strings

    pop = dataclasses.replace(open_population(_load(files), _load_schema(files)), label_map=label_map)
    frame = pd.DataFrame({pop.schema.target: raw})
    col = frame[pop.schema.target]  # the reference: every row converted (the code before issue 17)
    labels = pd.Series(category_strings(col), index=col.index).str.strip()
    if label_map:
        labels = labels.replace(dict(label_map))
    values = labels.to_numpy(dtype=object)
    missing = col.isna().to_numpy()
    want = {"missing": int(missing.sum())}
    other = ~missing & (values != "repaid") & (values != "default")
    for v in pd.unique(values[other])[:3]:
        want[f"unknown {v!r}"] = int((values[other] == v).sum())
    y, problems = pop.labels(frame)
    np.testing.assert_array_equal(y, (values == "repaid").astype(np.int8))
    assert problems == want and list(problems) == list(want)


def _load_schema(files):
    from audit.data import load_dataset

    return load_dataset(_load(files)).schema


def test_unseen_population_levels_are_counted_or_refused(files, linear, tmp_path):
    cfg, ds, predictor, _ = linear
    frame = pd.read_parquet(files / "pop.parquet")
    frame.loc[frame.index % 1000 == 0, "purpose"] = "crypto"
    frame.to_parquet(tmp_path / "p.parquet", row_group_size=8192)
    spec = {"path": str(tmp_path / "p.parquet")}
    cfg = _load(files, dataset={"population": spec})
    pop = open_population(cfg, ds.schema)
    assert score_population(pop, predictor, Backend()).unseen == {"purpose": 40}
    from audit.data import DataError

    with pytest.raises(DataError, match="never seen in training"):
        score_population(pop, predictor, Backend(), unseen_categories="error")


def test_population_without_the_needed_columns_exits_2(files, tmp_path):
    import yaml

    pd.read_parquet(files / "pop.parquet").drop(columns=["utilization"]).to_parquet(tmp_path / "short.parquet")
    cfg = _cfg(files, report={"output_dir": str(tmp_path / "reports")})
    cfg["dataset"] = {**_abs(cfg["dataset"], files), "population": {"path": str(tmp_path / "short.parquet")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run(
        [sys.executable, "-m", "audit", "run", str(tmp_path / "c.yaml")], capture_output=True, text=True
    )
    assert res.returncode == 2 and "lacks column(s) ['utilization']" in res.stderr
    assert not (tmp_path / "reports").exists()
