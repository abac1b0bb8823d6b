"""Training the tabular net: a plain PyTorch loop (the default) or PyTorch Lightning, with the same result.

Both engines split the training rows the same way, fit the preprocessing on the fit rows only, draw the same batches
and the same dropout masks, and stop early on validation loss with Lightning's ``EarlyStopping`` rule, so they give
bit-identical weights and history (tested). The plain loop exists for speed: it does not import Lightning (about
2 s of imports: torch._dynamo, torchmetrics) and has no per-step hook machinery; on the Adult audit it trains in
about half the time. ``model.trainer: lightning`` runs the Lightning engine in :mod:`audit.model.lightning`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from functools import lru_cache
from itertools import islice

import numpy as np
import torch
from torch import nn

from audit.config import ModelConfig
from audit.model.batches import VAL_BATCH, Batches, Prepared, TrainResult, prepare
from audit.model.network import TabularNet, build_net, embedding_dim_for
from audit.schema import Schema


class EpochMean:
    """An epoch's mean of per-batch values weighted by batch size, accumulated as Lightning's ``self.log(...,
    on_epoch=True, batch_size=n)`` does (float32 running sum of ``value * n``, divided by the summed sizes), so the
    history holds the same numbers whichever engine trained."""

    def __init__(self) -> None:
        self.value = torch.tensor(0.0, dtype=torch.float32)
        self.size = torch.tensor(0)

    def add(self, value: torch.Tensor | float, n: int) -> None:
        if not isinstance(value, torch.Tensor):
            value = torch.tensor(value, dtype=torch.float32)
        self.value = self.value + value.detach().squeeze() * n
        self.size = self.size + n

    def compute(self) -> torch.Tensor:
        return self.value / self.size


class EarlyStop:
    """Lightning's ``EarlyStopping(monitor=..., mode="min", patience=p)`` rule: stop at a non-finite value, or after
    ``patience`` checks in a row without a value strictly below the best."""

    def __init__(self, patience: int) -> None:
        self.patience, self.wait, self.best = patience, 0, torch.tensor(float("inf"))

    def should_stop(self, current: torch.Tensor) -> bool:
        if not torch.isfinite(current):
            return True
        if torch.lt(current, self.best):
            self.best, self.wait = current, 0
            return False
        self.wait += 1
        return self.wait >= self.patience


@contextmanager
def _deterministic_and_own_rng(seed: int):
    """Deterministic algorithms and the global torch generator seeded inside the block; the caller's generator state
    and determinism setting are restored after (training must not change the process it runs in)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _use_deterministic_algorithms(True)
        try:
            yield
        finally:
            _use_deterministic_algorithms(*before)


def _use_deterministic_algorithms(mode: bool, warn_only: bool = False) -> None:
    """``torch.use_deterministic_algorithms`` for eager execution, without its import of the compiler's config.

    The public function also sets ``torch._inductor.config.deterministic``, which only ``torch.compile`` reads, and
    importing that config pulls in TorchDynamo and SymPy: 1.6 s of a 25 s audit that never compiles anything. The
    eager flag is the one the kernels read; when the compiler is already loaded (the caller compiles), the public
    function is used so that both stay in step.
    """
    import sys

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if "torch._inductor.config" in sys.modules or setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


def train_model(
    schema: Schema,
    codes: np.ndarray,
    y: np.ndarray,
    cfg: ModelConfig,
    *,
    validation_size: float,
    seed: int,
    on_epoch=None,
    trainer: str | None = None,
) -> TrainResult:
    """Train a :class:`TabularNet` on code-space training rows, with early stopping on validation loss.

    Deterministic on CPU for a given ``seed``: the weights, the shuffling and the validation split derive from it.
    ``trainer`` (default ``cfg.trainer``): ``"torch"`` for the plain loop, ``"lightning"`` for PyTorch Lightning;
    both give the same weights. ``on_epoch`` (if given) is called with ``(epoch, max_epochs, metrics)`` after each
    epoch (the CLI's progress line).
    """
    trainer = trainer or cfg.trainer
    data = prepare(schema, codes, y, validation_size=validation_size, seed=seed)
    pre = data.preprocessing
    architecture = {
        "hidden": list(cfg.hidden),
        "dropout": cfg.dropout,
        "embedding_dims": [embedding_dim_for(c, cfg.embedding_dim) for c in pre.cardinalities],
    }
    if trainer == "lightning":
        from audit.model.lightning import fit_lightning

        return fit_lightning(data, architecture, cfg, seed=seed, on_epoch=on_epoch)
    with _deterministic_and_own_rng(seed):
        net = build_net(pre, architecture)
        history, best_epoch, best_state = _fit(net, data, cfg, seed=seed, on_epoch=on_epoch)
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return TrainResult(net, pre, architecture, history, best_epoch)


