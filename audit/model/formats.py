"""The built-in net exported as ONNX and TorchScript, and audits of those exported files.

Export (``model.export: [onnx, torchscript]``) writes, beside the artifact's ``weights.pt``:

- ``model.onnx``: inputs ``x_num`` (float32, rows x numeric features, already transformed as
  ``preprocessing.json`` says) and ``x_cat`` (int64, rows x categorical features, embedding indices), output
  ``logit`` (rows x 1); opset 17, the batch dimension dynamic. Runs in any ONNX runtime.
- ``model.torchscript.pt``: the same function as a TorchScript module (``torch.jit.load``, no Python pickle).

Loading one of them (``model.source: load`` with ``model.path`` the file, ``model.format`` auto-detected from the
name) reads the ``schema.json``, ``preprocessing.json`` and ``model.json`` beside it: the same JSON as our artifact,
so the raw columns are coded exactly as when the model was trained. Neither format runs Python code when loaded.

The network sections (architecture, gradients, activations, uncertainty) need the net's layers. A TorchScript
archive (or a Lightning checkpoint) whose weights have the built-in net's structure gets a gradient handle: a
:class:`~audit.model.network.TabularNet` rebuilt from the archive's own weights and checked to compute the same
logits as the archive on a block of probe rows (scores always come from the archive itself). An ONNX graph, or an
archive of another structure, has no handle: those sections say "not applicable to this model format".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audit.errors import ModelLoadError
from audit.files import sha256_file
from audit.model.adapter import ROW_ALIGN, Predictor

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.torchscript.pt"
EXPORT_FILES = {"onnx": ONNX_FILE, "torchscript": TORCHSCRIPT_FILE}


def export_model(folder: str | Path, predictor, formats: list[str]) -> dict[str, dict]:
    """Write the predictor's net into artifact ``folder`` in each of ``formats``; returns file name and sha256 of
    each. The exported functions are checked against the net on a block of rows before anything is returned."""
    import warnings

    import torch

    folder = Path(folder)
    net = predictor.net.eval()
    n_num = len(predictor.preprocessing.numeric_idx)
    n_cat = len(predictor.preprocessing.categorical_idx)
    x_num = torch.zeros((ROW_ALIGN, n_num), dtype=torch.float32)
    x_cat = torch.zeros((ROW_ALIGN, n_cat), dtype=torch.int64)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "onnx" in formats:
            torch.onnx.export(
                net,
                (x_num, x_cat),
                str(folder / ONNX_FILE),
                input_names=["x_num", "x_cat"],
                output_names=["logit"],
                dynamic_axes={"x_num": {0: "rows"}, "x_cat": {0: "rows"}, "logit": {0: "rows"}},
                opset_version=17,
                dynamo=False,
            )
        if "torchscript" in formats:
            with torch.no_grad():
                traced = torch.jit.trace(net, (x_num, x_cat))
            torch.jit.save(traced, str(folder / TORCHSCRIPT_FILE))
    for fmt in formats:
        path = folder / EXPORT_FILES[fmt]
        out[fmt] = {"file": path.name, "sha256": sha256_file(path)}
    return out


def load_exported(path: str | Path, fmt: str, *, batch_size: int = 8192) -> Predictor:
    """An exported ``model.onnx`` or ``model.torchscript.pt`` with the artifact JSON beside it."""
    from audit.model.artifact import read_description

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model.path: '{path}' is not a file; point it at the exported {fmt} model")
    schema, pre, meta = read_description(path.parent, weights=path)
    if fmt == "onnx":
        return OnnxPredictor(path, pre, schema, batch_size=batch_size)
    pred = TorchScriptPredictor(path, pre, schema, batch_size=batch_size)
    pred.net, pred.gradient_handle = gradient_handle(pred.module, pred.module.state_dict(), pre, meta)
    return pred


PROBE_ROWS = 256
HANDLE_TOLERANCE = 1e-5


def gradient_handle(module, state: dict, pre, meta: dict, *, prefix: str = "") -> tuple[object | None, str]:
    """A :class:`TabularNet` rebuilt from ``state`` (keys after ``prefix``) that computes what ``module(x_num,
    x_cat)`` computes, or ``None`` and why not.

    The rebuilt net is compared with ``module`` on :data:`PROBE_ROWS` random rows (numerics standard normal, every
    code drawn within its table, seeded); it is used only if no logit differs by more than :data:`HANDLE_TOLERANCE`.
    """
    import torch

    from audit.model.network import build_net

    try:
        net = build_net(pre, meta["architecture"])
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        net.load_state_dict(own, strict=True)
    except Exception as exc:  # noqa: BLE001 - another structure: no handle, said in the report
        return None, f"none: the weights are not the built-in net's ({exc.__class__.__name__})"
    net = net.float().eval()
    g = torch.Generator().manual_seed(0)
    x_num = torch.randn((PROBE_ROWS, len(pre.numeric_idx)), generator=g)
    x_cat = torch.stack([torch.randint(0, c, (PROBE_ROWS,), generator=g) for c in pre.cardinalities], dim=1)
    if not len(pre.cardinalities):
        x_cat = torch.zeros((PROBE_ROWS, 0), dtype=torch.int64)
    with torch.inference_mode():
        try:
            theirs = module(x_num, x_cat).reshape(-1).double()
        except Exception as exc:  # noqa: BLE001
            return None, f"none: the model does not take (x_num, x_cat) ({exc.__class__.__name__})"
        diff = float((net(x_num, x_cat).double() - theirs).abs().max())
    if not diff <= HANDLE_TOLERANCE:
        return None, f"none: a net rebuilt from the weights differs from the model by {diff:.2g} on probe rows"
    return (
        net,
        f"TabularNet rebuilt from the file's weights; logits equal to the file's within {diff:.1g} on {PROBE_ROWS} probe rows",
    )


class _ExportedPredictor(Predictor):
    """Shared by the exported formats: code-space rows -> the net's inputs, padded to whole blocks of ROW_ALIGN rows
    as :class:`~audit.model.adapter.NetPredictor` does, so a row's score does not depend on its batch.

    ``net`` is the gradient handle the network sections use (``None``: they say "not applicable")."""

    format: str = ""
    net = None
    gradient_handle = "none: an ONNX graph's layers are not differentiable here"

    def tensors(self, X: np.ndarray):
        """Code-space array -> the network's input tensors, as :meth:`NetPredictor.tensors`."""
        import torch

        x_num, x_cat = self.preprocessing.transform(np.asarray(X, dtype=np.float64))
        return torch.from_numpy(x_num), torch.from_numpy(x_cat)

    def __init__(self, path: Path, preprocessing, schema, *, batch_size: int) -> None:
        super().__init__()
        self.path, self.preprocessing, self.schema, self.batch_size = path, preprocessing, schema, batch_size

    def _inputs(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        x_num, x_cat = self.preprocessing.transform(np.asarray(X, dtype=np.float64))
        n = len(x_num)
        pad = -n % ROW_ALIGN
        if pad:
            x_num = np.concatenate([x_num, np.zeros((pad, x_num.shape[1]), dtype=x_num.dtype)])
            x_cat = np.concatenate([x_cat, np.zeros((pad, x_cat.shape[1]), dtype=x_cat.dtype)])
        return np.ascontiguousarray(x_num), np.ascontiguousarray(x_cat), n


class OnnxPredictor(_ExportedPredictor):
    """An exported ``model.onnx`` run by onnxruntime (CPU, threads as torch's in this process)."""

    format = "onnx"
    mode = "exported"

    def __init__(self, path: Path, preprocessing, schema, *, batch_size: int = 8192, session=None) -> None:
        super().__init__(path, preprocessing, schema, batch_size=batch_size)
        import onnxruntime as ort

        self.session = session if session is not None else _onnx_session(path)
        names = sorted(i.name for i in self.session.get_inputs())
        outputs = [o.name for o in self.session.get_outputs()]
        if names != ["x_cat", "x_num"] or not {"logit", "probability"} & set(outputs):
            raise ModelLoadError(
                f"model.path: '{path}' takes inputs {names} and gives {outputs}; this audit runs graphs with inputs "
                "x_num and x_cat and an output logit or probability (as model.export writes them)"
            )
        self.output = "probability" if "probability" in outputs else "logit"
        self.runtime = f"onnxruntime {ort.__version__}"

    def _predict_codes(self, X: np.ndarray) -> np.ndarray:
        x_num, x_cat, n = self._inputs(X)
        out = self.session.run([self.output], {"x_num": x_num, "x_cat": x_cat})[0].reshape(-1)[:n]
        if self.output == "probability":
            return out.astype(np.float64)
        import torch

        return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(out))).double().numpy()


