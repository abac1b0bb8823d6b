"""The tabular net: determinism, artifact round trip, and the encoded fast path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from audit.model import CallablePredictor, NetPredictor, load_model, model_hash, save_model
from audit.model.training import train_model


def test_training_is_deterministic(tiny_model):
    cfg, ds, predictor, _ = tiny_model
    res = train_model(ds.schema, ds.schema.to_codes(ds.X_train), ds.y_train, cfg.model, validation_size=0.2, seed=0)
    again = NetPredictor(res.net, res.preprocessing, ds.schema)
    np.testing.assert_array_equal(again.predict_proba(ds.X_test), predictor.predict_proba(ds.X_test))
    other = train_model(ds.schema, ds.schema.to_codes(ds.X_train), ds.y_train, cfg.model, validation_size=0.2, seed=1)
    assert not np.array_equal(
        NetPredictor(other.net, other.preprocessing, ds.schema).predict_proba(ds.X_test),
        predictor.predict_proba(ds.X_test),
    )


def test_model_learns_signal(tiny_model):
    from sklearn.metrics import roc_auc_score

    _, ds, predictor, res = tiny_model
    assert roc_auc_score(ds.y_test, predictor.predict_proba(ds.X_test)) > 0.8
    assert res.history and {"train_loss", "val_loss", "val_auc"} <= set(res.history[-1])


def test_encoded_path_agrees_exactly_with_dataframe_path(tiny_model):
    _, ds, predictor, _ = tiny_model
    codes = ds.schema.to_codes(ds.X_test)
    np.testing.assert_array_equal(predictor.predict_codes(codes), predictor.predict_proba(ds.X_test))
    small = NetPredictor(predictor.net, predictor.preprocessing, ds.schema, batch_size=7)  # chunking changes nothing
    np.testing.assert_allclose(small.predict_codes(codes), predictor.predict_codes(codes), rtol=0, atol=1e-7)
    # a black-box wrapper around the DataFrame path gives the same numbers through from_codes
    wrapped = CallablePredictor(predictor.predict_proba, ds.schema)
    np.testing.assert_array_equal(wrapped.predict_codes(codes), predictor.predict_codes(codes))


def _random_net(schema, frame, seed=0):
    """A NetPredictor with random weights for ``schema`` (log1p and standardisation fitted on ``frame``)."""
    from audit.model.network import Preprocessing, build_net, embedding_dim_for

    pre = Preprocessing.fit(schema, schema.to_codes(frame))
    torch.manual_seed(seed)
    arch = {
        "hidden": [32, 16],
        "dropout": 0.0,
        "embedding_dims": [embedding_dim_for(c, None) for c in pre.cardinalities],
    }
    return NetPredictor(build_net(pre, arch), pre, schema, batch_size=4096)


@pytest.mark.parametrize("name", ["adult", "german_credit", "bank_marketing"])
def test_dataframe_path_equals_the_code_path_on_shipped_data(name):
    """Issue 17: the built-in net takes a frame's columns straight into its inputs; the scores are exactly those of
    ``predict_codes(schema.to_codes(frame))``, on every shipped row (several blocks of rows, a padded last one)."""
    from audit.config import load_config
    from audit.data import load_dataset
    from tests.conftest import ROOT

    ds = load_dataset(load_config(ROOT / "configs" / f"{name}.yaml"))
    predictor = _random_net(ds.schema, ds.X_train)
    assert predictor.preprocessing.numeric_idx and predictor.preprocessing.categorical_idx
    for frame in (ds.X_train, ds.X_test, ds.X_test.iloc[::-1][list(reversed(ds.X_test.columns))].head(77)):
        p = predictor.predict_proba(frame)
        np.testing.assert_array_equal(p, predictor.predict_codes(ds.schema.to_codes(frame)))
    _assert_frame_path(predictor, ds.schema, ds.X_test)


def _assert_frame_path(predictor, schema, frame):
    """``predict_frame``: the scores of ``predict_proba`` and the categorical code columns of the reference coder,
    as the built-in net's direct path and as the code path every other model takes (the base class) give them."""
    from audit.model.adapter import Predictor

    cat = [j for j, f in enumerate(schema.features) if f.is_categorical]
    want = schema.to_codes_reference(frame)
    for p, codes in (predictor.predict_frame(frame), Predictor.predict_frame(predictor, frame)):
        np.testing.assert_array_equal(p, predictor.predict_codes(want))
        assert codes.dtype == np.int64 and codes.shape == (len(frame), len(cat))
        np.testing.assert_array_equal(codes, want[:, cat])


