"""Where per-partition work runs: in this process (``local``) or on a Dask cluster (``dask``).

Both backends expose one operation, :meth:`Backend.map`: call a module-level function on each item of a list and
yield the results **in the order of the items**. Callers combine the results in that order, so a computation gives
the same numbers on either backend, bit for bit: the work per item is the same code on the same data (with torch on
one thread per task, see :func:`single_threaded_torch`), and the combination is the same sequence of operations.
The local backend runs items side by side in threads (torch, pyarrow and numpy release the GIL); the Dask backend
runs them as tasks on the cluster's workers.

Large shared objects (the model) go through :meth:`Backend.share`: the Dask backend sends them to every worker once
(``Client.scatter(..., broadcast=True)``) and passes a handle to each task, instead of pickling the model into every
task.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from audit.errors import ConfigError


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a container or ``taskset`` narrows), not the
    machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    """How an audit spends its ``threads``: a figure renderer process when there are two or more and figures to
    draw, the rest for torch and BLAS in this process, and partitions side by side in the local backend."""

    threads: int
    compute_threads: int
    renderer: bool

    @classmethod
    def for_threads(cls, threads: int | None, *, figures: bool = True) -> ThreadPlan:
        """``figures``: whether the run draws figures (a run that writes report.json alone does not, and then every
        thread computes)."""
        n = threads or available_cpus()
        renderer = figures and n >= 2
        return cls(n, n - 1 if renderer else n, renderer)

    def describe(self) -> dict[str, Any]:
        return {"threads": self.threads, "torch_threads": self.compute_threads, "figure_renderer": self.renderer}


_WANTED: list[dict] = []


@contextmanager
def thread_limits(n: int):
    """torch's intra-op threads and the BLAS/OpenMP pools (``threadpoolctl``) limited to ``n`` inside the block, and
    restored after: a library call must not leave the caller's process changed. torch is not imported for this: if
    it is imported inside the block, :func:`apply_torch_threads` (called where the model is loaded) sets it."""
    from threadpoolctl import threadpool_limits

    state: dict = {"n": n, "before": None}
    _WANTED.append(state)
    try:
        apply_torch_threads()
        with threadpool_limits(limits=n):
            yield
    finally:
        _WANTED.remove(state)
        if state["before"] is not None:
            import torch

            torch.set_num_threads(state["before"])


def apply_torch_threads() -> None:
    """Give torch the thread count of the enclosing :func:`thread_limits` block (nothing outside one, or while torch
    is not imported)."""
    import sys

    if not _WANTED or "torch" not in sys.modules:
        return
    import torch

    state = _WANTED[-1]
    if state["before"] is None:
        state["before"] = torch.get_num_threads()
    torch.set_num_threads(state["n"])


class Backend:
    """Runs ``fn(item, **shared)`` for each item in a pool of threads of this process.

    Parameters
    ----------
    n_threads : int, optional
        Items run at once (default: the number of cores). Each runs torch on one thread, see the module notes.
    """

    name = "local"

    def __init__(self, n_threads: int | None = None) -> None:
        self.n_threads = max(1, n_threads or os.cpu_count() or 1)

    def share(self, obj: Any) -> Any:
        """A handle for ``obj`` to pass as a keyword to :meth:`map` (the object itself, locally)."""
        return obj

    def map(self, fn: Callable[..., Any], items: Iterable[Any], **shared: Any) -> Iterator[Any]:
        """Yield ``fn(item, **shared)`` for each item, in the order of ``items``."""
        with single_threaded_torch():
            if self.n_threads == 1:
                for item in items:
                    yield fn(item, **shared)
                return
            from concurrent.futures import ThreadPoolExecutor

            import torch
            from threadpoolctl import threadpool_limits

            items = iter(items)
            window: deque = deque()
            # each pool thread sets it too: whether a new thread inherits the setting depends on torch's backend.
            # BLAS on one thread as well while tasks run side by side: two tasks each calling a two-thread BLAS on two
            # cores ran the fairness bootstrap 1.6x slower than one thread each (its sums are exact either way)
            with (
                threadpool_limits(limits=1, user_api="blas"),
                ThreadPoolExecutor(self.n_threads, initializer=torch.set_num_threads, initargs=(1,)) as pool,
            ):
                for item in items:
                    window.append(pool.submit(fn, item, **shared))
                    if len(window) >= self.n_threads:
                        yield window.popleft().result()
                while window:
                    yield window.popleft().result()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "threads": self.n_threads}

    def close(self) -> None:
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def single_threaded_torch():
    """torch on one intra-op thread inside the block (restored after).

    A float32 matrix product can differ in the last bit with the number of threads; measured here: with two threads
    instead of one, a partition's sum of scores at one partial-dependence grid point moved by one float32 ulp
    (2**-24). Every task of either backend evaluates the model on one thread, so a row's score does not depend on
    where it ran; parallelism comes from running tasks side by side.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DaskBackend(Backend):
    """Runs items as tasks on a Dask cluster: a new :class:`distributed.LocalCluster`, or an existing scheduler.

    Parameters
    ----------
    address : str, optional
        ``"tcp://host:port"`` of a running scheduler; None starts a LocalCluster (closed again by :meth:`close`).
    n_workers, threads_per_worker : int
        Size of the LocalCluster (ignored with ``address``).
    window : int
        Tasks in flight at once: results are fetched in order and released, so the client holds at most this
        many results (bounded memory however many partitions there are).
    """

    name = "dask"

    def __init__(
        self,
        address: str | None = None,
        *,
        n_workers: int = 2,
        threads_per_worker: int = 1,
        window: int = 8,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(1)
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError(
                "compute.backend: 'dask' needs the dask extra (pip install 'audit[dask]', which `make` installs); "
                "or set compute.backend: local"
            ) from None
        self.window = max(1, window)
        self._cluster = None
        self._shared: dict[int, tuple[Any, Any]] = {}
        if address is None:
            self._cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                dashboard_address=None,
                silence_logs=40,  # logging.ERROR
            )
            self.client = Client(self._cluster)
        else:
            _preflight(address, timeout)
            try:
                self.client = Client(address, timeout=f"{timeout}s")
            except Exception as exc:  # noqa: BLE001 - whatever the client met there, the address is what to fix
                raise ConfigError(
                    f"compute.address: cannot use the Dask scheduler at {address!r} ({exc.__class__.__name__}); "
                    "start one (dask scheduler) or set compute.address: null for a local cluster"
                ) from None
        self.address = address

    def share(self, obj: Any) -> Any:
        """Send ``obj`` to every worker once per backend (later calls with the same object reuse the handle)."""
        key = id(obj)
        if key not in self._shared:
            self._shared[key] = (obj, self.client.scatter(obj, broadcast=True, hash=False))  # obj kept: id stays valid
        return self._shared[key][1]

    def map(self, fn: Callable[..., Any], items: Iterable[Any], **shared: Any) -> Iterator[Any]:
        items = list(items)
        futures = []
        nxt = 0
        for i in range(len(items)):
            while nxt < len(items) and nxt < i + self.window:
                futures.append(self.client.submit(_in_worker, fn, items[nxt], pure=False, **shared))
                nxt += 1
            fut = futures[i]
            yield fut.result()
            futures[i] = None
            fut.release()

    def describe(self) -> dict[str, Any]:
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        return {
            "backend": self.name,
            "address": self.address or "LocalCluster",
            "workers": len(workers),
            "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        }

    def close(self) -> None:
        self._shared.clear()
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _preflight(address: str, timeout: float) -> None:
    """Check that a Dask scheduler answers at ``address`` before ``Client`` is trusted with it.

    A Dask scheduler speaks first: on a new TCP connection it sends its handshake at once, as one message framed the
    way ``distributed.comm.tcp`` frames every message (an 8-byte length, then a frame count and the frames' lengths,
    8 bytes each). Something that accepts the connection and stays silent (a wrong port, a stuck process) would make
    ``Client`` wait for ever, whatever its timeout (measured: over two minutes), and something that answers with
    other bytes (a web server, ssh) makes it allocate whatever length those bytes spell (measured: a MemoryError
    for 3 EiB on an HTTP answer). So read the handshake's frame header here, within ``timeout`` seconds in all, and
    refuse what is not one.
    """
    import socket
    import struct

    if not address.startswith("tcp://"):
        return  # tls, inproc, ucx: left to Client's own timeout
    hostport = address[len("tcp://") :].rstrip("/")
    host, _, port = hostport.rpartition(":")
    deadline = time.monotonic() + timeout

    def read(sock: socket.socket, n: int) -> bytes:
        got = b""
        while len(got) < n:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(n - len(got))
            if not chunk:
                raise ConnectionError("closed")
            got += chunk
        return got

    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            (size,) = struct.unpack("<Q", read(sock, 8))
            if not 16 <= size <= _HANDSHAKE_MAX:
                raise _NotDask
            body = read(sock, size)
            (n_frames,) = struct.unpack_from("<Q", body)
            if not 1 <= n_frames <= 64 or 8 + 8 * n_frames > size:
                raise _NotDask
    except _NotDask:
        raise ConfigError(
            f"compute.address: what answers at {address!r} is not a Dask scheduler (its first bytes are not Dask's "
            "handshake); fix the address (the scheduler's port, 8786 by default) or set compute.address: null for a "
            "local cluster"
        ) from None
    except (OSError, ValueError) as exc:
        what = (
            f"no Dask scheduler answered at {address!r} within {timeout:g} s (it accepted the connection and said "
            "nothing, or too little)"
            if isinstance(exc, TimeoutError | socket.timeout)
            else f"cannot reach a Dask scheduler at {address!r} ({exc.__class__.__name__})"
        )
        raise ConfigError(
            f"compute.address: {what}; start one (dask scheduler), fix the address, or set compute.address: null for "
            "a local cluster"
        ) from None


_HANDSHAKE_MAX = 1 << 20  # a scheduler's handshake is a few hundred bytes; a megabyte is far more than it needs


class _NotDask(Exception):
    """Raised inside :func:`_preflight` when the first bytes are not a Dask handshake."""


def _in_worker(fn: Callable[..., Any], item: Any, **shared: Any) -> Any:
    """Run one task on a worker with torch on one thread (see :func:`single_threaded_torch`).

    Set in the task itself: setting it once per worker with ``Client.run`` did not reach the tasks (measured: they
    still saw two threads), and two single-threaded workers on two cores that each ran torch on both cores were
    about 10x slower.
    """
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return fn(item, **shared)


def make_backend(compute, threads: int | None = None) -> Backend:
    """The backend a ``compute`` config section asks for (the local one runs ``threads`` partitions at once)."""
    if compute.backend == "local":
        return Backend(threads)
    return DaskBackend(
        compute.address,
        n_workers=compute.n_workers,
        threads_per_worker=compute.threads_per_worker,
        timeout=compute.timeout_s,
    )
