"""What the network explainers (:mod:`audit.explain.neural`, :mod:`audit.explain.lrp`) share: the net in float64,
its embedded input rows, and which embedded columns belong to which raw feature."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from audit.model.adapter import NetPredictor


def columns_per_feature(pred: NetPredictor) -> list[np.ndarray]:
    """For each raw feature (schema order), the columns it occupies in the embedded input."""
    pre = pred.preprocessing
    dims = [emb.embedding_dim for emb in pred.net.embeddings]
    out: dict[int, np.ndarray] = {}
    for k, j in enumerate(pre.numeric_idx):
        out[j] = np.array([k])
    start = len(pre.numeric_idx)
    for k, j in enumerate(pre.categorical_idx):
        out[j] = np.arange(start, start + dims[k])
        start += dims[k]
    return [out[j] for j in range(len(pred.schema.features))]


def double_net(pred: NetPredictor) -> nn.Module:
    return copy.deepcopy(pred.net).double().eval()


def embedded(net: nn.Module, pred: NetPredictor, X: np.ndarray) -> torch.Tensor:
    x_num, x_cat = pred.tensors(X)
    with torch.no_grad():
        return net.embed(x_num.double(), x_cat)
