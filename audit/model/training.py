"""Training the tabular net with PyTorch Lightning: LightningModule, DataModule, and :func:`train_model`."""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from torch import nn

from audit.config import ModelConfig
from audit.data import Schema
from audit.model.network import Preprocessing, TabularNet, build_net, embedding_dim_for

for _name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")


class TabularDataModule(pl.LightningDataModule):
    """Splits training codes into fit and validation rows and fits preprocessing on the fit rows only."""

    def __init__(
        self, schema: Schema, codes: np.ndarray, y: np.ndarray, *, validation_size: float, batch_size: int, seed: int
    ) -> None:
        super().__init__()
        self.schema, self.codes, self.y = schema, codes, y
        self.validation_size, self.batch_size, self.seed = validation_size, batch_size, seed
        self.preprocessing: Preprocessing | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage not in (None, "fit") or self.preprocessing is not None:
            return
        idx = np.arange(len(self.y))
        strat = self.y if np.bincount(self.y).min() >= 2 else None
        fit_idx, val_idx = train_test_split(idx, test_size=self.validation_size, random_state=self.seed, stratify=strat)
        self.preprocessing = Preprocessing.fit(self.schema, self.codes[fit_idx])
        self.fit_set = self._tensors(fit_idx)
        self.val_set = self._tensors(val_idx)

    def _tensors(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.preprocessing is not None
        x_num, x_cat = self.preprocessing.transform(self.codes[idx])
        y = self.y[idx].astype(np.float32).copy()
        return torch.from_numpy(x_num), torch.from_numpy(x_cat), torch.from_numpy(y)

    def train_dataloader(self) -> Batches:
        return Batches(self.fit_set, self.batch_size, generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> Batches:
        return Batches(self.val_set, 8192)


class Batches:
    """Mini-batches sliced from whole tensors: what ``DataLoader(TensorDataset(...), shuffle=True)`` yields, without
    collating one row at a time (that cost 6 ms of each 10 ms training step on Adult).

    Random numbers are drawn exactly as the DataLoader draws them, so the batches, the dropout masks and the trained
    weights are the ones it gave (tested): each pass first draws a worker base seed (from ``generator`` when given,
    else from the global generator that dropout also uses), then with a ``generator`` the permutation
    ``torch.randperm(n, generator=generator)`` of PyTorch's ``RandomSampler``, and once it is run to its end the second
    permutation that sampler draws for its (empty) remainder.
    """

    def __init__(
        self, tensors: tuple[torch.Tensor, ...], batch_size: int, *, generator: torch.Generator | None = None
    ) -> None:
        self.tensors, self.batch_size, self.generator = tensors, batch_size, generator
        self.n = len(tensors[0])

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the DataLoader's base seed
        if self.generator is None:
            for i in range(0, self.n, self.batch_size):
                yield tuple(t[i : i + self.batch_size] for t in self.tensors)
            return
        order = torch.randperm(self.n, generator=self.generator)
        for i in range(0, self.n, self.batch_size):
            idx = order[i : i + self.batch_size]
            if len(idx) < self.batch_size:  # filling a short last batch runs RandomSampler to its end, where it
                torch.randperm(self.n, generator=self.generator)  # draws (and drops) one more permutation
            yield tuple(t.index_select(0, idx) for t in self.tensors)
        if self.n % self.batch_size == 0:  # asked past a full last batch, the sampler does the same
            torch.randperm(self.n, generator=self.generator)


class TabularLitModule(pl.LightningModule):
    """Owns the optimisation of a :class:`TabularNet`: BCE loss, Adam, validation loss and ROC AUC."""

    def __init__(self, net: TabularNet, *, learning_rate: float, weight_decay: float) -> None:
        super().__init__()
        self.net = net
        self.save_hyperparameters(ignore=["net"])
        self.loss = nn.BCEWithLogitsLoss()
        self._val_out: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x_num, x_cat, y = batch
        loss = self.loss(self.net(x_num, x_cat), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x_num, x_cat, y = batch
        logits = self.net(x_num, x_cat)
        self._val_out.append((logits.detach(), y))
        self.log("val_loss", self.loss(logits, y), on_epoch=True, batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat([o[0] for o in self._val_out]).numpy()
        y = torch.cat([o[1] for o in self._val_out]).numpy()
        self._val_out.clear()
        auc = roc_auc_score(y, logits) if 0 < y.sum() < len(y) else float("nan")
        self.log("val_auc", float(auc))

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )


class _History(pl.Callback):
    """Records per-epoch metrics and keeps the weights of the best validation epoch in memory; ``on_epoch`` (if
    given) is called with ``(epoch, max_epochs, metrics)`` after each epoch (the CLI's progress line)."""

    def __init__(self, on_epoch=None) -> None:
        self.on_epoch = on_epoch
        self.epochs: list[dict] = []
        self.best_loss = float("inf")
        self.best_epoch = -1
        self.best_state: dict | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning runs validation inside the training epoch, so both losses are logged by now.
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {
            "epoch": trainer.current_epoch,
            "train_loss": m.get("train_loss", float("nan")),
            "val_loss": m["val_loss"],
            "val_auc": m.get("val_auc", float("nan")),
        }
        self.epochs.append(row)
        if self.on_epoch is not None:
            self.on_epoch(row["epoch"], trainer.max_epochs, row)
        if row["val_loss"] < self.best_loss - 1e-6:
            self.best_loss, self.best_epoch = row["val_loss"], row["epoch"]
            self.best_state = copy.deepcopy(pl_module.net.state_dict())


@dataclass
class TrainResult:
    net: TabularNet
    preprocessing: Preprocessing
    architecture: dict
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1


def train_model(
    schema: Schema,
    codes: np.ndarray,
    y: np.ndarray,
    cfg: ModelConfig,
    *,
    validation_size: float,
    seed: int,
    on_epoch=None,
) -> TrainResult:
    """Train a :class:`TabularNet` on code-space training rows, with early stopping on validation loss.

    Deterministic on CPU for a given ``seed``: the weights, the shuffling and the validation split derive from it.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = TabularDataModule(schema, codes, y, validation_size=validation_size, batch_size=cfg.batch_size, seed=seed)
    dm.setup("fit")
    assert dm.preprocessing is not None
    pre = dm.preprocessing
    architecture = {
        "hidden": list(cfg.hidden),
        "dropout": cfg.dropout,
        "embedding_dims": [embedding_dim_for(c, cfg.embedding_dim) for c in pre.cardinalities],
    }
    torch.manual_seed(seed)
    net = build_net(pre, architecture)
    lit = TabularLitModule(net, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
    history = _History(on_epoch)
    trainer = pl.Trainer(
        max_epochs=cfg.max_epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[pl.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, mode="min"), history],
    )
    trainer.fit(lit, datamodule=dm)
    if history.best_state is not None:
        net.load_state_dict(history.best_state)
    net.eval()
    return TrainResult(net, pre, architecture, history.epochs, history.best_epoch)