class OnnxCodesPredictor(_ExportedPredictor):
    """A graph of one float matrix input, the standardised numerics then the category codes, with our artifact's
    JSON beside it (so it scores the positive label): its output ``probability`` (or ``logit``, or the last)."""

    format = "onnx"
    mode = "matrix"

    def __init__(self, path: Path, preprocessing, schema, *, batch_size: int = 8192, session=None) -> None:
        super().__init__(path, preprocessing, schema, batch_size=batch_size)
        import onnxruntime as ort

        self.session = session if session is not None else _onnx_session(path)
        self.input = self.session.get_inputs()[0]
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = next((o for o in ("probability", "logit") if o in outputs), outputs[-1])
        self.runtime = f"onnxruntime {ort.__version__}"

    def _predict_codes(self, X: np.ndarray) -> np.ndarray:
        x_num, x_cat = self.preprocessing.transform(np.asarray(X, dtype=np.float64))
        m = np.concatenate([x_num, x_cat.astype(np.float32)], axis=1)
        m = m.astype(np.float64 if "double" in self.input.type else np.float32)
        out = np.asarray(self.session.run([self.output], {self.input.name: m})[0], dtype=np.float64).reshape(-1)
        return 1.0 / (1.0 + np.exp(-out)) if self.output == "logit" else out


