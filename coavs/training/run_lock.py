"""One run per run folder: an OS file lock on ``<run>/.lock`` held for the run's whole life.

``fcntl.flock`` locks belong to the open file, so the kernel drops the lock when the holder exits in any way
(including ``kill -9``): a lock left by a dead run is simply acquired by the next one, while a live holder makes
a second run into the same folder fail at once with one line naming its pid (written into the lock file).

    with RunLock("runs/x"):
        ...  # train; nobody else trains into runs/x meanwhile
"""

from __future__ import annotations

import os
from pathlib import Path

from coavs.errors import UserError

LOCK_NAME = ".lock"


class RunLock:
    """Exclusive lock of the run folder ``root`` (created when missing). On release after a run that wrote
    nothing (a refused or failed start), a folder this lock created is removed again."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.previous_pid: int | None = None  # pid of a holder that died without releasing (stale lock)
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "RunLock":
        import fcntl

        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"the run folder {self.root} is a file, not a folder")
        try:
            self._created = not self.root.exists()
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the run folder {self.root}: {exc.strerror or exc}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                self._remove_if_empty()
                raise UserError(f"cannot write into the run folder {self.root}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"pid {holder}" if holder is not None else "another process"
                raise UserError(f"{self.root} is in use by another coavs run ({who}); wait for it to finish or "
                                "choose another --out") from None
            # A releasing run may have unlinked the file between our open and flock: lock the file on disk.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.previous_pid = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        self._remove_if_empty()
        try:
            os.ftruncate(self._fd, 0)  # a pid left in the file means its run died holding the lock
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _remove_if_empty(self) -> None:
        """Undo the folder's creation when nothing but the lock file was written into it."""
        if not self._created:
            return
        try:
            if {p.name for p in self.root.iterdir()} <= {LOCK_NAME}:
                self.path.unlink(missing_ok=True)
                self.root.rmdir()
        except OSError:
            pass

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


__all__ = ["LOCK_NAME", "RunLock"]
