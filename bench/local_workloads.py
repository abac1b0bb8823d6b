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


def run_local(pred, ds, codes, record, ours_count, DataFrameModel, *, skip_dice=False):
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

    # W4: SHAP, 100 instances, background 100 rows; both run 10 antithetic pairs of feature orders
    ours = record(
        "W4",
        "audit (batched permutation SHAP)",
        lambda: shapley_values(pred.predict_codes, X, B, feature_names=names, method="permutation", random_state=0),
        ours_count,
    )
    quality.append({"workload": "W4", "tool": "audit", "max additivity error": float(ours.additivity_error.max())})
    import shap

    masker = shap.maskers.Independent(B, max_samples=100)
    explainer = shap.PermutationExplainer(df_predict, masker, seed=0)
    explainer(X[:2], silent=True)  # warm: numba compiles on first use
    ref = record("W4", "shap PermutationExplainer", lambda: explainer(X, silent=True), lambda: df_model.rows, repeat=1)
    ref_err = np.abs(np.asarray(ref.base_values) + ref.values.sum(axis=1) - ours.predictions).max()
    quality.append(
        {
            "workload": "W4",
            "tool": "shap",
            "max additivity error": float(ref_err),
            "max |phi(audit) - phi(shap)|": float(np.abs(ours.values - ref.values).max()),
        }
    )

    # W5: LIME, the same 100 instances, 5,000 samples each; lime's defaults (10 features, quartile bins)
    cat_idx = list(np.flatnonzero(schema.categorical_mask))
    levels = [list(f.levels) if f.is_categorical else None for f in schema.features]
    for nf, label in ((10, "audit (batched LIME, 10 features as lime)"), (None, "audit (batched LIME, all features)")):
        res = record(
            "W5",
            label,
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
        quality.append({"workload": "W5", "tool": label, "mean fidelity (R^2)": float(res.score.mean())})
    from lime.lime_tabular import LimeTabularExplainer

    lime_explainer = LimeTabularExplainer(train, feature_names=names, categorical_features=cat_idx, random_state=0)

    def lime_proba(A):
        p = df_predict(A)
        return np.column_stack([1 - p, p])

    def lime_all():
        return [
            lime_explainer.explain_instance(X[i], lime_proba, num_features=10, num_samples=5000) for i in range(len(X))
        ]

    exps = record("W5", "lime LimeTabularExplainer", lime_all, lambda: df_model.rows, repeat=1)
    quality.append({"workload": "W5", "tool": "lime", "mean fidelity (R^2)": float(np.mean([e.score for e in exps]))})

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
    data = dice_ml.Data(
        dataframe=frame,
        continuous_features=[f.name for f in schema.features if not f.is_categorical],
        outcome_name="income",
    )
    query = schema.from_codes(Xn).astype(integer)
    vary = [f for f in names if f not in W6_IMMUTABLE]
    for method in ("random", "genetic"):
        dice = dice_ml.Dice(data, dice_ml.Model(model=df_model, backend="sklearn"), method=method)

        def run(dice=dice, method=method):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seed = {"random_seed": 0} if method == "random" else {}
                return dice.generate_counterfactuals(
                    query, total_CFs=1, desired_class="opposite", features_to_vary=vary, verbose=False, **seed
                )

        out = record("W6", f"DiCE {method}", run, lambda: df_model.rows, repeat=1)
        CF = np.full_like(Xn, np.nan)
        for i, ex in enumerate(out.cf_examples_list):
            df = ex.final_cfs_df
            if df is not None and len(df):
                CF[i] = schema.to_codes(df[names].head(1))
        quality.append(_cf_quality(pred, schema, Xn, CF, train, f"DiCE {method}"))
    return quality
