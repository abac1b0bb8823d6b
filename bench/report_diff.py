"""Compare two report.json files field by field, apart from what differs between any two runs.

    python bench/report_diff.py reports/adult/<run A>/report.json reports/adult/<run B>/report.json

Prints one line per differing field (its path and both values) and exits 1 if any differ, else prints nothing and
exits 0. Left out: the run id, start and end times, durations (``duration_s``, ``stages_s``, ``seconds_*``) and the
code commit (``git_commit``, ``config_git_commit``), which change with every run or commit; ``--ignore PATH`` adds a
field (a dotted path prefix, e.g. ``provenance.versions``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

RUN_SPECIFIC = ("audit.run_id", "provenance.started", "provenance.finished", "provenance.git_commit",
                "provenance.config_git_commit", "provenance.duration_s", "provenance.stages_s")  # fmt: skip
RUN_SPECIFIC_KEYS = {"duration_s", "seconds_waiting", "run_dir"}


def differences(a: Any, b: Any, path: str = "", ignore: tuple[str, ...] = RUN_SPECIFIC) -> list[str]:
    """Every path whose value differs between ``a`` and ``b`` (NaN equals NaN: JSON holds none)."""
    if any(path == p or path.startswith(p + ".") for p in ignore) or path.rsplit(".", 1)[-1] in RUN_SPECIFIC_KEYS:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                if sub.rsplit(".", 1)[-1] not in RUN_SPECIFIC_KEYS:
                    out.append(f"{sub}: {'missing' if k not in a else repr(a[k])[:80]} != "
                               f"{'missing' if k not in b else repr(b[k])[:80]}")  # fmt: skip
                continue
            out += differences(a[k], b[k], sub, ignore)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]", ignore)]
    return [] if a == b else [f"{path}: {repr(a)[:80]} != {repr(b)[:80]}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="a report.json (or a run folder)")
    parser.add_argument("b", help="another report.json (or a run folder)")
    parser.add_argument("--ignore", action="append", default=[], help="a dotted path prefix to leave out as well")
    args = parser.parse_args(argv)

    def read(p: str) -> Any:
        path = p if p.endswith(".json") else f"{p.rstrip('/')}/report.json"
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    diff = differences(read(args.a), read(args.b), ignore=RUN_SPECIFIC + tuple(args.ignore))
    for line in diff:
        print(line)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
