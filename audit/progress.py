"""Progress a person can follow, on stderr: ``[k/N] stage``, epochs while training, a bar on long loops.

Silent when stderr is not a terminal (a scheduler's log gets the CLI's one summary line, not progress) and with
``--quiet``; stage durations are recorded either way (report.json's ``stages_s``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

from audit.errors import AuditInputError


class Progress:
    """Stage progress on stderr.

    Parameters
    ----------
    quiet : bool
        Print nothing.
    total : int
        Stages expected (for ``[k/N]``); :meth:`expect` can set it later.
    stream : file, optional
        Default ``sys.stderr``; progress is shown only when it is a terminal.
    """

    def __init__(self, quiet: bool = False, total: int = 0, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = not quiet and bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = total
        self.k = 0
        self.durations: dict[str, float] = {}
        self._label = ""

    def expect(self, total: int) -> None:
        self.total = total

    def _write(self, text: str, *, end: str = "\n") -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K" + text + end)
            self.stream.flush()

    def stage(self, name: str):
        """A context manager around one stage: prints ``[k/N] name ...`` and, at the end, its duration."""
        progress = self

        class _Stage:
            def __enter__(self):
                progress.k += 1
                total = max(progress.total, progress.k)
                progress._label = f"[{progress.k}/{total}] {name}"
                progress._write(progress._label + " ...", end="")
                self.t0 = time.perf_counter()
                return self

            def __exit__(self, exc_type, exc, tb):
                dt = time.perf_counter() - self.t0
                progress.durations[name] = round(dt, 3)
                # bad input is reported by the CLI's one error line, so the stage stays silent then
                if not (exc_type and issubclass(exc_type, AuditInputError | KeyboardInterrupt)):
                    state = "done" if exc_type is None else "FAILED"
                    progress._write(f"{progress._label}: {state} in {_seconds(dt)}")
                return False

        return _Stage()

    def note(self, text: str) -> None:
        """Overwrite the current stage's line with ``<stage>: text`` (e.g. the epoch while training)."""
        self._write(f"{self._label}: {text}", end="")

    def epochs(self, epoch: int, max_epochs: int, metrics: dict[str, Any]) -> None:
        """Training progress: ``epoch 7/30 val_auc 0.912 val_loss 0.31``."""
        parts = [f"epoch {epoch + 1}/{max_epochs}"]
        for key in ("val_auc", "val_loss"):
            if key in metrics and metrics[key] == metrics[key]:
                parts.append(f"{key} {metrics[key]:.3f}")
        self.note(" ".join(parts))

    def bar(self, iterable: Iterable, *, total: int | None = None, unit: str = "it"):
        """``iterable`` with a progress bar under the current stage (tqdm; silent unless shown)."""
        from tqdm import tqdm

        return tqdm(
            iterable, total=total, unit=unit, file=self.stream, leave=False, disable=not self.enabled,
            desc=self._label, dynamic_ncols=True,
        )  # fmt: skip


def _seconds(s: float) -> str:
    if s >= 60:
        m, r = divmod(int(round(s)), 60)
        return f"{m} min {r} s"
    return f"{s:.1f} s"