def test_dataframe_path_equals_the_code_path_on_messy_columns():
    """Object and Arrow text, numbers among text, labelled codes, pandas categoricals, nullable integers, text in a
    numeric column, missing values, never-seen levels, a heavy-tailed (log1p) column and extra columns."""
    from audit.schema import Feature, Schema

    s = Schema(
        (
            Feature("t", "categorical", ("a", "b", "3", "missing")),
            Feature("o", "categorical", ("a", "b", "3")),
            Feature("l", "categorical", ("male", "female"), labels=(("1", "male"), ("2", "female"))),
            Feature("k", "categorical", ("x", "y")),
            Feature("v", "numeric"),
            Feature("w", "numeric"),
            Feature("i", "numeric"),
            Feature("h", "numeric"),
        ),
        "y",
        "1",
        "0",
    )
    rng = np.random.default_rng(0)
    n = 9000
    df = pd.DataFrame(
        {
            "extra": np.arange(n),
            "t": pd.array(rng.choice(["a", None, "3", "zz", "b"], n), dtype="str"),
            "o": pd.Series(rng.choice(np.array(["a", 3, None, "b", 3.0, "q"], dtype=object), n), dtype=object),
            "l": rng.choice([1, 2, np.nan, 3], n),
            "k": pd.Categorical(rng.choice(["x", "y", None, "new"], n)),  # a category never seen in training
            "v": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
            "w": pd.Series(rng.choice(np.array(["1", "2.5", "x", None, 4], dtype=object), n), dtype=object),
            "i": pd.array(rng.choice([1, 5, None], n), dtype="Int64"),
            "h": rng.pareto(1.5, n) * 1000,
        }
    )
    predictor = _random_net(s, df)
    assert any(predictor.preprocessing.log1p)
    np.testing.assert_array_equal(predictor.predict_proba(df), predictor.predict_codes(s.to_codes(df)))
    _assert_frame_path(predictor, s, df)
    # pandas categoricals whose categories are not all text take the general path (their level text decides)
    for values in ([1, 2, None, 3], [1.0, 2.0, None], ["x", 1, None]):
        other = df.assign(k=pd.Categorical(rng.choice(np.array(values, dtype=object), n)))
        _assert_frame_path(predictor, s, other)
    numeric_levels = Schema(
        (Feature("k", "categorical", ("1", "2", "missing")), Feature("v", "numeric")), "y", "1", "0"
    )
    frame = pd.DataFrame({"k": pd.Categorical(rng.choice([1.0, 2.0, 2.5, None], n)), "v": rng.normal(size=n)})
    _assert_frame_path(_random_net(numeric_levels, frame), numeric_levels, frame)


def test_model_inputs_changed_in_place_score_as_the_changed_code_rows(tiny_model):
    """Explainers may change columns of :meth:`inputs` instead of code rows (issue 17): the same scores, bit for bit,
    for a numeric and a categorical column, including values outside the training levels and missing numbers."""
    _, ds, predictor, _ = tiny_model
    codes = ds.schema.to_codes(ds.X_test)
    for j, values in ((0, [np.nan, -3.0, 1e6]), (ds.schema.feature_names.index("colour"), [0.0, 99.0, np.nan])):
        changed = codes.copy()
        changed[:, j] = np.resize(values, len(codes))
        inputs = predictor.inputs(codes)
        a, c = predictor.input_column(j)
        inputs[a][:, c] = predictor.inputs(changed)[a][:, c]
        np.testing.assert_array_equal(predictor.predict_inputs(inputs), predictor.predict_codes(changed))
    wrapped = CallablePredictor(predictor.predict_proba, ds.schema)  # any other model: its inputs are the code rows
    inputs = wrapped.inputs(codes)
    np.testing.assert_array_equal(inputs[0], codes)
    assert len(inputs) == 1 and wrapped.input_column(2) == (0, 2)
    np.testing.assert_array_equal(wrapped.predict_inputs(inputs), predictor.predict_codes(codes))


