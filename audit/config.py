"""Audit configuration: typed pydantic models, validated once on load.

Every section forbids unknown keys; :func:`load_config` turns pydantic's errors into one line per problem that
names the key path, the bad value, what is allowed and, for a misspelt key, the closest valid key.

Relative paths in a config (data files, model artifacts, the output folder) are resolved against the folder
that holds the config file, so an audit gives the same result whatever the working directory.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from audit.errors import ConfigError

__all__ = [
    "AuditConfig",
    "load_config",
    "config_from_dict",
]


class _Section(BaseModel):
    # inf and NaN never reach a numerical library; no string in a config needs more than 20,000 characters
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, str_max_length=20_000)


class ColumnKind:
    """Marks a config value that names a column, and what it must name (see :mod:`audit.references`).

    ``column``: a column of the data file; ``feature``: a model input; ``numeric`` / ``categorical``: a model input of
    that kind; ``sensitive``: a sensitive feature (``fairness.sensitive_features`` or ``fairness.derived``);
    ``feature_or_sensitive``: either.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"ColumnKind({self.kind!r})"


def _as_text(v: Any) -> Any:
    """YAML reads ``1:`` as an integer key and ``1.0`` as a float; a level or label named by a number is its text."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, int | float):
        return str(v)
    return v


Text = Annotated[str, BeforeValidator(_as_text)]  # a level, a label: numbers in YAML are accepted as their text
Column = Annotated[str, ColumnKind("column"), BeforeValidator(_as_text)]
FeatureRef = Annotated[str, ColumnKind("feature")]
NumericRef = Annotated[str, ColumnKind("numeric")]
CategoricalRef = Annotated[str, ColumnKind("categorical")]
SensitiveRef = Annotated[str, ColumnKind("sensitive")]
FeatureOrSensitiveRef = Annotated[str, ColumnKind("feature_or_sensitive")]

PosInt = Annotated[int, Field(gt=0, le=2**31 - 1)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def Bounded(low: int, high: int):  # noqa: N802 - reads as a type
    """An integer in [low, high]: every size that allocates memory or costs model evaluations has an upper bound."""
    return Annotated[int, Field(ge=low, le=high)]


def _path_text(v: Any) -> Any:
    """A file path from a config: no NUL byte, at most 4,096 characters, a home folder (~user) that exists."""
    if isinstance(v, str):
        if "\x00" in v:
            raise ValueError("contains a NUL byte; write the path without it")
        if len(v) > 4096:
            raise ValueError(f"is {len(v)} characters long, more than 4,096; shorten the path")
        if v.startswith("~"):
            try:
                Path(v).expanduser()
            except RuntimeError:
                user = v[1:].split("/", 1)[0]
                raise ValueError(
                    f"names the home folder of '{user}', who does not exist here; give a full path"
                ) from None
    return v


PathText = Annotated[str, BeforeValidator(_path_text)]
ColumnList = Annotated[list[Column], Field(max_length=10_000)]


class CsvOptions(_Section):
    """How to parse a CSV (or gzip CSV) file; passed to :func:`pandas.read_csv`."""

    sep: str = Field(default=",", min_length=1, max_length=8)
    header: Literal["infer", "none"] = "infer"
    names: list[Annotated[str, Field(max_length=1000)]] | None = Field(default=None, max_length=10_000)
    na_values: list[Annotated[str, Field(max_length=1000)]] = Field(default_factory=list, max_length=1000)
    skipinitialspace: bool = False
    encoding: str = Field(default="utf-8", max_length=64)


class DataFile(_Section):
    """One data file. ``sha256`` is verified before parsing when given."""

    path: PathText
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    format: Literal["auto", "csv", "parquet"] = "auto"
    skiprows: Bounded(0, 1_000_000) = 0


class SplitConfig(_Section):
    """Seeded stratified split, used when the dataset has no separate test file."""

    test_size: Fraction = 0.25
    stratify: bool = True


class FeatureTypes(_Section):
    """Overrides for inferred feature types (numeric dtypes are numeric, everything else categorical)."""

    numeric: ColumnList = Field(default_factory=list)
    categorical: ColumnList = Field(default_factory=list)


class DatasetConfig(_Section):
    """Where the data is and how to read it."""

    name: str | None = Field(default=None, max_length=300)
    train: DataFile
    test: DataFile | None = None
    csv: CsvOptions = CsvOptions()
    target: Column
    positive_label: Text
    favourable_label: Text | None = None
    label_map: dict[Text, Text] = Field(default_factory=dict)
    columns: ColumnList | None = None
    index_col: Column | None = None
    weight: Column | None = None  # a sample-weight column: weights every estimate, never a model input
    filter: str | None = Field(default=None, max_length=2000)
    value_labels: dict[Column, dict[Text, Text]] = Field(default_factory=dict, max_length=10_000)
    features: FeatureTypes = FeatureTypes()
    drop: ColumnList = Field(default_factory=list)
    tied: list[list[FeatureRef]] = Field(default_factory=list, max_length=1000)
    split: SplitConfig = SplitConfig()
    validation_size: Fraction = 0.15
    max_categories: Bounded(1, 1_000_000) = 1000
    max_rows: PosInt | None = None
    max_columns: Bounded(1, 100_000) = 1000
    max_file_mb: Bounded(1, 10_000_000) = 1024
    unseen_categories: Literal["unknown", "error"] = "unknown"
    population: DataFile | None = None

    @field_validator("filter")
    @classmethod
    def _filter_parses(cls, v: str | None) -> str | None:
        if v is not None:
            from audit.expr import parse_filter

            parse_filter(v)  # ValueError names the problem
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DatasetConfig:
        pop = self.population
        suffix_ok = pop is not None and pop.path.lower().endswith((".parquet", ".pq"))
        if pop is not None and (pop.format == "csv" or (pop.format == "auto" and not suffix_ok)):
            raise ValueError(
                f"dataset.population: '{pop.path}' must be a Parquet file (it is read in row groups, never whole); "
                "convert it, e.g. pandas.read_csv(...).to_parquet(path, row_group_size=65536)"
            )
        if self.weight is not None and pop is not None:
            raise ValueError(
                f"dataset.weight: '{self.weight}' cannot be used with dataset.population (a population's rows are "
                "scored in partitions that carry no weights); remove dataset.weight or dataset.population"
            )
        for name, labels in self.value_labels.items():
            clash = [k for k, v in labels.items() if v in labels and v != k]
            if clash:
                raise ValueError(
                    f"dataset.value_labels.{name}: label(s) {[labels[k] for k in clash]} are also codes of the same "
                    "column; pick labels that are not codes"
                )
            if name in self.features.numeric:
                raise ValueError(
                    f"dataset.value_labels.{name}: '{name}' is listed in dataset.features.numeric; a column with value "
                    "labels is categorical, remove it from dataset.features.numeric"
                )
        for group in self.tied:
            if len(group) < 2 or len(set(group)) != len(group):
                raise ValueError(f"dataset.tied: {group} needs two or more distinct features")
        seen: set[str] = set()
        for group in self.tied:
            again = seen & set(group)
            if again:
                raise ValueError(f"dataset.tied: {sorted(again)} appear in two groups; merge the groups")
            seen |= set(group)
        return self


class OnnxColumn(_Section):
    """One column of an ONNX graph's float matrix input: a numeric ``(value - mean) / scale``, or a categorical as
    one-hot columns over ``one_hot`` levels (an unlisted level: all zero) or its index in ``codes`` (unlisted: -1)."""

    column: FeatureRef
    mean: float = 0.0
    scale: Annotated[float, Field(gt=0.0)] = 1.0
    one_hot: list[Text] | None = Field(default=None, min_length=1, max_length=100_000)
    codes: list[Text] | None = Field(default=None, min_length=1, max_length=100_000)


class ModelConfig(_Section):
    """Train the built-in tabular net, or load a saved artifact."""

    source: Literal["train", "load"] = "train"
    path: PathText | None = None
    hidden: list[Bounded(1, 16_384)] = Field(default_factory=lambda: [64, 64], max_length=32)
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    embedding_dim: Bounded(1, 1024) | None = None
    max_epochs: Bounded(1, 100_000) = 30
    batch_size: Bounded(1, 1 << 20) = 512
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0.0, le=10.0)] = 1e-5
    patience: Bounded(1, 100_000) = 3
    threshold: Probability = 0.5
    predict_batch_size: Bounded(64, 1 << 22) = 8192
    trainer: Literal["torch", "lightning"] = "torch"
    trust: bool = False
    format: Literal["auto", "artifact", "onnx", "torchscript", "lightning", "skops", "mlflow", "pickle", "http"] = (
        "auto"
    )
    trusted_types: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        default_factory=list, max_length=200
    )
    export: list[Literal["onnx", "torchscript"]] = Field(default_factory=list, max_length=2)
    # lightning: the user's LightningModule, "package.module:ClassName"
    module_class: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$", max_length=300
    )
    # which output holds the positive label's probability (ONNX output / kserve output / mlflow mapping key), and
    # its column when the output has one column per class
    output: str | None = Field(default=None, min_length=1, max_length=300)
    output_index: Bounded(0, 10_000) | None = None
    # onnx: the columns of a graph that takes one float matrix, in order
    onnx_columns: list[OnnxColumn] | None = Field(default=None, min_length=1, max_length=100_000)
    # http: a scoring endpoint
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=2000)
    payload: Literal["kserve-v2", "mlflow-invocations", "template"] = "kserve-v2"
    template: str | None = Field(default=None, max_length=100_000)
    response_path: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]*$", max_length=300)
    timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0
    retries: Bounded(0, 20) = 3
    backoff_s: Annotated[float, Field(ge=0.0, le=60.0)] = 0.5
    max_concurrency: Bounded(1, 64) = 4
    max_requests: PosInt | None = None
    max_rows: Annotated[int, Field(gt=0, le=10**12)] | None = None
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=200)
    tls_ca: PathText | None = None  # https: a CA bundle (PEM) to verify the endpoint with, e.g. an internal CA

    @model_validator(mode="after")
    def _path_for_load(self) -> ModelConfig:
        http = self.format == "http" or (self.format == "auto" and self.url is not None)
        if http:
            if self.source != "load" or not self.url:
                raise ValueError("model.format 'http' needs model.source: load and model.url (the endpoint's address)")
            if self.path:
                raise ValueError("model.url and model.path are both set; an endpoint needs only model.url")
        elif self.url is not None:
            raise ValueError(f"model.url is set but model.format is {self.format!r}; set model.format: http")
        elif self.source == "load" and not self.path:
            raise ValueError("model.source is 'load' but model.path is missing; set model.path to a saved model folder")
        elif self.source == "train" and self.path:
            raise ValueError(
                f"model.path is '{self.path}' but model.source is 'train' (the default), which trains the built-in "
                "net and would ignore the path; add model.source: load to audit that model, or remove model.path"
            )
        if self.payload == "template" and http:
            if not self.template:
                raise ValueError("model.payload is 'template' but model.template is missing; give the JSON request")
            try:
                doc = json.loads(self.template)
            except ValueError as exc:
                raise ValueError(f"model.template is not JSON ({exc}); write the request body as JSON") from None
            if not any(f'"{p}"' in json.dumps(doc) for p in ("$records", "$rows")):
                raise ValueError('model.template has no "$records" or "$rows" placeholder for the rows')
        if self.onnx_columns and (self.source != "load" or self.format not in ("auto", "onnx")):
            raise ValueError("model.onnx_columns describes an ONNX graph's input; it needs source: load, format: onnx")
        if self.format == "lightning" and not self.module_class:
            raise ValueError(
                "model.format 'lightning' needs model.module_class, the LightningModule as 'package.module:ClassName'"
            )
        return self


class PerformanceConfig(_Section):
    enabled: bool = True
    n_bins: Bounded(1, 1000) = 10
    min_roc_auc: Probability | None = None
    max_overfit_gap: Probability = 0.05
    n_bootstrap: Bounded(0, 10_000) = 200
    estimate: bool = True  # with a population: the label-free estimate (CBPE), checked against labels when it has them
    n_simulations: Bounded(20, 10_000) = 400


class PermutationConfig(_Section):
    enabled: bool = True
    metric: str = Field(default="roc_auc", max_length=100)
    n_repeats: Bounded(1, 1000) = 5
    max_rows: PosInt | None = None
    groups: dict[str, list[FeatureRef]] = Field(default_factory=dict, max_length=10_000)
    top_k: Bounded(1, 10_000) = 3
    proxies: list[FeatureRef] = Field(default_factory=list, max_length=10_000)
    n_bootstrap: Bounded(0, 1000) = 50


class PartialDependenceConfig(_Section):
    enabled: bool = True
    features: list[FeatureRef] | None = Field(default=None, max_length=10_000)
    grid_resolution: Bounded(2, 1000) = 20
    sample_size: Bounded(1, 1_000_000) = 1000
    ice_curves: Bounded(1, 10_000) = 50
    centered: bool = True
    max_levels: Bounded(2, 1000) = 12
    pairs: list[tuple[FeatureRef, FeatureRef]] = Field(default_factory=list, max_length=50)
    max_features: Bounded(1, 10_000) = 30


class AleConfig(_Section):
    enabled: bool = True
    features: list[FeatureRef] | None = Field(default=None, max_length=10_000)
    n_bins: Bounded(2, 1000) = 20
    min_rows_per_bin: Bounded(1, 1_000_000) = 10
    sample_size: Bounded(1, 1_000_000) = 2000
    n_bootstrap: Bounded(0, 10_000) = 50
    pairs: list[tuple[FeatureRef, FeatureRef]] = Field(default_factory=list, max_length=50)
    max_features: Bounded(1, 10_000) = 30


class InteractionConfig(_Section):
    enabled: bool = True
    top_features: Bounded(2, 50) = 5
    sample_size: Bounded(2, 5000) = 150
    flag_above: Probability = 0.2


class DataQualityConfig(_Section):
    """Data quality of the audit rows against the training rows (issue 19)."""

    enabled: bool = True
    max_missing: Probability = 0.2  # share of audit rows missing a feature
    max_missing_increase: Probability = 0.05  # audit minus training share missing
    near_constant: Annotated[float, Field(gt=0.5, le=1.0)] = 0.99  # top value's share that makes a column near-constant
    max_duplicates: Probability = 0.05
    max_out_of_range: Probability = 0.01  # share of audit rows outside a numeric's training range
    max_unseen: Probability = 0.01  # share of audit rows at a level never seen in training
    max_class_balance_shift: Probability = 0.1  # |audit - training| positive rate
    # the class balance and the out-of-range share fail only beyond their limit *and* beyond chance at this level
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05


class DriftConfig(_Section):
    """Drift of the audit rows (and the score) away from the training rows: PSI / CSI and a test per feature."""

    enabled: bool = True
    n_bins: Bounded(2, 100) = 10
    psi_moderate: Annotated[float, Field(gt=0.0, le=10.0)] = 0.1
    psi_significant: Annotated[float, Field(gt=0.0, le=10.0)] = 0.25
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    correction: Literal["holm", "bh", "bonferroni", "none"] = "holm"
    features: list[FeatureRef] | None = Field(default=None, max_length=10_000)
    gate: bool = False  # a drifted feature or score fails the exit code

    @model_validator(mode="after")
    def _bands(self) -> DriftConfig:
        if self.psi_significant <= self.psi_moderate:
            raise ValueError(
                f"psi_significant ({self.psi_significant}) must be above psi_moderate ({self.psi_moderate})"
            )
        return self


class WeakSegmentsConfig(_Section):
    """Slices of the audit rows where the model errs significantly more than overall (SliceLine's formulation)."""

    enabled: bool = True
    metric: Literal["error", "log_loss", "brier"] = "error"  # per-row error: misclassified at the threshold, or a loss
    # "expected": a slice is weak when it errs more than the model's own scores predict there (so a slice near 50/50
    # is not weak for being hard); "overall": more than all rows do (SliceLine's original question)
    against: Literal["expected", "overall"] = "expected"
    n_bins: Bounded(2, 50) = 5
    max_level: Bounded(1, 3) = 2
    min_support: Bounded(5, 10_000_000) = 100
    alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95  # SliceLine's weight of error against size in its score
    significance: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    correction: Literal["holm", "bh", "bonferroni", "none"] = "holm"
    min_effect: Annotated[float, Field(ge=0.0)] = 0.02  # smallest excess error worth a finding
    top_k: Bounded(1, 100) = 10
    max_findings: Bounded(1, 100) = 3  # the worst weak segments that get a finding each; the table lists top_k


class StabilityConfig(_Section):
    """How often decisions flip under small, plausible noise, overall and per sensitive group."""

    enabled: bool = True
    numeric_scale: Annotated[float, Field(gt=0.0, le=10.0)] = 0.1  # noise: uniform within +- this fraction of the MAD
    categorical_swap: Probability = 0.01  # chance that a categorical moves to another level
    repeats: Bounded(1, 100) = 5
    max_flip_rate: Probability = 0.05
    max_rows: Bounded(100, 10_000_000) = 20_000


class FaithfulnessConfig(_Section):
    """Are the explanations faithful? Deletion / insertion against random order, randomisation check, rank agreement."""

    enabled: bool = True
    max_rows: Bounded(2, 10_000) = 100  # explained rows used
    background: Bounded(1, 1000) = 30  # training rows that "removed" features take their values from
    random_orders: Bounded(1, 100) = 5
    randomisation: bool = True
    randomisation_rows: Bounded(2, 10_000) = 30
    max_similarity: Annotated[float, Field(gt=-1.0, le=1.0)] = 0.5  # median Spearman that fails the randomisation check


class ContrastiveConfig(_Section):
    """Pertinent positives and negatives (CEM) of the explained rows, and how fragile their decisions are."""

    enabled: bool = True
    max_rows: Bounded(1, 10_000) = 40
    max_changes: Bounded(1, 3) = 2
    n_grid: Bounded(2, 100) = 10
    fragile_distance: Annotated[float, Field(ge=0.0)] = 0.5  # a reversal within this distance (MADs) is fragile
    max_fragile_share: Probability = 0.2
    min_group_rows: Bounded(1, 100_000) = 10  # groups with fewer explained rows are listed, not judged
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05  # a share above the limit fails only beyond chance too


class ModulesConfig(_Section):
    """Each audit module, on or off, with its own settings."""

    data_quality: DataQualityConfig = DataQualityConfig()
    drift: DriftConfig = DriftConfig()
    performance: PerformanceConfig = PerformanceConfig()
    permutation_importance: PermutationConfig = PermutationConfig()
    partial_dependence: PartialDependenceConfig = PartialDependenceConfig()
    ale: AleConfig = AleConfig()
    interactions: InteractionConfig = InteractionConfig()
    weak_segments: WeakSegmentsConfig = WeakSegmentsConfig()
    stability: StabilityConfig = StabilityConfig()
    faithfulness: FaithfulnessConfig = FaithfulnessConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()


class InstanceSelection(_Section):
    """Which audit (test) rows get local explanations; the selections are combined and capped at ``max_instances``."""

    ids: list[Bounded(0, 2**62)] = Field(default_factory=list, max_length=100_000)
    random: Bounded(0, 100_000) = 10
    declined: Bounded(0, 100_000) = 20
    borderline: Annotated[int, Field(ge=0)] = 10
    per_group: Annotated[int, Field(ge=0)] = 5
    max_instances: PosInt = 200

    @model_validator(mode="after")
    def _selects_something(self) -> InstanceSelection:
        if not (self.ids or self.random or self.declined or self.borderline or self.per_group):
            raise ValueError(
                "selects no rows; give ids or a count above 0 (random, declined, borderline, per_group), "
                "or set local.enabled: false"
            )
        return self


class BackgroundConfig(_Section):
    """Reference rows for SHAP, drawn from the training split."""

    size: Bounded(1, 10_000) = 100
    method: Literal["sample", "kmeans"] = "sample"


class ShapConfig(_Section):
    enabled: bool = True
    engine: Literal["audit", "shap"] = "audit"
    method: Literal["auto", "exact", "permutation"] = "auto"
    exact_max_features: Annotated[int, Field(ge=1, le=16)] = 10
    n_permutations: Bounded(1, 1000) = 10
    additivity_tolerance: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-6
    max_model_rows: Bounded(10_000, 10**10) = 5_000_000
    reason_codes: Bounded(1, 100) = 4
    waterfalls: Bounded(0, 50) = 3


class LimeConfig(_Section):
    enabled: bool = True
    engine: Literal["audit", "lime"] = "audit"
    num_samples: Bounded(100, 1_000_000) = 5000
    num_features: Bounded(1, 100_000) | None = None
    kernel_width: Annotated[float, Field(gt=0.0, le=1e6)] | None = None
    stability_runs: Bounded(0, 50) = 2
    top_k: Bounded(1, 1000) = 5
    min_stability: Probability = 0.6
    min_fidelity: Probability = 0.3
    max_features: Bounded(1, 10_000) = 30


class CounterfactualConfig(_Section):
    enabled: bool = True
    per_instance: Annotated[int, Field(ge=1, le=10)] = 1
    immutable: list[FeatureOrSensitiveRef] = Field(default_factory=list, max_length=10_000)
    ranges: dict[NumericRef, tuple[float | None, float | None]] = Field(default_factory=dict, max_length=10_000)
    monotone: dict[NumericRef, Literal["increase", "decrease"]] = Field(default_factory=dict, max_length=10_000)
    transitions: dict[CategoricalRef, dict[Text, list[Text]]] = Field(default_factory=dict, max_length=10_000)
    integer: list[NumericRef] | None = Field(default=None, max_length=10_000)
    max_changes: Bounded(1, 100) = 5
    sparsity_weight: Annotated[float, Field(ge=0.0, le=1e6)] = 3.0
    n_random: Bounded(0, 100_000) = 300
    max_features: Bounded(1, 10_000) = 30
    fragile_margin: Annotated[float, Field(ge=0.0, le=0.5)] = 0.02
    plausibility_quantile: Probability | None = 0.99
    max_not_found: Probability = 0.2
    # counterfactuals and pertinent negatives stay in the training support: numerics within these training
    # quantiles (0.01: the 1st to the 99th percentile; 0: minimum to maximum), levels with this many training rows
    support_quantile: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.01
    min_level_count: Bounded(1, 10_000_000) = 20


class LocalConfig(_Section):
    """Local explanations: SHAP values and reason codes, LIME surrogates, counterfactuals, for selected rows."""

    enabled: bool = True
    instances: InstanceSelection = InstanceSelection()
    background: BackgroundConfig = BackgroundConfig()
    shap: ShapConfig = ShapConfig()
    lime: LimeConfig = LimeConfig()
    counterfactuals: CounterfactualConfig = CounterfactualConfig()

    @model_validator(mode="after")
    def _engine_background(self) -> LocalConfig:
        if self.shap.engine == "shap" and self.background.method == "kmeans":
            raise ValueError(
                "shap.engine 'shap' cannot use a weighted k-means background (shap's Independent masker has no "
                "weights); set background.method: sample, or shap.engine: audit"
            )
        return self


class GradientsConfig(_Section):
    enabled: bool = True
    steps: Bounded(1, 10_000) = 32
    max_completeness_error: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    lrp: bool = True  # layer-wise relevance propagation beside IG: the epsilon and the alpha=1, beta=0 rules
    lrp_epsilon: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-6


class ActivationsConfig(_Section):
    enabled: bool = True
    sample_size: Bounded(2, 1_000_000) = 2000
    tsne: bool = False
    max_dead_share: Probability = 0.2


class UncertaintyConfig(_Section):
    enabled: bool = True
    passes: Bounded(2, 1000) = 30
    level: Fraction = 0.9
    max_group_ratio: Annotated[float, Field(ge=1.0, le=1e6)] = 1.5
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05  # a ratio above the limit fails only beyond chance too


class NetworkConfig(_Section):
    """Inside the built-in network: architecture and training history, gradients, activations, uncertainty."""

    enabled: bool = True
    architecture: bool = True
    gradients: GradientsConfig = GradientsConfig()
    activations: ActivationsConfig = ActivationsConfig()
    uncertainty: UncertaintyConfig = UncertaintyConfig()


class DerivedFeature(_Section):
    """A sensitive feature derived from another column by a regular expression (its first group)."""

    source: Column
    regex: str = Field(max_length=1000)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            pat = compile_regex(v)
        except ValueError as exc:
            raise ValueError(f"regex {v!r} does not compile: {exc}") from None
        if pat.groups < 1:
            raise ValueError(f"regex {v!r} needs one capturing group, e.g. '^(male|female)'")
        return v


def compile_regex(pattern: str):
    """Compile with RE2 (google-re2): matching takes time linear in the text, whatever the pattern, so a pattern such
    as ``(a+)+b`` cannot hang the run. RE2 has no back-references or look-around; ValueError says so."""
    import re2

    options = re2.Options()
    options.log_errors = False  # the error comes back as one line, not as a log on stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"{reason} (RE2 syntax: no back-references or look-around)") from None


class FairnessThresholds(_Section):
    """Limits per headline measure; None turns a measure's verdict off."""

    demographic_parity_difference: Probability | None = 0.10
    disparate_impact_ratio: Probability | None = 0.80
    equalized_odds_difference: Probability | None = 0.10
    equal_opportunity_difference: Probability | None = 0.10
    calibration_gap: Probability | None = 0.05


class FairnessConfig(_Section):
    """Sensitive features and how their groups are audited."""

    enabled: bool = True
    sensitive_features: ColumnList = Field(default_factory=list)
    derived: dict[str, DerivedFeature] = Field(default_factory=dict, max_length=100)
    bins: dict[SensitiveRef, Annotated[list[float], Field(min_length=1, max_length=100)]] = Field(default_factory=dict)
    quantiles: Bounded(2, 100) = 4
    intersections: list[Annotated[list[SensitiveRef], Field(max_length=4)]] = Field(default_factory=list, max_length=20)
    min_group_size: PosInt = 30
    min_events: Bounded(1, 100_000) = 10
    n_bootstrap: Bounded(0, 10_000) = 200
    confidence: Fraction = 0.95
    thresholds: FairnessThresholds = FairnessThresholds()
    gate: list[
        Literal[
            "demographic_parity_difference",
            "disparate_impact_ratio",
            "equalized_odds_difference",
            "equal_opportunity_difference",
            "calibration_gap",
        ]
    ] = Field(default_factory=list)
    reference_groups: dict[str, Text] = Field(default_factory=dict, max_length=100)
    proxy_association: Probability = 0.3
    proxy_alpha: Fraction = 0.01
    proxy_permutations: Annotated[int, Field(ge=19, le=9999)] = 199

    @model_validator(mode="after")
    def _intersections_known(self) -> FairnessConfig:
        known = set(self.sensitive_features) | set(self.derived)
        for combo in self.intersections:
            if len(combo) < 2:
                raise ValueError(f"fairness.intersections: {combo} needs at least two features")
            unknown = [c for c in combo if c not in known]
            if unknown:
                close = difflib.get_close_matches(unknown[0], sorted(known), n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(
                    f"fairness.intersections: {unknown} are not sensitive features{hint}; list them in "
                    "fairness.sensitive_features or fairness.derived"
                )
        for name, edges in self.bins.items():
            if sorted(edges) != list(edges) or len(set(edges)) != len(edges):
                raise ValueError(f"fairness.bins.{name}: edges {edges} must be strictly increasing")
        return self


class CompareConfig(_Section):
    """Comparison with a baseline run (by default the previous run of the same config)."""

    enabled: bool = True
    max_metric_change: Probability = 0.02
    max_fairness_change: Probability = 0.05
    min_rank_correlation: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.8
    gate: bool = False


class ModelCard(_Section):
    """Free-text model card fields, shown in the report (escaped) and stored in report.json."""

    model_name: str | None = None
    owner: str | None = None
    version: str | None = None
    intended_use: str | None = None
    out_of_scope_use: str | None = None
    training_data: str | None = None
    limitations: str | None = None
    ethical_considerations: str | None = None
    contact: str | None = None
    extra: dict[str, str] = Field(default_factory=dict, max_length=100)


class FindingNote(_Section):
    """Who acts on a finding, and how (``report.findings``)."""

    owner: str | None = Field(default=None, max_length=300)
    remediation: str | None = Field(default=None, max_length=5000)


class ReportConfig(_Section):
    output_dir: PathText = "reports"
    findings: dict[str, FindingNote] = Field(default_factory=dict, max_length=500)
    max_table_rows: Bounded(5, 100_000) = 25
    max_print_rows: Bounded(1, 100_000) = 6
    compare: CompareConfig = CompareConfig()
    title: str | None = Field(default=None, max_length=300)
    formats: list[Literal["json", "html", "pdf"]] = Field(default_factory=lambda: ["json", "html"])
    model_card: ModelCard = ModelCard()
    keep_last: Bounded(1, 100_000) | None = None  # prune older run folders (never latest, never its baseline)

    @field_validator("formats")
    @classmethod
    def _json_always(cls, v: list[str]) -> list[str]:
        if "json" not in v:
            raise ValueError(
                f"{v} writes no report.json, which every run needs (the verdict, the comparison next month); "
                "add json, e.g. [json, html]"
            )
        return list(dict.fromkeys(v))


class ComputeConfig(_Section):
    """How large data is evaluated: in chunks in this process, or as partitions on a Dask cluster."""

    backend: Literal["local", "dask"] = "local"
    threads: Bounded(1, 1024) | None = None
    address: str | None = Field(default=None, pattern=r"^(tcp|tls|inproc|ucx)://.+", max_length=500)
    n_workers: Bounded(1, 1024) = 2
    threads_per_worker: Bounded(1, 1024) = 1
    chunk_rows: Bounded(1024, 1 << 26) = 1 << 18
    timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 10.0


class AuditConfig(_Section):
    """The whole audit. ``name`` defaults to the config file's stem."""

    name: str = Field(default="audit", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    dataset: DatasetConfig
    model: ModelConfig = ModelConfig()
    modules: ModulesConfig = ModulesConfig()
    fairness: FairnessConfig = FairnessConfig()
    local: LocalConfig = LocalConfig()
    network: NetworkConfig = NetworkConfig()
    report: ReportConfig = ReportConfig()
    compute: ComputeConfig = ComputeConfig()
    base_dir: str = Field(default=".", exclude=True)

    @field_validator("base_dir")
    @classmethod
    def _abs(cls, v: str) -> str:
        return str(Path(v).resolve())

    @model_validator(mode="after")
    def _weighted_engines(self) -> AuditConfig:
        if self.dataset.weight is not None and self.local.enabled and self.local.shap.engine == "shap":
            raise ValueError(
                f"local.shap.engine: 'shap' cannot weight the background by dataset.weight '{self.dataset.weight}' "
                "(shap's Independent masker has no weights); set local.shap.engine: audit"
            )
        return self

    def resolve(self, path: str, *, key: str = "path") -> Path:
        """Resolve a path from the config against the config file's folder.

        Raises
        ------
        ConfigError
            Naming ``key`` when the path cannot be resolved (a loop of symbolic links, an unknown home folder).
        """
        try:
            p = Path(path).expanduser()
            return (p if p.is_absolute() else Path(self.base_dir) / p).resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
            raise ConfigError(f"{key}: '{path}' cannot be resolved ({reason}); fix the path") from None

    def config_hash(self) -> str:
        """sha256 of the resolved config (canonical JSON, without ``base_dir``)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------------- errors


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Walk the config models along an error location to the model that owns the last key."""
    model: Any = AuditConfig
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        nxt = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                nxt = cand
                break
        model = nxt
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _format_error(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = ".".join(str(p) for p in loc) or "<top level>"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        allowed = sorted(k for k in (owner.model_fields if owner else {}) if k != "base_dir")
        key = str(loc[-1])
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{path}: unknown key '{key}'; {hint}allowed keys: {', '.join(allowed)}"
    if kind == "missing":
        return f"{path}: required key is missing"
    shown = _short_repr(value)
    msg = err["msg"]
    if kind == "literal_error":
        return f"{path}: {shown} is not allowed; {msg[0].lower()}{msg[1:]}"
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        return msg if msg.startswith(f"{path}.") or msg.startswith(f"{path}:") else f"{path}: {msg}"
    return f"{path}: got {shown}; {msg[0].lower()}{msg[1:]}"


def _short_repr(value: Any, limit: int = 80) -> str:
    """repr of a bad value, never echoing a huge one back."""
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    if len(text) > limit:
        size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} characters as text"
        return f"{text[: limit - 20]}... ({size})"
    return text


def config_from_dict(data: Any, *, base_dir: str | Path = ".", name: str | None = None) -> AuditConfig:
    """Validate a parsed config mapping.

    Parameters
    ----------
    data : mapping
        The parsed YAML.
    base_dir : path-like, default "."
        Folder against which relative paths are resolved.
    name : str, optional
        Default audit name when the mapping has none.

    Returns
    -------
    AuditConfig

    Raises
    ------
    ConfigError
        With one line per problem (key path, bad value, what is allowed).

    Examples
    --------
    >>> cfg = config_from_dict({"dataset": {"train": {"path": "d.csv"}, "target": "y", "positive_label": 1}})
    >>> cfg.model.source, cfg.seed
    ('train', 0)
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping of sections at the top level, got {type(data).__name__}")
    data = dict(data)
    if "base_dir" in data:
        raise ConfigError("base_dir: unknown key 'base_dir'; it is set from the config file's location")
    data["base_dir"] = str(base_dir)
    if name is not None and "name" not in data:
        data["name"] = name
    try:
        return AuditConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_format_error(e) for e in exc.errors()]
        raise ConfigError("invalid config: " + " | ".join(lines)) from None


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML; a larger file is refused before it is parsed
MAX_ALIASES = 100  # YAML aliases (*name); a few are handy, thousands are an attack ("billion laughs")
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_NODES = 100_000  # nodes after expanding every alias


class _ConfigLimit(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that counts aliases and nesting while composing, and refuses duplicate keys."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _ConfigLimit(f"uses more than {MAX_ALIASES} YAML aliases (*name); write the values out")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _ConfigLimit(f"nests deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    mark = key_node.start_mark
                    raise _ConfigLimit(
                        f"repeats the key {_short_repr(key)} at line {mark.line + 1} (first at line "
                        f"{seen[key].line + 1}); keep one (YAML would silently keep the last)"
                    )
            except TypeError:
                continue  # an unhashable key: the safe constructor reports it
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def _expanded_size(node, memo: dict[int, int]) -> int:
    """Nodes in the document with every alias expanded (shared nodes counted each time they are used)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a cycle counts once (PyYAML's composer cannot build one from a plain document anyway)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(v, memo) for v in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[key] = min(size, MAX_NODES + 1)
    return memo[key]


def parse_yaml(text: str, where: str) -> Any:
    """Parse a config document safely: aliases, nesting, expanded size and duplicate keys bounded before any Python
    object is built. ConfigError names the problem."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise _ConfigLimit(f"expands to more than {MAX_NODES:,} values once its aliases are resolved")
        return loader.construct_document(node)
    except _ConfigLimit as exc:
        raise ConfigError(f"config file '{where}' {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file '{where}' is not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"config file '{where}' nests too deeply") from None
    finally:
        loader.dispose()


def load_config(path: str | Path) -> AuditConfig:
    """Read and validate a YAML audit config.

    Parameters
    ----------
    path : path-like
        The YAML file. Its stem is the default audit ``name``; its folder anchors relative paths.

    Returns
    -------
    AuditConfig
    """
    p = Path(path)
    try:
        is_file = p.is_file()
        size = p.stat().st_size if is_file else 0
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"config file '{p}' cannot be opened ({reason}); pass the path of a YAML file") from None
    if not is_file:
        what = "does not exist" if not p.exists() else "is not a file (a folder, a device or a pipe)"
        raise ConfigError(f"config file '{p}' {what}; pass the path of a YAML file such as configs/adult.yaml")
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file '{p}' is {size:,} bytes, more than {MAX_CONFIG_BYTES:,}; a config is a page of YAML"
        )
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{p}' cannot be read ({exc.__class__.__name__}: {exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file '{p}' is more than {MAX_CONFIG_BYTES:,} bytes; a config is a page of YAML")
    if "\x00" in text:
        raise ConfigError(f"config file '{p}' contains NUL bytes; it is not a YAML text file")
    data = parse_yaml(text, str(p))
    if data is None:
        raise ConfigError(f"config file '{p}' is empty; see configs/README.md for the keys")
    stem = "".join(c if (c.isalnum() or c in "_.-") else "_" for c in p.stem)[:100] or "audit"
    return config_from_dict(data, base_dir=p.resolve().parent, name=stem)
