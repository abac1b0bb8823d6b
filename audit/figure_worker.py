"""The figure worker: the process :mod:`audit.render` starts beside the audit, which builds and draws its figures and
lays out its PDF while the audit computes on. An entry point: nothing in the package imports it.
"""

from __future__ import annotations

import pickle

from audit.render import receive, send


def serve(pdf: bool = False) -> None:
    """The renderer process: read requests from stdin (``("png", pickled figure, smallest font)``, ``("call",
    pickled figure-building call)`` or ``("pdf", html, path)``), answer each with ``(True, png bytes or page
    count)`` or ``(False, error text)`` on stdout, until stdin closes; then the process ends at once.

    While the audit trains it loads matplotlib, then with ``pdf`` WeasyPrint (so that neither the import nor the
    first-use set-up of fonts is on the audit's path), then the audit's sections, whose module-level functions
    build the figures (:func:`audit.plotting.draw`): about 0.4 s, as they import torch and scikit-learn only where
    they compute, not for their figures."""
    import os
    import sys

    from audit.plotting import _render_call, _render_pickled, pyplot

    pyplot()  # matplotlib and seaborn loaded while the audit trains, not at the first figure
    if pdf:
        try:
            from audit.report.pdf import warm_pdf

            warm_pdf()
        except Exception:  # noqa: BLE001 - reported if a PDF is asked for
            pass
    try:  # the sections' figure functions and what they import, while the audit trains (idle time here)
        from audit.modules.registry import default_modules

        default_modules()
    except Exception:  # noqa: BLE001 - imported again, with the real error, at the first figure that needs it
        pass

    stdin, stdout = sys.stdin.buffer, os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # nothing a library prints may reach the answers
    while True:
        try:
            request = receive(stdin)
        except EOFError:  # the audit is done with it: every answer was sent, every PDF written and closed
            stdout.flush()
            os._exit(0)  # without the teardown of matplotlib, WeasyPrint and the rest (about 0.5 s the audit waits)
        try:
            kind, *args = pickle.loads(request)
            if kind == "pdf":
                from pathlib import Path

                from audit.report.pdf import write_pdf_here

                answer = (True, write_pdf_here(args[0], Path(args[1])))
            elif kind == "call":
                answer = (True, _render_call(*args))
            else:
                answer = (True, _render_pickled(*args))
        except Exception as exc:  # noqa: BLE001 - reported to the audit, which draws the figure itself
            answer = (False, f"{exc.__class__.__name__}: {exc}")
        send(stdout, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