def test_scoring_forward_equals_the_training_forward_bit_for_bit(tiny_model):
    """Issue 17: without gradients the net applies its ReLUs in place and skips evaluation-mode dropout; the logits are
    the very same, and the caller's input is never changed (even by a body that starts with a ReLU)."""
    import copy

    _, ds, predictor, _ = tiny_model
    x_num, x_cat = predictor.tensors(ds.schema.to_codes(ds.X_test))
    net = copy.deepcopy(predictor.net).eval()
    z = net.embed(x_num, x_cat).detach()
    for body in (net.body, torch.nn.Sequential(torch.nn.ReLU(), *net.body)):
        net.body = body
        layered = net.head(net.body(z)).squeeze(-1).detach()  # module by module, as with gradients
        before = z.clone()
        with torch.inference_mode():
            fast = net.forward_embedded(z)
        assert torch.equal(fast, layered) and torch.equal(z, before)
        with torch.enable_grad():
            assert torch.equal(net.forward_embedded(z).detach(), layered)
    assert any(isinstance(m, torch.nn.ReLU) for m in predictor.net.body)
    seen = []  # a forward hook on a ReLU still sees every call (the activations section relies on it)
    relu = next(m for m in net.body if isinstance(m, torch.nn.ReLU))
    handle = relu.register_forward_hook(lambda mod, inp, out: seen.append(out.clone()))
    with torch.inference_mode():
        assert torch.equal(net.forward_embedded(z), layered)
    handle.remove()
    assert len(seen) == 1 and (seen[0] >= 0).all()


def test_unseen_category_and_missing_numeric_are_scored(tiny_model):
    _, ds, predictor, _ = tiny_model
    df = ds.X_test.head(3).copy()
    df["colour"] = ["purple", "red", None]
    df.loc[0, "x1"] = np.nan
    p = predictor.predict_proba(df)
    assert p.shape == (3,) and np.isfinite(p).all()


def test_save_load_round_trip(tiny_model, tmp_path):
    _, ds, predictor, res = tiny_model
    h = save_model(
        tmp_path / "m", predictor, architecture=res.architecture, history=res.history, best_epoch=res.best_epoch
    )
    assert h == model_hash(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict_proba(ds.X_test), predictor.predict_proba(ds.X_test))
    assert loaded.schema == ds.schema
    for name in ("schema.json", "preprocessing.json", "model.json"):
        json.loads((tmp_path / "m" / name).read_text())  # plain JSON, no pickle


def test_corrupt_or_incomplete_artifacts_fail_clearly(tiny_model, tmp_path):
    from audit.errors import ModelLoadError

    _, _, predictor, res = tiny_model
    save_model(tmp_path / "m", predictor, architecture=res.architecture, history=res.history, best_epoch=0)
    (tmp_path / "m" / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match=r"weights\.pt' cannot be loaded"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "schema.json").unlink()
    with pytest.raises(ModelLoadError, match=r"lacks \['schema\.json'\]"):
        load_model(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="is not a model folder"):
        load_model(tmp_path / "nowhere")


def test_weights_are_loaded_without_pickle(tiny_model, tmp_path):
    """A weights file carrying an arbitrary pickled object is refused (weights_only=True)."""
    from audit.errors import ModelLoadError

    _, _, predictor, res = tiny_model
    save_model(tmp_path / "m", predictor, architecture=res.architecture, history=res.history, best_epoch=0)
    torch.save({"evil": pd.DataFrame({"a": [1]})}, tmp_path / "m" / "weights.pt")
    with pytest.raises(ModelLoadError, match="cannot be loaded"):
        load_model(tmp_path / "m")


def test_a_rows_score_does_not_depend_on_how_it_was_batched(tiny_model):
    """Scores are a function of the row alone (see audit.model.adapter.ROW_ALIGN): any split of the rows into calls,
    any position of a row among others, any thread count gives the same bits."""
    import torch

    _, ds, predictor, _ = tiny_model
    X = ds.schema.to_codes(ds.X_test)
    ref = predictor.predict_codes(X)
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 7, 63, 64, 65, 100, 129):
        parts = [predictor.predict_codes(X[i : i + size]) for i in range(0, len(X), size)]
        np.testing.assert_array_equal(np.concatenate(parts), ref, err_msg=f"calls of {size} rows")
    order = rng.permutation(len(X))
    np.testing.assert_array_equal(predictor.predict_codes(X[order]), ref[order])
    filler = np.repeat(X[:1], 63, axis=0)
    for i in rng.choice(len(X), 20, replace=False):
        assert predictor.predict_codes(np.vstack([filler, X[i : i + 1]]))[-1] == ref[i]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        np.testing.assert_array_equal(predictor.predict_codes(X), ref)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("n", "batch_size"), [(1000, 128), (1024, 128), (50, 64)])
