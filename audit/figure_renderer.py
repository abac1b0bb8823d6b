"""A process beside the audit that draws its figures while the audit computes on (see :mod:`audit.plotting`).

Kept apart from :mod:`audit.plotting` so that starting it imports no matplotlib here. The PNG bytes are the ones
drawing the figure in the audit's process gives (tested); if the renderer fails for any reason, a figure is drawn in
the audit's process when its bytes are first asked for.
"""

from __future__ import annotations

import pickle
from concurrent.futures import Future
from contextlib import contextmanager


def _draw_here(blob: bytes, smallest: float | None) -> bytes:
    from audit.plotting import _render_call, _render_pickled

    return _render_call(blob) if smallest is None else _render_pickled(blob, smallest)


class PendingPNG:
    """A figure handed to the renderer process; :meth:`result` waits for its PNG bytes.

    If the renderer failed (an exception, or the process died), the figure is drawn here from its pickle instead,
    so a pending figure always yields the bytes drawing it directly gives. ``smallest`` is None for a pickled call
    (:func:`audit.plotting.draw`): the figure is then built here too.
    """

    def __init__(self, future: Future, blob: bytes, smallest: float | None) -> None:
        self._future, self._blob, self._smallest = future, blob, smallest

    def result(self) -> bytes:
        try:
            return self._future.result()
        except Exception:  # noqa: BLE001 - see the class notes
            return _draw_here(self._blob, self._smallest)


_RENDERER: _Renderer | None = None


def active() -> _Renderer | None:
    """The renderer of the enclosing :func:`background_rendering` block, if any."""
    return _RENDERER


class _Renderer:
    """A ``python -c 'from audit.figure_renderer import serve; serve()'`` process and the thread that feeds it.

    A plain subprocess rather than a multiprocessing pool: spawning one would re-import the caller's ``__main__``
    (a user's script without a main guard would run again), and forking a process that runs torch threads is not
    safe. Requests are served one at a time, in order; a renderer that fails fails every later request, which
    :class:`PendingPNG` then draws here.
    """

    def __init__(self, *, pdf: bool = False) -> None:
        import queue
        import subprocess
        import sys
        import threading

        self.pdf = pdf
        self._proc = subprocess.Popen(
            [sys.executable, "-c", f"from audit.figure_renderer import serve; serve(pdf={pdf})"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._queue: queue.Queue = queue.Queue()
        self._broken: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, name="audit-figure-renderer", daemon=True)
        self._thread.start()

    def submit(self, blob: bytes, smallest: float) -> Future:
        """A pickled figure to draw; the future's result is its PNG bytes."""
        return self._put(("png", blob, smallest))

    def submit_call(self, blob: bytes) -> Future:
        """A pickled ``(function, args, kwargs)`` that builds a figure (:func:`audit.plotting.draw`); the future's
        result is its PNG bytes."""
        return self._put(("call", blob))

    def submit_pdf(self, html: str, path: str) -> Future:
        """The report page to write as a PDF at ``path``; the future's result is the page count."""
        return self._put(("pdf", html, path))

    def _put(self, request: tuple) -> Future:
        future: Future = Future()
        self._queue.put((future, request))
        return future

    def _pump(self) -> None:
        stdin, stdout = self._proc.stdin, self._proc.stdout
        while (item := self._queue.get()) is not None:
            future, request = item
            if self._broken is not None:
                future.set_exception(self._broken)
                continue
            try:
                _send(stdin, pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
                ok, payload = pickle.loads(_receive(stdout))
            except Exception as exc:  # noqa: BLE001 - the process died or the pipe broke
                self._broken = exc
                future.set_exception(exc)
                continue
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(RuntimeError(payload))

    def close(self, *, wait: bool) -> None:
        """Stop after the queued figures (``wait``) or at once (pending figures are then drawn here if asked for)."""
        if not wait:  # abandoned (the audit failed): nothing it would still do is wanted, so it is not waited for
            self._broken = RuntimeError("renderer stopped")
            self._queue.put(None)
            self._proc.kill()  # it may be loading matplotlib and WeasyPrint and read no request for a second
            self._proc.wait()
            return
        self._queue.put(None)
        self._thread.join()
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - it would not stop: make it
            self._proc.kill()
            self._proc.wait()


def _send(stream, payload: bytes) -> None:
    stream.write(len(payload).to_bytes(8, "little") + payload)
    stream.flush()


def _receive(stream) -> bytes:
    head = stream.read(8)
    if len(head) != 8:
        raise EOFError("renderer closed its output")
    size = int.from_bytes(head, "little")
    payload = stream.read(size)
    if len(payload) != size:
        raise EOFError("renderer closed its output")
    return payload


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
            from audit.report.writer import warm_pdf

            warm_pdf()
        except Exception:  # noqa: BLE001 - reported if a PDF is asked for
            pass
    try:  # the sections' figure functions and what they import, while the audit trains (idle time here)
        from audit.pipeline import default_modules

        default_modules()
    except Exception:  # noqa: BLE001 - imported again, with the real error, at the first figure that needs it
        pass

    stdin, stdout = sys.stdin.buffer, os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # nothing a library prints may reach the answers
    while True:
        try:
            request = _receive(stdin)
        except EOFError:  # the audit is done with it: every answer was sent, every PDF written and closed
            stdout.flush()
            os._exit(0)  # without the teardown of matplotlib, WeasyPrint and the rest (about 0.5 s the audit waits)
        try:
            kind, *args = pickle.loads(request)
            if kind == "pdf":
                from pathlib import Path

                from audit.report.writer import write_pdf_here

                answer = (True, write_pdf_here(args[0], Path(args[1])))
            elif kind == "call":
                answer = (True, _render_call(*args))
            else:
                answer = (True, _render_pickled(*args))
        except Exception as exc:  # noqa: BLE001 - reported to the audit, which draws the figure itself
            answer = (False, f"{exc.__class__.__name__}: {exc}")
        _send(stdout, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))


@contextmanager
def background_rendering(enabled: bool = True, *, pdf: bool = False):
    """Within the block, figures passed to :func:`to_png` are drawn by a separate renderer process (started here,
    so it loads matplotlib while the audit loads data and trains), and with ``pdf`` the report's PDF is written
    there too (:func:`audit.report.writer.write_pdf`). Leaving the block normally waits for the queued work;
    leaving it on an exception stops the renderer at once."""
    global _RENDERER
    if not enabled or _RENDERER is not None:
        yield
        return
    renderer = _RENDERER = _Renderer(pdf=pdf)
    ok = False
    try:
        yield
        ok = True
    finally:
        _RENDERER = None
        renderer.close(wait=ok)