class Adam:
    """``torch.optim.Adam`` with its default settings, stepping through torch's own functional ``adam`` (the code
    ``torch.optim.Adam.step`` calls, with the same state: float32 step counters, zero moments created lazily for
    parameters that have a gradient), so the updates are the same bits (tested against Lightning's Adam).

    Why not the class itself: the first use of any ``torch.optim.Optimizer`` imports TorchDynamo and SymPy (its
    methods are wrapped to keep the compiler out), 1.6 s of a 25 s audit that never compiles anything.
    """

    def __init__(self, params, *, lr: float, weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.lr, self.weight_decay = lr, weight_decay
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        from torch.optim.adam import adam

        params, grads, avgs, sqs, steps = [], [], [], [], []
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if i not in self.state:
                scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
                self.state[i] = (
                    torch.tensor(0.0, dtype=scalar),
                    torch.zeros_like(p, memory_format=torch.preserve_format),
                    torch.zeros_like(p, memory_format=torch.preserve_format),
                )
            step, avg, sq = self.state[i]
            params.append(p)
            grads.append(p.grad)
            avgs.append(avg)
            sqs.append(sq)
            steps.append(step)
        options = {
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "grad_scale": None,
            "found_inf": None,
            "has_complex": any(torch.is_complex(p) for p in params),
            "decoupled_weight_decay": False,  # torch >= 2.6; older versions have no such option (the same update)
        }
        accepted = _adam_options()
        adam(
            params,
            grads,
            avgs,
            sqs,
            [],
            steps,
            **{k: v for k, v in options.items() if k in accepted},
            amsgrad=False,
            beta1=0.9,
            beta2=0.999,
            lr=self.lr,
            weight_decay=self.weight_decay,
            eps=1e-8,
            maximize=False,
        )


@lru_cache(maxsize=1)
def _adam_options() -> frozenset[str]:
    """The keyword options this torch's functional ``adam`` takes (they grew over versions)."""
    import inspect

    from torch.optim.adam import adam

    return frozenset(inspect.signature(adam).parameters)


def _fit(net: TabularNet, data: Prepared, cfg: ModelConfig, *, seed: int, on_epoch=None):
    """The plain training loop; returns (history, best epoch, best weights)."""
    from sklearn.metrics import roc_auc_score

    loss_fn = nn.BCEWithLogitsLoss()
    opt = Adam(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    train = Batches(data.fit_set, cfg.batch_size, generator=torch.Generator().manual_seed(seed))
    val = Batches(data.val_set, VAL_BATCH)
    stop = EarlyStop(cfg.patience)
    history: list[dict] = []
    best_loss, best_epoch, best_state = float("inf"), -1, None
    for epoch in range(cfg.max_epochs):
        net.train()
        train_loss = EpochMean()
        for x_num, x_cat, yb in islice(train, len(train)):  # as Lightning: stop after len(train), ask no further
            opt.zero_grad()
            loss = loss_fn(net(x_num, x_cat), yb)
            loss.backward()
            opt.step()
            train_loss.add(loss, len(yb))
        net.eval()
        val_loss, val_auc = EpochMean(), EpochMean()
        logits, ys = [], []
        with torch.inference_mode():
            for x_num, x_cat, yb in val:
                out = net(x_num, x_cat)
                logits.append(out)
                ys.append(yb)
                val_loss.add(loss_fn(out, yb), len(yb))
        y_all, l_all = torch.cat(ys).numpy(), torch.cat(logits).numpy()
        auc = roc_auc_score(y_all, l_all) if 0 < y_all.sum() < len(y_all) else float("nan")
        val_auc.add(float(auc), 1)  # logged once per epoch, in float32
        current = val_loss.compute()
        row = {
            "epoch": epoch,
            "train_loss": float(train_loss.compute()),
            "val_loss": float(current),
            "val_auc": float(val_auc.compute()),
        }
        stopping = stop.should_stop(current)
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, cfg.max_epochs, row)
        if row["val_loss"] < best_loss - 1e-6:
            best_loss, best_epoch = row["val_loss"], epoch
            best_state = copy.deepcopy(net.state_dict())
        if stopping:
            break
    return history, best_epoch, best_state