@pytest.mark.parametrize("stop_at_len", [False, True])
def test_fast_batches_are_the_dataloaders_batches_and_random_draws(n, batch_size, stop_at_len):
    """Issue 17: training slices whole tensors instead of collating rows; the batches and every random number drawn
    (the shuffling generator and the global one dropout uses) must be exactly the DataLoader's, epoch after epoch,
    whether the consumer runs the iterator to its end or stops after ``len`` batches as Lightning does."""
    from itertools import islice

    from torch.utils.data import DataLoader, TensorDataset

    from audit.model.batches import Batches

    g = torch.Generator().manual_seed(0)
    tensors = (torch.randn(n, 3, generator=g), torch.randint(0, 5, (n, 2), generator=g), torch.rand(n, generator=g))

    def epochs(make_train, make_val):
        torch.manual_seed(7)
        train, val, out = make_train(), make_val(), []
        for _ in range(3):
            it = iter(train)
            for batch in islice(it, len(train)) if stop_at_len else it:
                out.append([t.clone() for t in batch])
                out.append([torch.rand(2)])  # dropout's draws from the global generator between batches
            out.extend([list(b) for b in val])
            out.append([torch.rand(2)])
        return out

    ref = epochs(
        lambda: DataLoader(
            TensorDataset(*tensors), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(3)
        ),
        lambda: DataLoader(TensorDataset(*tensors), batch_size=300, shuffle=False),
    )
    fast = epochs(
        lambda: Batches(tensors, batch_size, generator=torch.Generator().manual_seed(3)),
        lambda: Batches(tensors, 300),
    )
    assert len(ref) == len(fast)
    for a, b in zip(ref, fast, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize(("max_epochs", "patience", "batch_size"), [(40, 1, 64), (3, 5, 100)])
def test_plain_loop_trains_the_weights_lightning_trains(tiny_model, max_epochs, patience, batch_size):
    """Issue 17: the default engine is a plain PyTorch loop (no Lightning import, no hooks); it must give the very
    weights, history and early-stopping epoch of the Lightning engine, bit for bit, and leave the caller's random
    state and determinism setting as they were."""
    cfg, ds, _, _ = tiny_model
    mc = cfg.model.model_copy(
        update={"max_epochs": max_epochs, "patience": patience, "batch_size": batch_size, "learning_rate": 0.02}
    )
    codes = ds.schema.to_codes(ds.X_train)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    plain = train_model(ds.schema, codes, ds.y_train, mc, validation_size=0.2, seed=3, trainer="torch")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not torch.are_deterministic_algorithms_enabled()
    lit = train_model(ds.schema, codes, ds.y_train, mc, validation_size=0.2, seed=3, trainer="lightning")
    assert plain.history == lit.history and plain.best_epoch == lit.best_epoch
    if max_epochs == 40:
        assert len(plain.history) < max_epochs  # early stopping fired, at the same epoch
    a, b = plain.net.state_dict(), lit.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.use_deterministic_algorithms(False)  # Lightning leaves it on; the plain loop does not


@pytest.mark.parametrize(
    "numeric, categorical",
    [((0, 2, 3), (1, 4, 5)), ((0, 1, 2), (3, 4, 5)), ((0,), (1,)), ((), (1, 4, 5)), ((0, 2), ())],
)
def test_preprocessing_takes_the_columns_it_transforms_in_row_order(numeric, categorical):
    """transform selects its columns with a view (a run of adjacent columns) or np.take instead of a list index; the
    arrays are the same values, dtypes and row order as transforming codes[:, list(idx)], with missing values,
    negative and out-of-table codes."""
    from audit.model.network import Preprocessing

    rng = np.random.default_rng(0)
    codes = rng.normal(size=(1000, 6))
    codes[:, list(categorical)] = rng.integers(-1, 6, (1000, len(categorical)))
    codes[3, :] = np.nan
    p = Preprocessing(
        numeric,
        categorical,
        tuple(k == 0 for k in range(len(numeric))),
        (0.1,) * len(numeric),
        (2.0,) * len(numeric),
        (4,) * len(categorical),
    )
    got = p.transform(codes)
    want = p.transform_columns(codes[:, list(numeric)], codes[:, list(categorical)])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
        assert g.dtype == w.dtype and g.flags["C_CONTIGUOUS"]
