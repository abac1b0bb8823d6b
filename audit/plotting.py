"""Matplotlib/seaborn set-up for report figures (headless Agg backend, compact PNGs)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight", "axes.titlesize": 11})


def to_png(fig) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def subplots(*args, **kwargs):
    return plt.subplots(*args, **kwargs)
