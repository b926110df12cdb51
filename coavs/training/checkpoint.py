"""Atomic checkpoints that resume exactly.

A checkpoint holds model, optimizer, scheduler and grad-scaler state, every RNG state (Python, NumPy, torch CPU
and CUDA) and the loop position. It is written to a temporary file in the same folder and renamed, so a crash
mid-write never leaves a truncated checkpoint, and it loads with ``torch.load(weights_only=True)``.
:func:`load_model` reads a run's last checkpoint back into a model and its :class:`TrainConfig`.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from coavs import jsonio
from coavs.errors import UserError, one_line
from coavs.models import AVSModel, build_model
from coavs.training.config import ConfigError, TrainConfig, config_differences, stored_config
from coavs.training.runtime import RunFolder

CHECKPOINT_FORMAT = "coavs-train-checkpoint"


def rng_state() -> dict:
    """Every RNG state, as tensors and plain Python values (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` through a temporary file + rename (readers never see a partial file).

    The checkpoint is serialised in memory first and written with checked writes: torch's own file writer turns
    a full disk into ``RuntimeError: ... unexpected pos`` and does not check short writes. A write that fails
    (disk full, quota, I/O error) leaves the previous checkpoint as it was and raises :class:`UserError` naming
    the file, the reason and the space left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    try:
        with open(tmp, "wb") as f:
            written = f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if written != len(data) or tmp.stat().st_size != len(data):
            raise OSError(errno.EIO, f"short write ({tmp.stat().st_size} of {len(data)} bytes)")
        os.replace(tmp, path)
    except OSError as exc:
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there"
        except OSError:
            free = "free space unknown"
        kept = "the previous checkpoint is unchanged" if path.exists() else "no checkpoint was written"
        raise UserError(f"cannot write the checkpoint {path}: {exc.strerror or exc} ({len(data) / 2**20:.1f} MiB "
                        f"needed, {free}); {kept}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def check_same_run(state: dict, run_id: str | None, config: TrainConfig, path) -> None:
    """Refuses (:class:`ConfigError`) to resume from a checkpoint of another run: its run id differs from the run
    folder's (``config.json``'s ``resolved.run_id``), or — for runs from before run ids — its config does."""
    theirs = state.get("run_id")
    if theirs != run_id:
        raise ConfigError(f"{path} belongs to another run (run id {theirs or 'none'}; this run folder's config.json "
                          f"says {run_id or 'none'}): a checkpoint copied from another run folder would mix the two "
                          "runs; resume that run in its own folder, or start a new run in an empty one")
    changed = config_differences(recorded_config(state, path), config)
    if changed:
        raise ConfigError(f"{path} was written by a run with another config ({', '.join(changed[:4])} differ from "
                          "this run folder's config.json): a checkpoint copied from another run folder would mix "
                          "the two runs")


def recorded_config(state: dict, path) -> TrainConfig:
    """The run config that the checkpoint ``path`` (loaded as ``state``) records as a JSON string; a missing or
    corrupt one is a one-line ConfigError naming the checkpoint."""
    what = "the config recorded in the checkpoint"
    if "config" not in state:
        jsonio.fail(ConfigError, path, what, "missing (not written by coavs train)")
    return stored_config(jsonio.parse_json(state["config"], what, path, ConfigError), what, path)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Deletes the ``.<name>.tmp-<pid>`` files that :func:`save_atomic` leaves when its process is killed
    mid-write; call it only while holding the run folder's lock (then no live writer owns one). Returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(".*.tmp-*"):
        if path.is_file() and path.name.rsplit(".tmp-", 1)[-1].isdigit():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Loads a checkpoint written by :func:`save_atomic` with ``weights_only=True``.

    Raises :class:`coavs.errors.UserError` (one line) when the file is absent, a folder, empty, truncated, not a
    checkpoint, or holds Python objects that ``weights_only`` refuses to unpickle (a crafted pickle)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise UserError(f"{path} is not a checkpoint file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UserError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if size == 0:
        raise UserError(f"{path} is an empty file, not a checkpoint")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"unsupported GLOBAL (\S+)", str(exc))
        if blocked:
            raise UserError(f"{path} was refused: it asks to call the Python object {blocked.group(1)} (loaded with "
                            "weights_only=True; a coavs checkpoint holds only tensors and plain values)") from None
        reason = "not a torch.save file"
    except Exception as exc:  # torch raises RuntimeError, EOFError, IndexError, ... for a damaged file
        reason = one_line(exc).split(". ")[0] or type(exc).__name__
    raise UserError(f"{path} is not a readable checkpoint (truncated, or not written by torch.save): "
                    f"{reason[:160]}")


def all_ranks_rng(info) -> list:
    """Every process's RNG states (gathered on all of them; one entry without torch.distributed)."""
    state = rng_state()
    if not info.enabled:
        return [state]
    gathered = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def checkpoint_path(run_dir_or_checkpoint) -> Path:
    """The checkpoint file of a run folder (its ``checkpoints/last.pt``) or the file itself."""
    path = Path(run_dir_or_checkpoint)
    if path.is_dir():
        path = RunFolder(path).last_checkpoint
    if not path.is_file():
        raise FileNotFoundError(2, "no checkpoint (give a run folder or a .pt file)", str(path))
    return path


def load_model(run_dir_or_checkpoint, device="cpu"):
    """The trained model (eval mode, on ``device``) and the run's resolved :class:`TrainConfig`, from a run folder
    (its ``checkpoints/last.pt``) or a checkpoint file. Loads with ``weights_only=True``."""
    path = checkpoint_path(run_dir_or_checkpoint)
    state = load(path, map_location="cpu")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a coavs training checkpoint")
    config = recorded_config(state, path)
    model = build_model(config.model_config(), pretrained=False)  # the checkpoint holds every weight
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


# ModelConfig keys that change no weight: a run may start from another run's weights with other values of these
_FREE_MODEL_KEYS = ("biased_queries", "marker_threshold", "dormant_gate", "soft_gate", "diffusion_steps", "dropout")


def _difference(key: str, theirs, mine) -> str:
    """``key``'s two values for a message; of two dicts (a transformers config) only the keys that differ."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        keys = sorted(k for k in {*theirs, *mine} if theirs.get(k) != mine.get(k))
        return f"{key} differs in {', '.join(keys[:6])}"
    return f"{key} {theirs!r} there, {mine!r} here"


def initialise_from(model: AVSModel, config: TrainConfig, source) -> Path:
    """Loads the model weights (markers included) of the run folder or checkpoint ``source`` into ``model``, the
    model of the resolved ``config`` (``run.init_from``). The two models must agree on every weight-bearing
    setting and on the dataset's classes; a ConfigError names what differs. Returns the checkpoint path."""
    try:
        path = checkpoint_path(source)
    except FileNotFoundError:
        raise ConfigError(f"run.init_from: {source} holds no checkpoint (give a run folder of coavs train or its "
                          "checkpoints/last.pt)") from None
    state = load(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"run.init_from: {path} is not a coavs training checkpoint")
    stored = recorded_config(state, path)
    # compared as stored (JSON): a transformers config's integer id2label keys come back from JSON as strings
    mine, theirs = (json.loads(jsonio.dumps(c.model_config().to_dict())) for c in (config, stored))
    differ = [k for k in mine if k not in _FREE_MODEL_KEYS and mine[k] != theirs.get(k)]
    if differ:
        shown = ", ".join(_difference(f"model.{k}", theirs.get(k), mine[k]) for k in differ[:4])
        raise ConfigError(f"run.init_from: {source} was trained with another model ({shown})")
    names, their_names = config.resolved.get("class_names"), stored.resolved.get("class_names")
    if names is not None and their_names is not None and list(names) != list(their_names):
        raise ConfigError(f"run.init_from: {source} was trained on other classes ({', '.join(their_names[:6])}) "
                          f"than this dataset's ({', '.join(names[:6])})")
    model.load_state_dict(state["model"])
    return path
