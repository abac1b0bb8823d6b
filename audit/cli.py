"""Command line: ``python -m audit run CONFIG`` and ``python -m audit validate CONFIG``.

Exit codes: 0 all gates passed, 1 a gating finding failed, 2 bad config or input (nothing written),
3 a module errored (the report says which), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from audit.errors import EXIT_BAD_INPUT, AuditInputError

EPILOG = """exit codes:
  0  every gate passed
  1  a gating finding failed (see the report's summary)
  2  bad config or input: one line on stderr says what and how to fix it; nothing is written
  3  a module errored: the report is written and shows which module failed and why
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m audit",
        description="Audit a tabular model from one YAML config.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,validate}")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from audit.config import load_config

        cfg = load_config(args.config)
        if args.command == "validate":
            if not args.no_data:
                from audit.data import load_dataset
                from audit.modules.local_explain import check_local_config

                ds = load_dataset(cfg)
                check_local_config(cfg, ds)
                print(
                    f"{args.config}: valid ({len(ds.X_train)} train rows, {len(ds.X_test)} test rows, "
                    f"{len(ds.schema.features)} features)"
                )
            else:
                print(f"{args.config}: valid config")
            return 0
        from audit.pipeline import run_audit

        run = run_audit(cfg, quiet=args.quiet, baseline=args.baseline)
    except AuditInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: no report was written", file=sys.stderr)
        return 130
    verdict = {0: "PASS", 1: "FAIL (a gate failed)", 3: "ERROR (a module failed)"}[run.exit_code]
    where = run.run_dir / "report.html" if run.run_dir else "(not written)"
    print(f"{verdict}: {where}")
    return run.exit_code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
