"""The run folder: created exclusively, owned by one process, published atomically, never shared.

A run writes into ``<output_dir>/<name>/.tmp-<run id>/`` and renames it to ``<run id>/`` when complete; ``latest``
(a symbolic link) moves only afterwards. Run ids are a UTC timestamp plus a random suffix, and the temporary folder is
created with exclusive creation, so two runs started in the same millisecond (or with a clock that does not move)
get two folders; a run removes only the folder it created. A temporary folder left by a killed run is removed by the
next run once its process is gone: the ``.pid`` file records the process id, its start time and the host, so a
recycled process id does not keep a dead run's folder alive.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

from audit.errors import AuditInputError

STALE_WITHOUT_PID_S = 600  # a temporary folder without a readable .pid this old is a crashed run's


class OutputError(AuditInputError):
    """The output folder cannot be written (exit code 2): a file in the way, no permission, no space, a name too
    long."""


def run_id(now: dt.datetime, suffix: str | None = None) -> str:
    """``20261201T104031-209Z-3fa1``: UTC time to the millisecond and four random hex digits."""
    return now.strftime("%Y%m%dT%H%M%S") + f"-{now.microsecond // 1000:03d}Z-" + (suffix or new_suffix())


def new_suffix() -> str:
    return secrets.token_hex(2)


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def check_output_root(out_root: Path, key: str = "report.output_dir") -> None:
    """Refuse, before any work, an output folder that cannot be written.

    Raises
    ------
    OutputError
        A file where a folder must be, ``latest`` that is a real folder, no write permission, a name too long.
    """
    for part in out_root.parts:
        if len(part.encode()) > 255:
            raise OutputError(f"{key}: the folder name '{part[:40]}...' is longer than 255 bytes; use a shorter one")
    probe = out_root
    while not probe.exists():
        if probe.is_symlink():
            raise OutputError(f"{key}: '{probe}' is a broken symbolic link; fix or remove it")
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{key}: '{probe}' is a file, not a folder; point report.output_dir at a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{key}: '{probe}' is not writable; pick a folder you can write to")
    latest = out_root / "latest"
    if latest.exists() and not latest.is_symlink():
        raise OutputError(
            f"{key}: '{latest}' is a real folder, not the link the audit keeps to the newest run; move or rename it"
        )


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux), or None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


MAX_PID = 1 << 22  # Linux's largest pid_max


def _owner(tmp: Path) -> dict | None:
    """The ``.pid`` record of a temporary run folder, checked: a mapping with a process id in 1..2^22 and a host name
    (and a start time, when given, as text). Anything else (a bare number an older version wrote, a record of
    another program, a damaged or unreadable file) is None: data found on disk is validated, never trusted."""
    try:
        path = tmp / ".pid"
        if not path.is_file() or path.stat().st_size > 4096:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    pid, host, started = record.get("pid"), record.get("host"), record.get("started")
    if not (isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < MAX_PID and isinstance(host, str)):
        return None
    if started is not None and not isinstance(started, str):
        return None
    return {"pid": pid, "host": host, "started": started}


def _alive(record: dict) -> bool:
    """Whether the process that wrote a (checked, see :func:`_owner`) ``.pid`` record still runs: the same process,
    not a recycled id."""
    if record["host"] != socket.gethostname():
        return True  # another machine's run on a shared folder: never ours to remove
    pid = record["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    started = record["started"]
    return started is None or _process_start(pid) in (None, started)


def remove_stale(out_root: Path) -> list[Path]:
    """Delete the temporary folders of runs that died; returns what was removed.

    A folder with a valid ``.pid`` record is stale once its process has gone; one without a valid record (none, a
    foreign or damaged one, one an older version wrote) once it is :data:`STALE_WITHOUT_PID_S` old. Only real
    folders are touched: a file or a link named like one is left alone."""
    removed = []
    if not out_root.is_dir():
        return removed
    for tmp in out_root.glob(".tmp-*"):
        if tmp.is_symlink() or not tmp.is_dir():
            continue
        record = _owner(tmp)
        if record is not None:
            stale = not _alive(record)
        else:
            try:
                stale = time.time() - tmp.stat().st_mtime > STALE_WITHOUT_PID_S
            except OSError:
                stale = False
        if stale:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    for link in out_root.glob(".latest.tmp-*"):
        if link.is_symlink() and time.time() - link.lstat().st_mtime > STALE_WITHOUT_PID_S:
            link.unlink(missing_ok=True)
    return removed


class RunFolder:
    """The temporary folder of one run: created exclusively, removed only by its owner, published by rename."""

    def __init__(self, out_root: Path, now: dt.datetime) -> None:
        self.out_root = out_root
        self.now = now
        self.run_id = run_id(now)
        self.tmp: Path | None = None
        self._created: list[Path] = []

    def create(self, attempts: int = 20) -> Path:
        """Create the temporary folder (a fresh suffix when the id is taken) and record the owning process."""
        self._created = [d for d in (self.out_root.parent, self.out_root) if not d.exists()]
        try:
            self.out_root.mkdir(parents=True, exist_ok=True)
            for _ in range(attempts):
                tmp = self.out_root / f".tmp-{self.run_id}"
                if not (self.out_root / self.run_id).exists():
                    try:
                        tmp.mkdir()
                        break
                    except FileExistsError:
                        pass
                self.run_id = run_id(self.now)  # taken: same time, another suffix
            else:
                raise OutputError(f"report.output_dir: no free run id in '{self.out_root}' after {attempts} tries")
            self.tmp = tmp
            record = {"pid": os.getpid(), "started": _process_start(os.getpid()), "host": socket.gethostname()}
            (tmp / ".pid").write_text(json.dumps(record))
        except OSError as exc:
            self.discard()
            raise OutputError(
                f"report.output_dir: cannot create the run folder in '{self.out_root}' ({_reason(exc)}); "
                "pick a writable folder with free space"
            ) from None
        return tmp

    def discard(self) -> None:
        """Remove what this run created (its temporary folder, and output folders it made that are still empty)."""
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None
        for d in reversed(self._created):
            try:
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            except OSError:
                pass

    def publish(self) -> Path:
        """Rename the temporary folder to its run id and point ``latest`` at it (both atomic renames)."""
        assert self.tmp is not None
        final = self.out_root / self.run_id
        (self.tmp / ".pid").unlink(missing_ok=True)
        os.rename(self.tmp, final)  # fails rather than replace an existing run
        self.tmp = None
        link_tmp = self.out_root / f".latest.tmp-{self.run_id}"
        link_tmp.unlink(missing_ok=True)
        link_tmp.symlink_to(self.run_id, target_is_directory=True)
        os.replace(link_tmp, self.out_root / "latest")
        return final
