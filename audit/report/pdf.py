"""The report as a PDF: the print page laid out by WeasyPrint, in the figure worker when one runs (warm, while the
other files are written), else here."""

from __future__ import annotations

from pathlib import Path

from audit import render


def check_pdf_support() -> None:
    """Raise ConfigError when ``report.formats`` asks for a PDF but WeasyPrint cannot be loaded.

    Where a renderer process will write the PDF (:mod:`audit.figure_worker`), this process does not import
    WeasyPrint (0.8 s): the package being installed and Pango loading is enough here, and the renderer's own import
    is checked again when the PDF is written. Elsewhere, or when Pango is not found under a known name, WeasyPrint
    is imported, which is the definitive check.
    """
    renderer = render.active()
    if renderer is not None and renderer.pdf and _pdf_installed():
        return
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: the system libraries (pango) are missing
        raise _no_pdf(exc) from None


def _no_pdf(exc: BaseException):
    from audit.errors import ConfigError

    return ConfigError(
        f"report.formats: 'pdf' needs WeasyPrint, which cannot be loaded ({exc.__class__.__name__}); install the "
        "pdf extra (.venv/bin/pip install -e '.[pdf]') or remove 'pdf' from report.formats"
    )


def _pdf_installed() -> bool:
    """WeasyPrint is installed and the Pango and GObject libraries it loads open (names as WeasyPrint tries them)."""
    import ctypes
    import importlib.util

    if importlib.util.find_spec("weasyprint") is None:
        return False
    for names in (
        ("libgobject-2.0.so.0", "libgobject-2.0.0.dylib", "libgobject-2.0-0.dll"),
        ("libpango-1.0.so.0", "libpango-1.0.dylib", "libpango-1.0-0.dll"),
    ):
        for name in names:
            try:
                ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            return False
    return True


def write_pdf(html: str, path: Path) -> int:
    """Render the report's print page (``render_html(..., medium="print")``) to PDF; returns the page count.

    Written by the renderer process when one runs with ``pdf`` (it has WeasyPrint loaded and warm), else here; if
    the renderer fails, here (the same code, so the same file, or the real error).
    """
    return start_pdf(html, path)()


def start_pdf(html: str, path: Path):
    """:func:`write_pdf` begun: returns a function that waits for the PDF and returns its page count.

    With the renderer process the PDF is laid out there while this process writes the other files."""
    renderer = render.active()
    if renderer is not None and renderer.pdf:
        try:
            future = renderer.submit_pdf(html, str(path))
        except Exception:  # noqa: BLE001 - the renderer is gone: written here
            future = None
        if future is not None:

            def wait() -> int:
                try:
                    return future.result()
                except Exception:  # noqa: BLE001 - see write_pdf's docstring
                    return write_pdf_here(html, path)

            return wait
    return lambda: write_pdf_here(html, path)


def _weasyprint():
    import logging

    try:
        import weasyprint
    except (ImportError, OSError) as exc:
        raise _no_pdf(exc) from None
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    return weasyprint


def write_pdf_here(html: str, path: Path) -> int:
    """WeasyPrint in this process (print CSS: A4, a page per section); returns the page count."""
    doc = _weasyprint().HTML(string=html, base_url=str(path.parent)).render()
    doc.write_pdf(path)
    return len(doc.pages)


def warm_pdf() -> None:
    """Load WeasyPrint and lay out a small page in the report's style (fonts and style sheets set up once)."""
    from audit.report.html import print_warmup_page

    _weasyprint().HTML(string=print_warmup_page()).render()
