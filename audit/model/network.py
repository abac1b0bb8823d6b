"""The tabular network (plain ``nn.Module``) and the preprocessing that feeds it.

Preprocessing works in the schema's code space (see :mod:`audit.data`): numeric columns are optionally
``log1p``-transformed (heavy right tails), standardised with statistics from the training rows, and missing values
become 0 (the training mean); categorical codes index an embedding table whose last slot is "unknown".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from audit.data import Schema


@dataclass(frozen=True)
class Preprocessing:
    """Numeric transform statistics, fitted on training rows only. Serialised as JSON."""

    numeric_idx: tuple[int, ...]
    categorical_idx: tuple[int, ...]
    log1p: tuple[bool, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    cardinalities: tuple[int, ...]  # levels + 1 (unknown slot)

    @classmethod
    def fit(cls, schema: Schema, codes: np.ndarray) -> Preprocessing:
        num = [j for j, f in enumerate(schema.features) if not f.is_categorical]
        cat = [j for j, f in enumerate(schema.features) if f.is_categorical]
        logs, means, stds = [], [], []
        for j in num:
            v = codes[:, j]
            v = v[~np.isnan(v)]
            skew = _skewness(v)
            use_log = bool(v.size and v.min() >= 0 and skew > 2.0)
            t = np.log1p(v) if use_log else v
            mu = float(t.mean()) if t.size else 0.0
            sd = float(t.std()) if t.size else 1.0
            logs.append(use_log)
            means.append(mu)
            stds.append(sd if sd > 1e-12 else 1.0)
        cards = [len(schema.features[j].levels) + 1 for j in cat]
        return cls(tuple(num), tuple(cat), tuple(logs), tuple(means), tuple(stds), tuple(cards))

    def transform(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Code-space array -> (standardised float32 numerics, int64 categorical codes).

        Missing numerics become 0 (the training mean); a categorical code outside the table (unseen, negative,
        NaN) becomes the "unknown" slot.
        """
        # float32 throughout (the network's precision); the cast copies, so the in-place steps below are safe
        x = codes[:, list(self.numeric_idx)].astype(np.float32)
        logs = np.flatnonzero(self.log1p)
        if logs.size:
            x[:, logs] = np.log1p(np.maximum(x[:, logs], np.float32(0.0)))
        x -= np.asarray(self.mean, dtype=np.float32)
        x /= np.asarray(self.std, dtype=np.float32)
        x[~np.isfinite(x)] = 0.0
        cards = np.asarray(self.cardinalities, dtype=np.int64)
        with np.errstate(invalid="ignore"):
            c = codes[:, list(self.categorical_idx)].astype(np.int64)
        if c.size:
            bad = (c < 0) | (c >= cards)
            if bad.any():
                c = np.where(bad, cards - 1, c)
        return x, np.ascontiguousarray(c)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Preprocessing:
        return cls(**{k: tuple(v) for k, v in d.items()})


def _skewness(v: np.ndarray) -> float:
    if v.size < 3:
        return 0.0
    sd = v.std()
    return float(((v - v.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0


def embedding_dim_for(cardinality: int, fixed: int | None) -> int:
    """Embedding width: ``fixed`` if given, else the fast.ai rule min(16, round(1.6 * n**0.56))."""
    if fixed is not None:
        return fixed
    return int(max(2, min(16, round(1.6 * cardinality**0.56))))


class TabularNet(nn.Module):
    """MLP over standardised numerics and categorical embeddings; outputs one logit per row.

    Parameters
    ----------
    n_numeric : int
        Number of numeric inputs.
    cardinalities : sequence of int
        Embedding table sizes (levels + 1 for "unknown"), one per categorical feature.
    embedding_dims : sequence of int
        Width of each embedding.
    hidden : sequence of int
        Widths of the hidden layers.
    dropout : float
        Dropout after each hidden layer.
    """

    def __init__(self, n_numeric: int, cardinalities, embedding_dims, hidden, dropout: float) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(cardinalities, embedding_dims, strict=True))
        width = n_numeric + sum(embedding_dims)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def embed(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        """The first-layer input: numerics followed by the embeddings, shape (n, n_numeric + sum(dims))."""
        parts = [x_num] + [emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings)]
        return torch.cat(parts, dim=1)

    def forward_embedded(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from the embedded input (the gradient handle for attribution methods)."""
        return self.head(self.body(z)).squeeze(-1)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embed(x_num, x_cat))
