"""On-disk cache of decoded clips: one ``.npy`` file per clip and array kind, memory-mapped when read.

The first epoch decodes JPEG/PNG frames, masks and wavs and stores the results here (frames and labels as one
``uint8 [T,4,H,W]`` array, audio features as ``float32``); later epochs read them with ``np.load(mmap_mode="r")``
and copy, which is much cheaper than decoding and leaves the pages to the OS cache.

Safety:
- every write goes to a unique temporary file in the same folder and is renamed into place (atomic on POSIX), so
  concurrent DataLoader workers (or several processes) writing the same clip cannot expose a half-written file,
  and a process killed mid-write leaves only a ``*.tmp-*`` file, which is ignored (and removed after an hour);
- file names carry a signature of the clip's source files (size and mtime of every frame, mask and wav), so an
  edited source file makes a new entry instead of serving a stale one;
- a cache file that fails to load (say, cut short by a full disk before an unclean shutdown) counts as a miss,
  is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from coavs import jsonio
from coavs.data.errors import DataError

CACHE_VERSION = 1
_STALE_TMP_SECONDS = 3600


def fingerprint(parts: dict) -> str:
    """Short stable hash of a JSON-able description."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_signature(paths: Iterable[os.PathLike]) -> str | None:
    """Hash of (path, size, mtime) of every file; None when one is missing (the caller then decodes the clip,
    which raises the clear missing-file error)."""
    digest = hashlib.sha1()
    try:
        for path in paths:
            st = os.stat(path)
            digest.update(f"{os.fspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except OSError:
        return None
    return digest.hexdigest()[:16]


def _safe_name(key: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:80]
    return clean if clean == key else f"{clean}-{fingerprint({'key': key})[:8]}"


class ClipCache:
    """A folder of cached arrays, keyed by (clip key, source signature, array name).

    ``ClipCache(directory, identity)`` uses ``directory/<hash of identity>/``; ``identity`` describes the dataset
    (layout, root, version) so that two datasets never share entries. Counters ``hits`` / ``misses`` are per
    process (each DataLoader worker has its own)."""

    def __init__(self, directory: str | os.PathLike, identity: dict):
        self.root = Path(directory) / fingerprint({"cache_version": CACHE_VERSION, **identity})
        self.root.mkdir(parents=True, exist_ok=True)
        info = self.root / "cache.json"
        if not info.exists():
            self._atomic_write_bytes(info, (jsonio.dumps({"cache_version": CACHE_VERSION, **identity}, indent=1,
                                                         default=str) + "\n").encode())
        self.hits = 0
        self.misses = 0
        self._remove_stale_tmp()

    def path(self, key: str, signature: str, name: str) -> Path:
        return self.root / f"{_safe_name(key)}.{signature}.{name}.npy"

    def get(self, key: str, signature: str, name: str) -> np.ndarray | None:
        """The cached array, memory-mapped read-only, or None."""
        path = self.path(key, signature, name)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # damaged entry: rebuild
            return None
        return array

    def put(self, key: str, signature: str, name: str, array: np.ndarray) -> None:
        path = self.path(key, signature, name)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:  # numpy says only "18432 requested and 8160 written" on a full disk
            tmp.unlink(missing_ok=True)
            raise self._write_error(path, exc) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get_or_build(self, key: str, signature: str | None, name: str,
                     build: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array, or ``build()`` stored then returned. ``signature`` None: build, store nothing."""
        if signature is not None:
            cached = self.get(key, signature, name)
            if cached is not None:
                self.hits += 1
                return cached
        self.misses += 1
        array = build()
        if signature is not None:
            self.put(key, signature, name, array)
        return array

    def clear(self) -> None:
        """Delete every entry of this cache."""
        for path in self.root.glob("*.npy*"):
            path.unlink(missing_ok=True)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.npy"))

    def _atomic_write_bytes(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._write_error(path, exc) from None

    def _write_error(self, path: Path, exc: OSError) -> DataError:
        """A failed cache write as a :class:`DataError` naming the cache entry, the reason and the space left."""
        try:
            free = f"{shutil.disk_usage(self.root).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        return DataError(path, f"cannot write to the decode cache ({exc.strerror or exc}; {free}): free some space, "
                               "or point data.cache_dir elsewhere (null: no cache)")

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP_SECONDS
        for path in self.root.glob("*.tmp-*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass
