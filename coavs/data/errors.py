"""The one exception type of ``coavs.data``: a dataset on disk is missing a file or holds a malformed one."""

from __future__ import annotations

import os


class DataError(ValueError):
    """A dataset file is missing, unreadable or malformed. The message names the file (and row or pixel)."""

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = message
        super().__init__(message if path is None else f"{self.path}: {message}")
