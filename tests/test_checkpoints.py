"""Issue 18, item 3: Lightning checkpoints of the user's own LightningModule, and the trust rule for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from audit.cli import main
from audit.model.network import TabularNet
from tests.conftest import light_config, synthetic_frame, write_config
from tests.test_formats import _close

MARKER = "unpickled.marker"


class UserTabularModule(pl.LightningModule):
    """What a user's module looks like: hyper-parameters in, ``forward(x_num, x_cat) -> logits``."""

    def __init__(self, n_numeric: int, cardinalities: list, embedding_dims: list, hidden: list, dropout: float):
        super().__init__()
        self.save_hyperparameters()
        self.model = TabularNet(n_numeric, cardinalities, embedding_dims, hidden, dropout)

    def forward(self, x_num, x_cat):
        return self.model(x_num, x_cat)

    def training_step(self, batch, batch_idx):
        x_num, x_cat, y = batch
        return torch.nn.functional.binary_cross_entropy_with_logits(self(x_num, x_cat), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Payload:
    """Unpickling this runs code: it writes a marker file (proves whether a loader unpickled the checkpoint)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __reduce__(self):
        return (Path.write_text, (Path(self.folder) / MARKER, "code ran"))


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A native audit of a trained synthetic model, and a real Lightning checkpoint of the same weights beside it."""
    folder = tmp_path_factory.mktemp("ckpt")
    synthetic_frame().to_csv(folder / "data.csv", index=False)
    cfg = light_config(keep=("partial_dependence", "network"))  # the sections compared
    cfg["name"] = "native"
    assert main(["run", str(write_config(folder, cfg)), "-q"]) in (0, 1)
    model_dir = folder / "reports" / "native" / "latest" / "model"
    pre = json.loads((model_dir / "preprocessing.json").read_text())
    arch = json.loads((model_dir / "model.json").read_text())["architecture"]
    state = torch.load(model_dir / "weights.pt", weights_only=True)
    lit = UserTabularModule(
        n_numeric=len(pre["numeric_idx"]),
        cardinalities=list(pre["cardinalities"]),
        embedding_dims=arch["embedding_dims"],
        hidden=arch["hidden"],
        dropout=arch["dropout"],
    )
    lit.model.load_state_dict(state)
    trainer = pl.Trainer(
        max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    x = torch.zeros((4, lit.hparams.n_numeric)), torch.zeros((4, len(lit.hparams.cardinalities)), dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*x, torch.zeros(4)), batch_size=4)
    trainer.fit(lit, loader)  # 0 epochs: attaches the trainer, so the checkpoint is Lightning's own
    trainer.save_checkpoint(model_dir / "model.ckpt")
    return folder, json.loads((folder / "reports" / "native" / "latest" / "report.json").read_text())


def _ckpt_config(name: str, path, **model) -> dict:
    cfg = light_config(keep=("partial_dependence", "network"))  # the sections compared
    cfg["name"] = name
    cfg["model"] = {"source": "load", "path": str(path), "module_class": f"{__name__}:UserTabularModule", **model}
    return cfg


def test_a_lightning_checkpoint_is_audited_like_the_native_net(native):
    folder, ref = native
    ckpt = folder / "reports" / "native" / "latest" / "model" / "model.ckpt"
    assert main(["run", str(write_config(folder, _ckpt_config("ckpt", ckpt), "ckpt.yaml")), "-q"]) in (0, 1)
    rep = json.loads((folder / "reports" / "ckpt" / "latest" / "report.json").read_text())
    model = rep["provenance"]["model"]
    assert model["format"] == "lightning" and model["module_class"].endswith(":UserTabularModule")
    assert "pytorch-lightning" in model["runtime"]
    assert model["trusted"].startswith("nothing")  # Lightning's own checkpoint loads with weights_only=True
    _close(rep["modules"]["fairness"]["tables"], ref["modules"]["fairness"]["tables"])
    _close(rep["modules"]["partial_dependence"]["data"], ref["modules"]["partial_dependence"]["data"])
    # the module's TabularNet is found under its "model." prefix: the network sections run, equal to the native run
    assert model["gradient_handle"].startswith("TabularNet rebuilt")
    _close(rep["modules"]["gradients"]["tables"], ref["modules"]["gradients"]["tables"])


def test_a_malicious_checkpoint_is_refused_unloaded(native, capsys):
    folder, _ = native
    model_dir = folder / "reports" / "native" / "latest" / "model"
    full = torch.load(model_dir / "model.ckpt", weights_only=False)
    evil = {"state_dict": full["state_dict"], "hyper_parameters": dict(full["hyper_parameters"])}
    evil["extra"] = Payload(str(folder))
    torch.save(evil, model_dir / "evil.ckpt")
    (folder / MARKER).unlink(missing_ok=True)
    cfg = _ckpt_config("evil", model_dir / "evil.ckpt")
    assert main(["run", str(write_config(folder, cfg, "evil.yaml")), "-q"]) == 2
    err = capsys.readouterr().err
    assert "weights_only=True" in err and "model.trust: true" in err and err.count("\n") == 1
    assert not (folder / MARKER).exists()  # refused before anything in it ran
    assert not (folder / "reports" / "evil").exists()
    cfg["model"]["trust"] = True  # trusted: unpickled (the marker proves the refusal above was real)
    assert main(["run", str(write_config(folder, cfg, "evil.yaml")), "-q"]) in (0, 1)
    assert (folder / MARKER).exists()


def test_checkpoint_config_mistakes_are_exit_2(native, capsys):
    folder, _ = native
    ckpt = folder / "reports" / "native" / "latest" / "model" / "model.ckpt"
    cfg = _ckpt_config("bad", ckpt, trust=True)
    cfg["model"]["module_class"] = "no_such_package.mod:Thing"
    assert main(["run", str(write_config(folder, cfg, "bad.yaml")), "-q"]) == 2
    assert "model.module_class: cannot import" in capsys.readouterr().err
    del cfg["model"]["module_class"]
    assert main(["run", str(write_config(folder, cfg, "bad.yaml")), "-q"]) == 2
    assert "model.module_class" in capsys.readouterr().err


def test_a_malicious_pickle_is_refused_unloaded(tmp_path, capsys):
    import pickle

    synthetic_frame().to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(Payload(str(tmp_path))))
    cfg = light_config(keep=("partial_dependence", "network"))  # the sections compared
    cfg["model"] = {"source": "load", "path": "model.pkl"}
    assert main(["run", str(write_config(tmp_path, cfg)), "-q"]) == 2
    assert "model.trust: true" in capsys.readouterr().err
    assert not (tmp_path / MARKER).exists()  # refused before it was unpickled
    cfg["model"]["trust"] = True  # trusted: unpickled (and then found to have no predict_proba: exit 3)
    assert main(["run", str(write_config(tmp_path, cfg)), "-q"]) == 3
    assert (tmp_path / MARKER).exists()
