"""Matplotlib/seaborn set-up for report figures (headless Agg backend, compact PNGs sized for print).

Figures are at most :data:`MAX_WIDTH_IN` wide (the text width of an A4 page) and shown at their own size, in the
HTML page and the PDF alike, so a font of 8 pt in a figure is 8 pt on paper. :func:`to_png` raises any text smaller
than :data:`MIN_FONT_PT` to it, and records the figure's width and smallest font in the PNG (``audit:width_in``,
``audit:min_font_pt``), which the PDF tests read back.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

MAX_WIDTH_IN = 7.2  # A4 (210 mm) less 12 mm margins: the widest a figure prints at its own size
MAX_HEIGHT_IN = 9.3
MIN_FONT_PT = 8.0
DPI = 100

sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
plt.rcParams.update(
    {
        "figure.dpi": DPI,
        "savefig.bbox": "standard",  # a tight box changes the printed width (and costs a second draw)
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.labelsize": 9,
        "xtick.labelsize": 8.5,
        "ytick.labelsize": 8.5,
        "legend.fontsize": 8,
        "figure.titlesize": 10,
    }
)


def _fonts_at_least(fig, minimum: float) -> float:
    """Raise every visible text of ``fig`` to ``minimum`` points; returns the smallest size left."""
    from matplotlib.text import Text

    smallest = float("inf")
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text():
            continue
        if t.get_fontsize() < minimum:
            t.set_fontsize(minimum)
        smallest = min(smallest, t.get_fontsize())
    return smallest if smallest != float("inf") else minimum


def to_png(fig) -> bytes:
    """Render a figure to a compact PNG (256-colour palette, optimised) and close it.

    Report figures are flat-colour plots, so a palette loses nothing visible and makes the HTML report about three
    times smaller than RGBA PNGs. Text below :data:`MIN_FONT_PT` is raised to it first.
    """
    from PIL import Image, PngImagePlugin

    if fig.get_layout_engine() is None:
        fig.set_layout_engine("tight")  # labels inside the figure, without a second draw for a tight bounding box
    smallest = _fonts_at_least(fig, MIN_FONT_PT)
    width_in = float(fig.get_figwidth())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    info = PngImagePlugin.PngInfo()
    info.add_text("audit:width_in", f"{width_in:.3f}")
    info.add_text("audit:min_font_pt", f"{smallest:.2f}")
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True, pnginfo=info, dpi=(DPI, DPI))
    return out.getvalue()


def png_info(png: bytes) -> dict[str, float]:
    """The figure's width in inches and its smallest font in points, as :func:`to_png` recorded them."""
    from PIL import Image

    text = Image.open(io.BytesIO(png)).text
    return {k.split(":", 1)[1]: float(v) for k, v in text.items() if k.startswith("audit:")}


def subplots(*args, **kwargs):
    """``plt.subplots`` with the figure capped at :data:`MAX_WIDTH_IN` x :data:`MAX_HEIGHT_IN` inches."""
    w, h = kwargs.get("figsize", plt.rcParams["figure.figsize"])
    kwargs["figsize"] = (min(w, MAX_WIDTH_IN), min(h, MAX_HEIGHT_IN))
    return plt.subplots(*args, **kwargs)
