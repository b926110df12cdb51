"""The one exception type of ``coavs.data``: a dataset on disk is missing a file or holds a malformed one."""

from __future__ import annotations

import os

from coavs.errors import UserError


class DataError(UserError):
    """A dataset file is missing, unreadable or malformed. The message names the file (and row or pixel)."""

    takes_path = True  # coavs.jsonio.read_json passes the path apart, so it stays in ``.path``

    def __init__(self, path: str | os.PathLike | None, message: str | None = None):
        if message is None:  # rebuilt from its text alone, as torch's DataLoader re-raises a worker's error
            super().__init__(str(path))
            self.path, self.reason = None, str(self)
            return
        self.path = None if path is None else os.fspath(path)
        self.reason = message
        super().__init__(message if path is None else f"{self.path}: {message}")
