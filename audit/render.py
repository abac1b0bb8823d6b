"""The client of the figure worker: a process beside the audit that draws its figures and writes its PDF while the
audit computes on (see :mod:`audit.plotting`; the process itself is :mod:`audit.figure_worker`).

Ground floor: it imports nothing from the package, so that starting the worker imports no matplotlib here. The PNG
bytes are the ones drawing the figure in the audit's process gives (tested); if the worker fails for any reason, a
figure is drawn in the audit's process, by the fallback its caller gave, when its bytes are first asked for.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar


class PendingPNG:
    """A figure handed to the renderer process; :meth:`result` waits for its PNG bytes.

    If the renderer failed (an exception, or the process died), ``fallback()`` draws the figure here instead (from
    its pickle: :mod:`audit.plotting` passes it), so a pending figure always yields the bytes drawing it directly
    gives.
    """

    def __init__(self, future: Future, fallback: Callable[[], bytes]) -> None:
        self._future, self._fallback = future, fallback

    def result(self) -> bytes:
        try:
            return self._future.result()
        except Exception:  # noqa: BLE001 - see the class notes
            return self._fallback()


class DeferredPNG:
    """A figure that nothing has asked to see yet: ``build()`` draws it when :meth:`result` is first called (see
    :func:`deferred_figures`)."""

    def __init__(self, build: Callable[[], bytes]) -> None:
        self._build, self._png = build, None

    def result(self) -> bytes:
        if self._png is None:
            self._png = self._build()
        return self._png


_RENDERER: _Renderer | None = None
_DEFERRED: ContextVar[bool] = ContextVar("audit_deferred_figures", default=False)  # per thread: two audits can
# run side by side in one process (the API), each with its own formats


def active() -> _Renderer | None:
    """The renderer of the enclosing :func:`background_rendering` block, if any."""
    return _RENDERER


@contextmanager
def deferred_figures(enabled: bool = True):
    """Within the block (when ``enabled``), :func:`audit.plotting.draw` returns a :class:`DeferredPNG`: a figure is
    built and drawn only if its bytes are asked for. A run that writes neither HTML nor PDF shows no figure, and
    drawing them was most of a small audit's time (6.4 of 7.5 s for the test suite's synthetic config)."""
    token = _DEFERRED.set(enabled)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def deferred() -> bool:
    """Whether figures are deferred here (see :func:`deferred_figures`)."""
    return _DEFERRED.get()


class _Renderer:
    """A ``python -c 'from audit.figure_worker import serve; serve()'`` process and the thread that feeds it.

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
            [sys.executable, "-c", f"from audit.figure_worker import serve; serve(pdf={pdf})"],
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
                send(stdin, pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
                ok, payload = pickle.loads(receive(stdout))
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


def send(stream, payload: bytes) -> None:
    stream.write(len(payload).to_bytes(8, "little") + payload)
    stream.flush()


def receive(stream) -> bytes:
    head = stream.read(8)
    if len(head) != 8:
        raise EOFError("renderer closed its output")
    size = int.from_bytes(head, "little")
    payload = stream.read(size)
    if len(payload) != size:
        raise EOFError("renderer closed its output")
    return payload


@contextmanager
def background_rendering(enabled: bool = True, *, pdf: bool = False):
    """Within the block, figures passed to :func:`to_png` are drawn by a separate renderer process (started here,
    so it loads matplotlib while the audit loads data and trains), and with ``pdf`` the report's PDF is written
    there too (:func:`audit.report.pdf.write_pdf`). Leaving the block normally waits for the queued work;
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