def _onnx_session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelLoadError(
            "model.format: onnx needs onnxruntime (pip install onnxruntime; make installs it)"
        ) from exc
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a damaged graph
        raise ModelLoadError(
            f"model.path: '{path}' is not a loadable ONNX graph ({str(exc).splitlines()[0][:200]})"
        ) from None


def load_onnx(path: str | Path, cfg, data_schema, *, batch_size: int = 8192) -> Predictor:
    """Any of the ONNX graph shapes this audit runs, told apart by the graph's inputs: ``x_num`` + ``x_cat`` (our
    export, JSON beside it: :class:`OnnxPredictor`), one input per raw column or one float matrix with
    ``model.onnx_columns`` (a graph from another tool: :class:`~audit.model.onnx_graph.OnnxGraphPredictor`), or one
    float matrix of our artifact's standardised numerics and codes (JSON beside it: :class:`OnnxCodesPredictor`)."""
    from audit.model.artifact import read_description
    from audit.model.onnx_graph import OnnxGraphPredictor

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model.path: '{path}' is not a file; point it at the .onnx graph")
    session = _onnx_session(path)
    inputs = session.get_inputs()
    names = sorted(i.name for i in inputs)
    sidecar = (path.parent / "schema.json").is_file() and (path.parent / "preprocessing.json").is_file()
    if names == ["x_cat", "x_num"]:
        schema, pre, _ = read_description(path.parent, weights=path)
        return OnnxPredictor(path, pre, schema, batch_size=batch_size, session=session)
    features = set(data_schema.feature_names)
    if len(inputs) == 1 and inputs[0].name not in features:
        if cfg.onnx_columns:
            return OnnxGraphPredictor(path, session, data_schema, cfg, mode="matrix", batch_size=batch_size)
        if sidecar:
            schema, pre, _ = read_description(path.parent, weights=path)
            return OnnxCodesPredictor(path, pre, schema, batch_size=batch_size, session=session)
        raise ModelLoadError(
            f"model.path: '{path}' takes one matrix input {inputs[0].name!r}; declare its columns in "
            "model.onnx_columns (or put our artifact's schema.json and preprocessing.json beside the file)"
        )
    if set(names) & features:
        missing, extra = sorted(features - set(names)), sorted(set(names) - features)
        if extra:
            raise ModelLoadError(
                f"model.path: '{path}' takes inputs {extra} that are not feature columns of the dataset; the graph's "
                "inputs must be the raw feature columns, by name"
            )
        if missing:
            raise ModelLoadError(
                f"model.path: '{path}' does not use the feature column(s) {missing}; add them to dataset.drop"
            )
        return OnnxGraphPredictor(path, session, data_schema, cfg, mode="columns", batch_size=batch_size)
    raise ModelLoadError(
        f"model.path: '{path}' takes inputs {names[:10]}; this audit runs graphs with inputs x_num and x_cat (as "
        "model.export writes), one input per raw feature column (as skl2onnx writes), or one float matrix with "
        "model.onnx_columns"
    )


class _TorchModulePredictor(_ExportedPredictor):
    """A torch module ``self.module(x_num, x_cat) -> logits`` (a TorchScript archive or a LightningModule)."""

    def _predict_codes(self, X: np.ndarray) -> np.ndarray:
        import torch

        x_num, x_cat, n = self._inputs(X)
        with torch.inference_mode():
            logit = self.module(torch.from_numpy(x_num), torch.from_numpy(x_cat))
            return torch.sigmoid(logit).reshape(-1)[:n].double().numpy()


