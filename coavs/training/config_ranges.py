"""The ranges of a training config's numbers: :data:`NUMBER_RANGES` (the allowed range of every number of
:class:`coavs.training.config.TrainConfig`), and the checks that a config's numbers are finite and in range.

    check_finite(config.to_dict())         # ConfigError naming the NaN or infinite numbers
    check_number_ranges(config.to_dict())  # ConfigError naming the first number outside its range

:mod:`coavs.training.config` re-exports these names; ``TrainConfig.validate`` calls both.
"""

from __future__ import annotations

import math

from coavs.errors import ConfigError

# The allowed range of every number of TrainConfig's sections, ``gate`` and ``negatives`` included (dotted key, list
# items as ``[]``): (lowest, highest), None = unbounded, both ends included; lowest given as ("above", x) excludes x.
# ``model`` and ``debias`` numbers are checked by ModelConfig and DebiasConfig. tests/training/test_config_ranges.py
# fails on a number without a range, so a new field gets one.
NUMBER_RANGES: dict[str, tuple] = {
    "data.image_size": (1, None), "data.num_frames": (1, None), "data.batch_size": (1, None),
    "data.frames_per_clip": (0, None), "data.num_workers": (0, None),
    "loss.class_weight": (0, None), "loss.mask_weight": (0, None), "loss.dice_weight": (0, None),
    "loss.no_object_weight": (0, None), "loss.num_points": (1, None), "loss.audio_class_weight": (0, None),
    "optim.lr": (("above", 0), None), "optim.debias_lr_scale": (("above", 0), None), "optim.weight_decay": (0, None),
    "optim.betas[]": (0, ("below", 1)), "optim.backbone_lr_scale": (0, None), "optim.warmup_steps": (0, None),
    "optim.grad_clip": (0, None),
    "stages[].epochs": (1, None), "stages[].lr_scale": (0, None),
    "eval.every": (0, None), "eval.batch_size": (1, None), "eval.max_clips": (1, None),
    "run.seed": (0, None), "run.max_steps": (1, None), "run.log_every": (1, None), "run.checkpoint_every": (0, None),
    "run.threads": (1, None),
    "gate.threshold": (0, 1), "gate.keep": (("above", 0), 1), "gate.max_clips": (1, None),
    "negatives.ratio": (0, 8),
}


def _numbers(data, where: str = ""):
    """(dotted key with list items as ``[]``, the item's own key, value) of every int or float in ``data``."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _numbers(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            for pattern, key, number in _numbers(value, f"{where}[{i}]"):
                yield pattern.replace(f"{where}[{i}]", f"{where}[]", 1), key, number
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        yield where, where, data


def _out_of_range(value, low, high) -> str | None:
    """What is wrong with ``value`` for the range (low, high) of :data:`NUMBER_RANGES`, or None."""
    if low is not None:
        above = isinstance(low, tuple)
        bound = low[1] if above else low
        if value < bound or (above and value == bound):
            return f"must be {'>' if above else '>='} {bound}"
    if high is not None:
        below = isinstance(high, tuple)
        bound = high[1] if below else high
        if value > bound or (below and value == bound):
            return f"must be {'<' if below else '<='} {bound}"
    return None


def check_number_ranges(data: dict) -> None:
    """Raises :class:`ConfigError` naming the first number outside its :data:`NUMBER_RANGES` range."""
    for pattern, key, value in _numbers({k: v for k, v in data.items() if k not in ("model", "debias", "resolved")}):
        bounds = NUMBER_RANGES.get(pattern)
        problem = _out_of_range(value, *bounds) if bounds is not None else None
        if problem:
            raise ConfigError(f"{key} {problem}, got {value}")


def _non_finite(data, where: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every NaN or infinite float in nested dicts and lists."""
    if isinstance(data, dict):
        return [bad for key, value in data.items() for bad in _non_finite(value, f"{where}.{key}" if where else key)]
    if isinstance(data, (list, tuple)):
        return [bad for i, value in enumerate(data) for bad in _non_finite(value, f"{where}[{i}]")]
    return [(where, data)] if isinstance(data, float) and not math.isfinite(data) else []


def check_finite(data: dict) -> None:
    """Raises :class:`ConfigError` naming (up to four of) the NaN or infinite numbers in ``data``."""
    bad = _non_finite(data)
    if bad:
        raise ConfigError("config values must be finite numbers: "
                          + ", ".join(f"{key}={value}" for key, value in bad[:4]))


__all__ = ["NUMBER_RANGES", "check_finite", "check_number_ranges"]
