"""W4-W6 of shared/bench/WORKLOADS.md: SHAP, LIME and counterfactuals, ours beside shap, lime and DiCE.

The reference tools get the same model through its DataFrame predict (what a tool that only sees ``predict(df)``
can use); ours perturbs code-space arrays and calls the network directly. Quality figures are computed by the same
code for every tool.
"""

from __future__ import annotations

import warnings

import numpy as np

from audit.explain.counterfactual import Constraints, counterfactuals, mad_scale
from audit.explain.local_surrogate import lime_explanations
from audit.explain.shapley import shapley_values

W6_IMMUTABLE = ("race", "sex", "native-country", "age")


def _cf_quality(pred, schema, X, CF, train, tool):
    """Validity (re-scored through the DataFrame predict), proximity, sparsity, violations for (X, CF) pairs.

    CF rows are NaN where a tool returned nothing; those count as not valid.
    """
    cat = schema.categorical_mask
    scale = mad_scale(train, cat)
    found = ~np.isnan(CF).any(axis=1)
    valid = np.zeros(len(X), dtype=bool)
    if found.any():
        p_cf = pred.predict_proba(schema.from_codes(CF[found]))
        p_x = pred.predict_proba(schema.from_codes(X[found]))
        valid[found] = (p_cf >= 0.5) != (p_x >= 0.5)
    x, c = X[valid], CF[valid]
    names = schema.feature_names
    imm = [names.index(f) for f in W6_IMMUTABLE]
    num = ~cat
    support = 0
    for j, f in enumerate(schema.features):
        changed = c[:, j] != x[:, j]
        if f.is_categorical:
            support += int((changed & ~np.isin(c[:, j], np.unique(train[:, j]))).sum())
        else:
            support += int((changed & ((c[:, j] < train[:, j].min()) | (c[:, j] > train[:, j].max()))).sum())
    integer = num & np.all(train == np.round(train), axis=0)
    return {
        "workload": "W6",
        "tool": tool,
        "validity": float(valid.mean()),
        "proximity (mean |change|/MAD over numerics)": float((np.abs(c - x)[:, num] / scale[num]).mean()),
        "categoricals changed (share)": float((c[:, cat] != x[:, cat]).mean()),
        "sparsity (features changed)": float((c != x).sum(axis=1).mean()),
        "violations: immutable": int((c[:, imm] != x[:, imm]).sum()),
        "violations: integer": int((c[:, integer] != np.round(c[:, integer])).sum()),
        "violations: outside training support": support,
    }


def exact_shapley(pred, X, B, names, cache, key):
    """Exact interventional Shapley values (all 2^14 coalitions over the 100 background rows), cached by model."""
    path = cache / f"exact_shap_{key[:16]}_{len(X)}.npy"
    if path.is_file():
        return np.load(path)
    phi = shapley_values(pred.predict_codes, X, B, feature_names=names, method="exact").values
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, phi)
    return phi


def _accuracy(phi, exact):
    err = np.abs(phi[: len(exact)] - exact)
    return {"max |phi - exact|": float(err.max()), "mean |phi - exact|": float(err.mean())}


