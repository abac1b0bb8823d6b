"""Where per-partition work runs: in this process (``local``) or on a Dask cluster (``dask``).

Both backends expose one operation, :meth:`Backend.map`: call a module-level function on each item of a list and
yield the results **in the order of the items**. Callers combine the results in that order, so a computation gives
the same numbers on either backend, bit for bit: the work per item is the same code on the same data, and the
combination is the same sequence of operations.

Large shared objects (the model) go through :meth:`Backend.share`: the Dask backend sends them to every worker once
(``Client.scatter(..., broadcast=True)``) and passes a handle to each task, instead of pickling the model into every
task.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from audit.errors import ConfigError


class Backend:
    """Runs ``fn(item, **shared)`` for each item; subclasses decide where."""

    name = "local"

    def share(self, obj: Any) -> Any:
        """A handle for ``obj`` to pass as a keyword to :meth:`map` (the object itself, locally)."""
        return obj

    def map(self, fn: Callable[..., Any], items: Iterable[Any], **shared: Any) -> Iterator[Any]:
        """Yield ``fn(item, **shared)`` for each item, in the order of ``items``."""
        for item in items:
            yield fn(item, **shared)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    def close(self) -> None:
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


LocalBackend = Backend


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
        self, address: str | None = None, *, n_workers: int = 2, threads_per_worker: int = 1, window: int = 8
    ) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError(
                "compute.backend: 'dask' needs the dask extra (pip install 'audit[dask]', which `make` installs); "
                "or set compute.backend: local"
            ) from None
        self.window = max(1, window)
        self._cluster = None
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
            try:
                self.client = Client(address, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise ConfigError(
                    f"compute.address: cannot reach a Dask scheduler at {address!r} ({exc.__class__.__name__}); "
                    "start one (dask scheduler) or set compute.address: null for a local cluster"
                ) from None
        self.address = address
        self.client.run(_limit_threads)

    def share(self, obj: Any) -> Any:
        return self.client.scatter(obj, broadcast=True, hash=False)

    def map(self, fn: Callable[..., Any], items: Iterable[Any], **shared: Any) -> Iterator[Any]:
        items = list(items)
        futures = []
        nxt = 0
        for i in range(len(items)):
            while nxt < len(items) and nxt < i + self.window:
                futures.append(self.client.submit(fn, items[nxt], pure=False, **shared))
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
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _limit_threads() -> None:
    """In a worker: torch uses as many threads as the worker has, not every core of the machine."""
    import torch

    try:
        from distributed import get_worker

        n = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        n = os.cpu_count() or 1
    torch.set_num_threads(max(1, int(n)))


def make_backend(compute) -> Backend:
    """The backend a ``compute`` config section asks for."""
    if compute.backend == "local":
        return Backend()
    return DaskBackend(compute.address, n_workers=compute.n_workers, threads_per_worker=compute.threads_per_worker)
