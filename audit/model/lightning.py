"""The Lightning engine of :func:`audit.model.training.train_model` (``model.trainer: lightning``).

Same data, same batches, same rule for early stopping as the plain loop, hence the same weights (tested); kept for
users who extend training with Lightning callbacks, and as the reference the plain loop is tested against.
"""

from __future__ import annotations

import copy
import logging
import warnings

import pytorch_lightning as pl
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from audit.config import ModelConfig
from audit.model.batches import VAL_BATCH, Batches, Prepared, TrainResult
from audit.model.network import TabularNet, build_net

for _name in ("pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")


class TabularDataModule(pl.LightningDataModule):
    """Serves the prepared fit and validation tensors in :class:`Batches`."""

    def __init__(self, data: Prepared, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def train_dataloader(self) -> Batches:
        return Batches(self.data.fit_set, self.batch_size, generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> Batches:
        return Batches(self.data.val_set, VAL_BATCH)


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


def fit_lightning(data: Prepared, architecture: dict, cfg: ModelConfig, *, seed: int, on_epoch=None) -> TrainResult:
    """Train with a Lightning ``Trainer`` (CPU, deterministic, no logger, checkpoints or progress bar)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.manual_seed(seed)
    net = build_net(data.preprocessing, architecture)
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
    trainer.fit(lit, datamodule=TabularDataModule(data, batch_size=cfg.batch_size, seed=seed))
    if history.best_state is not None:
        net.load_state_dict(history.best_state)
    net.eval()
    return TrainResult(net, data.preprocessing, architecture, history.epochs, history.best_epoch)
