"""Issue 18, item 5: MLflow pyfunc models (local folders), loaded only when trusted."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc  # the [mlflow] extra: make installs it, so a missing install fails here rather than skipping
import pytest

from audit.cli import main
from tests.conftest import light_config, synthetic_frame, write_config
from tests.test_formats import _close

MARKER = "mlflow.marker"


class AuditArtifactModel(mlflow.pyfunc.PythonModel):
    """A pyfunc model serving one of our artifact folders (logged as an MLflow artifact)."""

    def load_context(self, context):
        from audit.model import load_model

        self.model = load_model(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        return self.model.predict_proba(model_input)


class Marking(mlflow.pyfunc.PythonModel):
    """Unpickling it writes a marker file: proves whether the loader unpickled the model."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __reduce__(self):
        return (Path.write_text, (Path(self.folder) / MARKER, "code ran"))

    def predict(self, context, model_input, params=None):  # pragma: no cover - never reached
        return None


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    synthetic_frame().to_csv(folder / "data.csv", index=False)
    cfg = light_config(keep=("partial_dependence",))  # the sections compared
    cfg["name"] = "native"
    assert main(["run", str(write_config(folder, cfg)), "-q"]) in (0, 1)
    run = folder / "reports" / "native" / "latest"
    mlflow.pyfunc.save_model(
        str(folder / "mlflow_model"),
        python_model=AuditArtifactModel(),
        artifacts={"model": str(run / "model")},
        pip_requirements=["audit"],
    )
    return folder, json.loads((run / "report.json").read_text())


def _config(name, path, **model):
    cfg = light_config(keep=("partial_dependence",))  # the sections compared
    cfg["name"] = name
    cfg["model"] = {"source": "load", "path": str(path), **model}
    return cfg


def test_an_mlflow_model_is_audited_like_the_native_net(native, capsys):
    folder, ref = native
    cfg = _config("mlflow", folder / "mlflow_model", trust=True)  # format detected from the MLmodel file
    # one column per row, and nothing in the model says which class it is: the config must (issue 21)
    assert main(["run", str(write_config(folder, cfg, "m.yaml")), "-q"]) == 2
    err = capsys.readouterr().err
    assert "model.output_index" in err and "one column" in err and err.count("\n") == 1, err
    cfg["model"]["output_index"] = 0
    assert main(["run", str(write_config(folder, cfg, "m.yaml")), "-q"]) in (0, 1)
    rep = json.loads((folder / "reports" / "mlflow" / "latest" / "report.json").read_text())
    model = rep["provenance"]["model"]
    assert (
        model["format"] == "mlflow" and model["runtime"].startswith("mlflow ") and "python_function" in model["flavors"]
    )
    assert len(model["hash"]) == 64
    _close(rep["modules"]["fairness"]["tables"], ref["modules"]["fairness"]["tables"])
    _close(rep["modules"]["partial_dependence"]["data"], ref["modules"]["partial_dependence"]["data"])
    _close(rep["modules"]["performance"]["data"]["test"], ref["modules"]["performance"]["data"]["test"])


def test_an_untrusted_mlflow_model_is_refused_unloaded(native, capsys):
    folder, _ = native
    mlflow.pyfunc.save_model(str(folder / "evil_model"), python_model=Marking(str(folder)), pip_requirements=[])
    (folder / MARKER).unlink(missing_ok=True)  # saving pickled it; unpickling is what the test watches
    capsys.readouterr()  # mlflow's own warning while saving
    cfg = _config("evil", folder / "evil_model")
    assert main(["run", str(write_config(folder, cfg, "evil.yaml")), "-q"]) == 2
    err = capsys.readouterr().err
    assert "MLflow model" in err and "model.trust: true" in err and err.count("\n") == 1
    assert not (folder / MARKER).exists()
    assert not (folder / "reports" / "evil").exists()
    cfg["model"]["trust"] = True  # trusted: unpickled, as the marker shows (the refusal above was real)
    main(["run", str(write_config(folder, cfg, "evil.yaml")), "-q"])
    assert (folder / MARKER).exists()
