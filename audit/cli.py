"""Command line: ``python -m audit run CONFIG``, ``validate CONFIG``, ``reason-codes CONFIG``, ``serve MODEL`` and
``export MODEL``.

Exit codes: 0 all gates passed, 1 a gating finding failed, 2 bad config or input (nothing written),
3 a module errored (the report says which), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from audit.errors import EXIT_BAD_INPUT, AuditInputError

EPILOG = """exit codes:
  0  every gate passed
  1  a gating finding failed (see the report's summary)
  2  bad config or input: one line on stderr says what and how to fix it; nothing is written
  3  a module errored: the report is written and shows which module failed and why
  130, 143  interrupted (Ctrl-C) or terminated (SIGTERM): the run's temporary folder is removed, earlier runs and
            `latest` are untouched
"""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job) raised in the main thread, so the run cleans up as for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def _terminable() -> object | None:
    """Route SIGTERM through :class:`Terminated` while a command runs; the previous handler, or None where signals
    cannot be set (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m audit",
        description="Audit a tabular model from one YAML config.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,validate,reason-codes,history,serve,export}")
    run = sub.add_parser(
        "run",
        help="run an audit and write its report",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train or load the model, run every enabled module, write report.json and "
        "report.html under report.output_dir/<name>/<run id>/.",
    )
    run.add_argument("config", help="path of the YAML config, e.g. configs/adult.yaml")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    run.add_argument(
        "--baseline",
        metavar="PATH",
        help="run folder or report.json to compare with (default: the previous run of this config)",
    )
    val = sub.add_parser(
        "validate",
        help="validate a config (and its data files) without running anything",
        description="Check the config's keys and types, then load the data and check columns, "
        "labels and checksums. Exit 0 if valid, 2 otherwise.",
    )
    val.add_argument("config", help="path of the YAML config")
    val.add_argument("--no-data", action="store_true", help="check the config only, do not read the data")
    rc = sub.add_parser(
        "reason-codes",
        help="write the top-k adverse features of every declined row of a Parquet file",
        description="For every row of --input that the model scores below the threshold, write its top-k adverse "
        "features (most negative Shapley values, against a small background of training rows) to --output. "
        "The file is read a row-group partition at a time on the config's compute backend (local or dask), "
        "so memory does not grow with its size.",
        epilog="exit codes: 0 written, 2 bad input (nothing written)",
    )
    rc.add_argument("config", help="path of the YAML config (data, seed, threshold, compute backend)")
    rc.add_argument("--input", required=True, metavar="PARQUET", help="rows to explain (needs the feature columns)")
    rc.add_argument("--output", required=True, metavar="PARQUET", help="where to write the reason codes")
    rc.add_argument(
        "--model",
        metavar="PATH",
        help="saved model folder (default: model.path of a loading config, else the latest audit run's model)",
    )
    rc.add_argument("--top-k", type=_positive, metavar="K", help="reasons per row (default: local.shap.reason_codes)")
    rc.add_argument(
        "--background", type=_positive, default=32, metavar="N", help="training rows in the background (default 32)"
    )
    rc.add_argument(
        "--permutations",
        type=_positive,
        default=1,
        metavar="P",
        help="antithetic pairs of feature orders for the Shapley estimate (default 1)",
    )
    rc.add_argument("--threshold", type=float, metavar="T", help="decline below this score (default: model.threshold)")
    rc.add_argument(
        "--id-column", metavar="COL", help="an input column to copy into the output (e.g. an application id)"
    )
    rc.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    hist = sub.add_parser(
        "history",
        help="print the history of a config's runs (what reports/<name>/index.html shows)",
        description="One line per run of this config found in its output folder: date, verdict, failed checks by "
        "severity, ROC AUC, ECE, score PSI and the model hash; --write also rewrites index.html.",
    )
    hist.add_argument("config", help="path of the YAML config")
    hist.add_argument("--write", action="store_true", help="rewrite reports/<name>/index.html too")
    srv = sub.add_parser(
        "serve",
        help="serve a saved model over HTTP (kserve-v2 and mlflow payloads) for an endpoint audit",
        description="A local test server for model.format: http. POST /v2/models/audit/infer (KServe v2) and "
        "POST /invocations (MLflow) score rows with the saved model; GET /v2/health/ready says it is up. "
        "No TLS, no authentication: for trying and testing endpoint audits, not for production.",
    )
    srv.add_argument("model", help="an artifact folder (reports/<name>/latest/model) or an exported model.onnx")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=_positive, default=8080, help="port (default 8080)")
    exp = sub.add_parser(
        "export",
        help="write a saved model folder's net as ONNX and/or TorchScript beside it",
        description="Load an artifact folder (e.g. reports/adult/latest/model) and write model.onnx and/or "
        "model.torchscript.pt into it, checked against the net; prints each file's sha256. "
        "model.export: [onnx, torchscript] does the same while training.",
        epilog="exit codes: 0 written, 2 bad input",
    )
    exp.add_argument("model", help="an artifact folder")
    exp.add_argument(
        "--format", action="append", choices=["onnx", "torchscript"], dest="formats", help="repeatable (default: onnx)"
    )
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _one_line(text: str, limit: int = 2000) -> str:
    """Messages are one line on stderr: newlines folded, length bounded."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def console() -> None:
    """The ``audit`` command and ``python -m audit``: :func:`main`, then :func:`exit_now` with its exit code."""
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process with ``code`` once the command is done, without the interpreter's teardown.

    The exit handlers run first (temporary folders, logging, a Dask cluster), then the standard streams are flushed;
    what is skipped is freeing every object of every loaded module one by one, about 0.9 s with torch,
    scikit-learn and pandas loaded, for memory the operating system takes back anyway. Only for a finished command:
    every file it writes is closed before :func:`main` returns.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    previous = _terminable()
    try:
        return _main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        if args.command == "serve":
            from audit.serve import serve

            serve(args.model, host=args.host, port=args.port)
            return 0
        if args.command == "export":
            from audit.model.artifact import load_model
            from audit.model.formats import export_model

            files = export_model(args.model, load_model(args.model), sorted(set(args.formats or ["onnx"])))
            for fmt, info in files.items():
                print(f"{fmt}: {args.model.rstrip('/')}/{info['file']} sha256 {info['sha256']}")
            return 0
        from audit.config import load_config

        cfg = load_config(args.config)
        if args.command == "validate":
            if not args.no_data:
                from audit.data import load_dataset
                from audit.modules._shared import check_local_config

                ds = load_dataset(cfg)
                check_local_config(cfg, ds)
                extra = ""
                if cfg.dataset.population is not None:
                    from audit.population import open_population

                    pop = open_population(cfg, ds.schema)
                    extra = f", population {pop.rows} rows in {len(pop.partitions)} partitions"
                print(
                    f"{args.config}: valid ({len(ds.X_train)} train rows, {len(ds.X_test)} test rows, "
                    f"{len(ds.schema.features)} features{extra})"
                )
            else:
                print(f"{args.config}: valid config")
            return 0
        if args.command == "history":
            from audit.history import collect, table_text, write_index

            out_root = cfg.resolve(cfg.report.output_dir, key="report.output_dir") / cfg.name
            rows = collect(out_root)
            if not rows:
                print(f"no runs of {cfg.name!r} in '{out_root}' yet")
                return 0
            print(table_text(rows))
            if args.write:
                print(f"wrote {write_index(out_root, cfg.name)}")
            return 0
        if args.command == "reason-codes":
            from audit.batch import reason_codes

            res = reason_codes(
                cfg,
                input=args.input,
                output=args.output,
                model=args.model,
                top_k=args.top_k,
                background=args.background,
                n_permutations=args.permutations,
                threshold=args.threshold,
                id_column=args.id_column,
            )
            if not args.quiet:
                print(f"{res.output}: reason codes for {res.declined} of {res.rows} rows ({res.seconds:.1f}s)")
            return 0
        from audit.pipeline import run_audit

        run = run_audit(cfg, quiet=args.quiet, baseline=args.baseline)
    except AuditInputError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a file system error no check foresaw: still one line, still bad input
        where = f" ('{exc.filename}')" if exc.filename else ""
        reason = exc.strerror or exc.__class__.__name__
        print(f"error: {reason}{where}; check the paths in the config and the output folder", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print(f"{'terminated' if isinstance(exc, Terminated) else 'interrupted'}: no report was written",
              file=sys.stderr)  # fmt: skip
        return 143 if isinstance(exc, Terminated) else 130
    from audit.report.summary import cli_line, summarize

    where = (
        run.run_dir / ("report.html" if "html" in run.config.report.formats else "report.json")
        if run.run_dir
        else "(not written)"
    )
    print(cli_line(summarize(run.findings, run.modules, run.exit_code), str(where)))
    return run.exit_code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
