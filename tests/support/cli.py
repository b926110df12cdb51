"""Pieces of the CLI tests: run ``coavs`` in this process, the one-line user-mistake contract, folder snapshots,
wav files, and damaged checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coavs.cli import main
from coavs.errors import EXIT_USER_ERROR

REPO = Path(__file__).resolve().parents[2]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``coavs ARGV`` in this process → (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """The user-mistake contract: exit 1, one ``coavs <cmd>: error: ...`` line holding ``fragments``."""
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and ": error: " in lines[0], err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict:
    """{relative path: (size, mtime_ns)} of every file under ``folder`` ({} when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """A mono wav: float32 samples as IEEE float (format 3, via scipy), int16 as PCM."""
    from scipy.io import wavfile

    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, rate, samples)
    return path


def bad_checkpoint(kind: str, path: Path, good: Path | None = None) -> Path:
    """Writes a checkpoint the loader must refuse: ``truncated`` (half of a good one), ``empty``, ``random``
    bytes, or ``malicious`` (a pickle whose loading would call ``os.system``)."""
    import os

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "malicious":
        class Payload:
            def __reduce__(self):
                return os.system, ("touch " + str(path.parent / "PWNED"),)

        torch.save({"format": "coavs-train-checkpoint", "model": Payload()}, path)
    else:
        raise ValueError(kind)
    return path


CHECKPOINT_DAMAGE = ("truncated", "empty", "random", "malicious")
