"""Matplotlib/seaborn set-up for report figures (headless Agg backend, compact PNGs sized for print).

Figures are at most :data:`MAX_WIDTH_IN` wide (the text width of an A4 page) and shown at their own size, in the
HTML page and the PDF alike, so a font of 8 pt in a figure is 8 pt on paper. :func:`to_png` raises any text smaller
than :data:`MIN_FONT_PT` to it, and records the figure's width and smallest font in the PNG (``audit:width_in``,
``audit:min_font_pt``), which the PDF tests read back.

Building and drawing are the slow part of a figure (about 6 s and 7 s for the Adult audit's figures). Inside
:func:`audit.render.background_rendering` a second process does both while the audit computes on:
:func:`draw` hands it the function that builds a figure and its data, :func:`to_png` a figure built here; both
return a pending figure at once. Matplotlib and seaborn are imported on first use (:func:`pyplot`), so a process whose
figures the renderer builds never imports them.
"""

from __future__ import annotations

import io
import pickle
from typing import TYPE_CHECKING

from audit import render

if TYPE_CHECKING:
    from audit.render import PendingPNG

MAX_WIDTH_IN = 7.2  # A4 (210 mm) less 12 mm margins: the widest a figure prints at its own size
MAX_HEIGHT_IN = 9.3
MIN_FONT_PT = 8.0
DPI = 100
_PLT = None


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend with the report's seaborn theme and sizes (set once)."""
    global _PLT
    if _PLT is None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import seaborn as sns

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
                # ticks of 10,000 and more as short numbers with the power of ten at the axis end: six-digit tick
                # labels (capital-gain, fnlwgt) overlapped on a printed panel
                "axes.formatter.limits": (-4, 4),
                "axes.formatter.use_mathtext": True,
            }
        )
        _PLT = plt
    return _PLT


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


def to_png(fig) -> bytes | PendingPNG:
    """Render a figure to a compact PNG (256-colour palette, optimised) and close it.

    Report figures are flat-colour plots, so a palette loses nothing visible and makes the HTML report about three
    times smaller than RGBA PNGs. Text below :data:`MIN_FONT_PT` is raised to it first. Inside
    :func:`audit.render.background_rendering` the renderer process draws it and a
    :class:`audit.render.PendingPNG` is returned.
    """
    smallest = _prepare(fig)
    renderer = render.active()
    if renderer is not None:
        try:
            blob = pickle.dumps(fig, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - an artist that cannot be pickled: draw it here
            blob = None
        if blob is not None:
            pyplot().close(fig)
            try:
                return render.PendingPNG(renderer.submit(blob, smallest), lambda: _render_pickled(blob, smallest))
            except Exception:  # noqa: BLE001 - the renderer is gone: draw it here
                return _render(pickle.loads(blob), smallest)
    return _render(fig, smallest)


def _prepare(fig) -> float:
    """Layout engine and minimum fonts; returns the smallest font left (see :func:`to_png`)."""
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("tight")  # labels inside the figure, without a second draw for a tight bounding box
    return _fonts_at_least(fig, MIN_FONT_PT)


def draw(fn, /, *args, **kwargs) -> bytes | PendingPNG:
    """The PNG of the figure ``fn(*args, **kwargs)`` builds, as :func:`to_png` would give it.

    Building a figure (axes, lines, markers, seaborn's statistics) takes as long as drawing it: about 6 s of the
    Adult audit's 23 figures when built in the audit's process. Inside
    :func:`audit.render.background_rendering`, ``fn`` and its arguments are handed to the renderer
    process, which builds the figure there, while the audit computes on; ``fn`` must be a module-level function
    (it is pickled by name) taking plain data. Outside, or if the call cannot be pickled or the renderer is gone,
    the figure is built and drawn here: the bytes are the same either way (tested). Inside
    :func:`audit.render.deferred_figures` the call is kept (pickled, so later changes to its data do not show) and
    the figure is built only when its bytes are asked for.
    """
    if render.deferred():
        try:
            blob = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - arguments that cannot be pickled: kept as they are
            return render.DeferredPNG(lambda: to_png(fn(*args, **kwargs)))
        return render.DeferredPNG(lambda: _render_call(blob))
    renderer = render.active()
    if renderer is not None:
        try:
            blob = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - arguments that cannot be pickled: built here
            blob = None
        if blob is not None:
            try:
                return render.PendingPNG(renderer.submit_call(blob), lambda: _render_call(blob))
            except Exception:  # noqa: BLE001 - the renderer is gone: built here
                pass
    return to_png(fn(*args, **kwargs))


def _render_call(blob: bytes) -> bytes:
    """The renderer process's task for :func:`draw`: build the figure from the pickled call and draw it."""
    fn, args, kwargs = pickle.loads(blob)
    fig = fn(*args, **kwargs)
    return _render(fig, _prepare(fig))


def _render(fig, smallest: float) -> bytes:
    """Draw ``fig`` (layout engine and fonts already set) into the palette PNG described in :func:`to_png`."""
    from PIL import Image, PngImagePlugin

    width_in = float(fig.get_figwidth())
    fig.canvas.draw()  # drawn once, straight into RGBA memory (no intermediate PNG to encode and decode)
    w, h = fig.canvas.get_width_height(physical=True)
    rgb = Image.frombuffer("RGBA", (w, h), fig.canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    pyplot().close(fig)
    img = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    info = PngImagePlugin.PngInfo()
    info.add_text("audit:width_in", f"{width_in:.3f}")
    info.add_text("audit:min_font_pt", f"{smallest:.2f}")
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True, pnginfo=info, dpi=(DPI, DPI))
    return out.getvalue()


def _render_pickled(blob: bytes, smallest: float) -> bytes:
    """The renderer process's task: unpickle a figure and :func:`_render` it."""
    pyplot()  # the same set-up as where the figure was built
    return _render(pickle.loads(blob), smallest)


def png_info(png: bytes) -> dict[str, float]:
    """The figure's width in inches and its smallest font in points, as :func:`to_png` recorded them."""
    from PIL import Image

    text = Image.open(io.BytesIO(png)).text
    return {k.split(":", 1)[1]: float(v) for k, v in text.items() if k.startswith("audit:")}


def subplots(*args, **kwargs):
    """``plt.subplots`` with the figure capped at :data:`MAX_WIDTH_IN` x :data:`MAX_HEIGHT_IN` inches."""
    plt = pyplot()
    w, h = kwargs.get("figsize", plt.rcParams["figure.figsize"])
    kwargs["figsize"] = (min(w, MAX_WIDTH_IN), min(h, MAX_HEIGHT_IN))
    return plt.subplots(*args, **kwargs)
