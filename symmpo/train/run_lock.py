"""One writer per output folder: ``RunLock`` refuses a second run and takes over a stale lock.

The lock is ``<output_dir>/.run.lock``, held with ``fcntl.flock`` for the life of the process
and holding the holder's pid, host and start time. The operating system releases a flock when
its process dies, however it dies (SIGKILL included), so a lock left by a killed run is free
and the next run takes it over, saying whose it was. Where ``fcntl`` is missing (Windows), the
pid in the file is checked for a live process instead (on this host only).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time

from .cli import UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".run.lock"


class RunLock:
    """``with RunLock(output_dir, log):`` or ``lock = RunLock(...)`` ... ``lock.release()``."""

    #: The lock this process holds per folder: a later run in the same process (a notebook, a
    #: test calling train.main again after an error) takes it over instead of waiting on itself.
    _held: dict[str, RunLock] = {}

    def __init__(self, output_dir, log=print):
        self.path = pathlib.Path(output_dir) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        earlier = RunLock._held.pop(str(self.path.resolve()), None)
        if earlier is not None:
            earlier.release()
        self.handle = open(self.path, "a+", encoding="utf-8")
        holder = self._holder()
        if not self._acquire(holder):
            self.handle.close()
            raise UsageError(
                f"--output_dir {output_dir} is in use by process {holder.get('pid')} on "
                f"{holder.get('host')} (started {holder.get('started')}); wait for it to end or "
                "choose another --output_dir"
            )
        if holder.get("pid") not in (None, os.getpid()):
            log(f"took over the stale lock of process {holder['pid']} (it no longer runs)")
        self.handle.seek(0)
        self.handle.truncate()
        mine = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.handle.write(json.dumps(mine))
        self.handle.flush()
        RunLock._held[str(self.path.resolve())] = self

    def _holder(self) -> dict:
        self.handle.seek(0)
        try:
            return json.loads(self.handle.read() or "{}")
        except json.JSONDecodeError:
            return {}

    def _acquire(self, holder: dict) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                return False
        pid = holder.get("pid")
        if pid is None or holder.get("host") != socket.gethostname() or pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except OSError:
            return True  # no such process: stale
        return False

    def release(self) -> None:
        if self.handle.closed:
            return
        if RunLock._held.get(str(self.path.resolve())) is self:
            del RunLock._held[str(self.path.resolve())]
        self.handle.seek(0)
        self.handle.truncate()
        if fcntl is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