def run_local(pred, ds, codes, record, ours_count, DataFrameModel, *, skip_dice=False, cache, key):
    """Times W4-W6 into the shared table via ``record``; returns the quality rows."""
    schema = ds.schema
    names = schema.feature_names
    n = len(codes)
    inst = np.random.default_rng(0).choice(n, 100, replace=False)
    bg = np.random.default_rng(1).choice(n, 100, replace=False)
    X, B = codes[inst], codes[bg]
    train = schema.to_codes(ds.X_train)
    quality = []

    def df_predict(A):
        """The DataFrame path for tools that pass numeric arrays: codes -> DataFrame -> predict_proba."""
        return df_model.predict_proba(schema.from_codes(np.asarray(A, dtype=np.float64)))[:, 1]

    df_model = DataFrameModel(pred)

    # W4: SHAP, 100 instances, background 100 rows; both run 10 antithetic pairs of feature orders. shap spends
    # 2k+1 evaluations per pair on an instance with k varying features, so max_evals = 10 (2k+1) per instance.
    # Accuracy: against the exact Shapley values of the first 20 instances (additivity holds by construction).
    n_pairs = 10
    exact = exact_shapley(pred, X[:20], B, names, cache, key)
    ours = record(
        "W4",
        f"audit (batched permutation SHAP, {n_pairs} pairs)",
        lambda: shapley_values(
            pred.predict_codes, X, B, feature_names=names, method="permutation", n_permutations=n_pairs, random_state=0
        ),
        ours_count,
    )
    quality.append(
        {
            "workload": "W4",
            "tool": "audit",
            "max additivity error": float(ours.additivity_error.max()),
            **_accuracy(ours.values, exact),
        }
    )
    import shap

    varying = (X[:, None, :] != B[None, :, :]).any(axis=1).sum(axis=1)

    def shap_run():
        masker = shap.maskers.Independent(B, max_samples=len(B))
        explainer = shap.PermutationExplainer(df_predict, masker, seed=0)
        values = np.empty_like(X)
        base = np.empty(len(X))
        for k in np.unique(varying):
            rows = np.flatnonzero(varying == k)
            e = explainer(X[rows], max_evals=n_pairs * (2 * int(k) + 1), silent=True)
            values[rows], base[rows] = e.values, e.base_values
        return values, base

    ref, ref_base = record("W4", f"shap PermutationExplainer ({n_pairs} pairs)", shap_run, lambda: df_model.rows)
    quality.append(
        {
            "workload": "W4",
            "tool": "shap",
            "max additivity error": float(np.abs(ref_base + ref.sum(axis=1) - ours.predictions).max()),
            **_accuracy(ref, exact),
        }
    )

    # W5: LIME, the same 100 instances, 5,000 samples each, on all 14 features as WORKLOADS.md defines it, and on
    # lime's default of 10 features; quartile bins for both tools
    cat_idx = list(np.flatnonzero(schema.categorical_mask))
    levels = [list(f.levels) if f.is_categorical else None for f in schema.features]
    m = len(names)
    for nf in (m, 10):
        res = record(
            "W5",
            f"audit (batched LIME, {nf} features)",
            lambda nf=nf: lime_explanations(
                pred.predict_codes,
                X,
                train,
                feature_names=names,
                categorical_mask=schema.categorical_mask,
                level_names=levels,
                num_samples=5000,
                num_features=nf,
                random_state=0,
            ),
            ours_count,
        )
        quality.append(
            {"workload": "W5", "tool": f"audit, {nf} features", "mean fidelity (R^2)": float(res.score.mean())}
        )
    from lime.lime_tabular import LimeTabularExplainer

    def lime_proba(A):
        p = df_predict(A)
        return np.column_stack([1 - p, p])

    for nf in (m, 10):

        def lime_all(nf=nf):
            explainer = LimeTabularExplainer(train, feature_names=names, categorical_features=cat_idx, random_state=0)
            return [
                explainer.explain_instance(X[i], lime_proba, num_features=nf, num_samples=5000) for i in range(len(X))
            ]

        exps = record("W5", f"lime LimeTabularExplainer ({nf} features)", lime_all, lambda: df_model.rows)
        quality.append(
            {
                "workload": "W5",
                "tool": f"lime, {nf} features",
                "mean fidelity (R^2)": float(np.mean([e.score for e in exps])),
            }
        )

    # W6: counterfactuals for the first 50 rows predicted negative; immutable race, sex, native-country, age
    p = pred.predict_codes(codes)
    neg = np.flatnonzero(p < 0.5)[:50]
    Xn = codes[neg]
    cons = Constraints(immutable=W6_IMMUTABLE)
    res = record(
        "W6",
        "audit (batched counterfactual search)",
        lambda: counterfactuals(pred.predict_codes, Xn, train, schema=schema, constraints=cons, random_state=0),
        ours_count,
    )
    quality.append(_cf_quality(pred, schema, Xn, res.counterfactuals[:, 0], train, "audit"))
    if skip_dice:
        return quality
    try:
        import dice_ml
    except ImportError:
        print("W6: dice-ml is not installed (pip install -e '.[bench]'); DiCE left out")
        return quality
    # the same values as the model sees, missing categoricals as their level; integer columns as int64 so DiCE keeps
    # them integer (it rounds to the precision of the data it is given)
    integer = {
        f.name: "int64"
        for j, f in enumerate(schema.features)
        if not f.is_categorical and np.all(train[:, j] == np.round(train[:, j]))
    }
    frame = schema.from_codes(train).astype(integer)
    frame["income"] = ds.y_train
    query = schema.from_codes(Xn).astype(integer)
    vary = [f for f in names if f not in W6_IMMUTABLE]
    for method in ("random", "genetic"):

        def run(method=method):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = dice_ml.Data(
                    dataframe=frame,
                    continuous_features=[f.name for f in schema.features if not f.is_categorical],
                    outcome_name="income",
                )
                dice = dice_ml.Dice(data, dice_ml.Model(model=df_model, backend="sklearn"), method=method)
                seed = {"random_seed": 0} if method == "random" else {}
                return dice.generate_counterfactuals(
                    query, total_CFs=1, desired_class="opposite", features_to_vary=vary, verbose=False, **seed
                )

        out = record("W6", f"DiCE {method}", run, lambda: df_model.rows)
        CF = np.full_like(Xn, np.nan)
        for i, ex in enumerate(out.cf_examples_list):
            df = ex.final_cfs_df
            if df is not None and len(df):
                CF[i] = schema.to_codes(df[names].head(1))
        quality.append(_cf_quality(pred, schema, Xn, CF, train, f"DiCE {method}"))
    return quality