class TorchScriptPredictor(_TorchModulePredictor):
    """An exported ``model.torchscript.pt`` (``torch.jit.load``: a TorchScript archive, no Python pickle)."""

    format = "torchscript"

    def __init__(self, path: Path, preprocessing, schema, *, batch_size: int = 8192) -> None:
        super().__init__(path, preprocessing, schema, batch_size=batch_size)
        import torch

        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign archive
            raise ModelLoadError(
                f"model.path: '{path}' is not a loadable TorchScript archive ({str(exc).splitlines()[0][:200]})"
            ) from None
        self.runtime = f"torch {torch.__version__}"


# ------------------------------------------------------------------------------------------ Lightning checkpoints
def load_lightning(path: str | Path, module_class: str, *, trust: bool, batch_size: int = 8192) -> LightningPredictor:
    """A Lightning checkpoint (``.ckpt``) of the user's LightningModule ``module_class`` ("package.module:Class").

    The checkpoint is read with ``torch.load(weights_only=True)``, which builds only tensors and plain containers
    and runs no code from the file. A checkpoint holding other Python objects fails that and is refused unless
    ``trust`` is true (it is then unpickled: only for files you produced or verified). The class is built with the
    checkpoint's ``hyper_parameters`` as keyword arguments and given its ``state_dict``, as Lightning's
    ``load_from_checkpoint`` does; its ``forward(x_num, x_cat)`` must return logits, taking the inputs that the
    artifact JSON beside the file describes (as our exported files do).
    """
    import importlib
    import pickle

    import torch

    from audit.model.artifact import read_description

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model.path: '{path}' is not a file; point it at the Lightning checkpoint (.ckpt)")
    schema, pre, meta = read_description(path.parent, weights=path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        trusted = "nothing: the checkpoint loaded with torch.load(weights_only=True)"
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
        if not trust:
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
            raise ModelLoadError(
                f"model.path: '{path}' does not load with torch.load(weights_only=True) ({first}); it holds Python "
                "objects, and unpickling them runs code: it is refused unless model.trust: true (only for a "
                "checkpoint you produced or verified)"
            ) from None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - a trusted but broken file
            raise ModelLoadError(
                f"model.path: '{path}' is not a loadable checkpoint ({exc2.__class__.__name__})"
            ) from None
        trusted = "the whole checkpoint (model.trust: true): it was unpickled"
    except Exception as exc:  # noqa: BLE001 - not a torch file at all
        raise ModelLoadError(
            f"model.path: '{path}' is not a loadable checkpoint ({exc.__class__.__name__}: {str(exc)[:120]})"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ModelLoadError(f"model.path: '{path}' has no state_dict; it is not a Lightning checkpoint")
    mod_name, _, cls_name = module_class.partition(":")
    try:
        cls = importlib.import_module(mod_name)
        for part in cls_name.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"model.module_class: cannot import {module_class!r} ({exc.__class__.__name__}: {exc}); give the "
            "LightningModule as 'package.module:ClassName', importable in this environment"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ModelLoadError(f"model.module_class: {module_class!r} is not a LightningModule (nn.Module) class")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    try:
        module = cls(**hparams)
        module.load_state_dict(ckpt["state_dict"])
    except Exception as exc:  # noqa: BLE001 - the class and the checkpoint do not fit
        raise ModelLoadError(
            f"model.path: '{path}' does not fit {module_class!r} ({exc.__class__.__name__}: {str(exc)[:160]})"
        ) from None
    pred = LightningPredictor(path, pre, schema, module.eval(), batch_size=batch_size)
    pred.trusted = trusted
    state = module.state_dict()
    prefix = next((k[: -len("head.weight")] for k in state if k.endswith("head.weight")), "")
    pred.net, pred.gradient_handle = gradient_handle(module, state, pre, meta, prefix=prefix)
    return pred


class LightningPredictor(_TorchModulePredictor):
    """The user's LightningModule restored from a checkpoint; scores with its own ``forward``."""

    format = "lightning"

    def __init__(self, path: Path, preprocessing, schema, module, *, batch_size: int = 8192) -> None:
        super().__init__(path, preprocessing, schema, batch_size=batch_size)
        import pytorch_lightning as pl
        import torch

        self.module = module
        self.runtime = f"torch {torch.__version__}, pytorch-lightning {pl.__version__}"
