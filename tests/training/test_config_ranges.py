"""Config values (issue 24): YAML 1.1's exponent floats are numbers, a key given twice is an error, every number
has a range that is checked, and ``run.compile`` names a real backend."""

from __future__ import annotations

import json

import pytest

from coavs.training.config import NUMBER_RANGES, ConfigError, TrainConfig, _numbers, read_file


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("5E-3", 5e-3), ("+2e-2", 2e-2), ("1.5e-3", 1.5e-3),
                                         ("0.001", 0.001), ("1_0e-4", 1e-3)])
def test_exponent_floats_are_numbers_in_files_and_overrides(text, value, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"optim:\n  lr: {text}\n")
    assert TrainConfig.from_file(path).optim.lr == pytest.approx(value)
    assert TrainConfig.from_dict({}, [f"optim.lr={text}"]).optim.lr == pytest.approx(value)


def test_quoted_exponents_stay_strings(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr must be a number"):
        TrainConfig.from_dict({}, ["optim.lr='1e-4'"])


@pytest.mark.parametrize("text", [
    "optim:\n  lr: 0.1\n  lr: 0.2\n",
    "optim: {lr: 0.1, lr: 0.2}\n",
    "optim:\n  lr: 0.1\noptim:\n  lr: 0.2\n",
    "stages:\n  - epochs: 1\n    epochs: 2\n",
])
def test_a_key_given_twice_in_a_yaml_file_is_an_error(text, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="given twice") as info:
        read_file(path)
    assert str(path) in str(info.value)


def test_a_key_given_twice_in_a_json_file_is_an_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"optim": {"lr": 0.1, "lr": 0.2}}')
    with pytest.raises(ConfigError, match="'lr' are given twice"):
        read_file(path)


def test_yaml_merge_keys_may_still_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  - &base {name: a, epochs: 2}\n  - <<: *base\n    name: b\n")
    assert read_file(path)["stages"] == [{"name": "a", "epochs": 2}, {"name": "b", "epochs": 2}]


def test_every_number_of_the_schema_has_a_range():
    defaults = TrainConfig().to_dict()
    defaults["stages"] = [{"name": "x", "epochs": 1, "lr_scale": 1.0}]
    # Fields whose default is None are numbers too: give each a value to find it.
    defaults["data"].update(image_size=64, num_frames=4, num_workers=0)
    defaults["eval"]["max_clips"] = 1
    defaults["run"].update(max_steps=1, threads=1)
    defaults["gate"]["threshold"] = 0.5
    keys = {pattern for pattern, _, _ in _numbers({k: v for k, v in defaults.items()
                                                   if k not in ("model", "debias", "resolved")})}
    missing = sorted(keys - set(NUMBER_RANGES))
    assert not missing, f"numbers without a range in NUMBER_RANGES: {missing}"


# (override, the key named in the error) for a value outside each range
OUT_OF_RANGE = [
    ("loss.class_weight=-1", "loss.class_weight"), ("loss.mask_weight=-0.5", "loss.mask_weight"),
    ("loss.dice_weight=-1", "loss.dice_weight"), ("loss.no_object_weight=-1", "loss.no_object_weight"),
    ("loss.audio_class_weight=-1", "loss.audio_class_weight"), ("loss.num_points=0", "loss.num_points"),
    ("eval.max_clips=0", "eval.max_clips"), ("eval.max_clips=-1", "eval.max_clips"),
    ("eval.batch_size=0", "eval.batch_size"), ("eval.every=-1", "eval.every"),
    ("gate.max_clips=-1", "gate.max_clips"), ("gate.keep=0", "gate.keep"), ("gate.threshold=1.5", "gate.threshold"),
    ("run.seed=-1", "run.seed"), ("run.max_steps=0", "run.max_steps"), ("run.log_every=0", "run.log_every"),
    ("run.checkpoint_every=-1", "run.checkpoint_every"), ("run.threads=0", "run.threads"),
    ("optim.lr=0", "optim.lr"), ("optim.lr=-1e-4", "optim.lr"), ("optim.debias_lr_scale=0", "optim.debias_lr_scale"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"), ("optim.betas=[0.9, 1.0]", "optim.betas"),
    ("optim.warmup_steps=-1", "optim.warmup_steps"), ("optim.grad_clip=-1", "optim.grad_clip"),
    ("optim.backbone_lr_scale=-1", "optim.backbone_lr_scale"),
    ("stages=[{epochs: 0}]", "stages[0].epochs"), ("stages=[{epochs: 1}, {lr_scale: -1}]", "stages[1].lr_scale"),
    ("data.batch_size=0", "data.batch_size"), ("data.frames_per_clip=-1", "data.frames_per_clip"),
    ("data.num_workers=-1", "data.num_workers"), ("data.image_size=0", "data.image_size"),
    ("data.num_frames=0", "data.num_frames"), ("negatives.ratio=-1", "negatives.ratio"),
]


@pytest.mark.parametrize("override, key", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_numbers_outside_their_range_are_refused(override, key):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({}, [override])
    assert key in str(info.value)


def test_every_range_has_an_out_of_range_case():
    tested = {key.split("[")[0] + ("[]" if "[" in key else "") + (key.split("]", 1)[1] if "]" in key else "")
              for _, key in OUT_OF_RANGE} | {"optim.betas[]"}  # betas: its own check names "optim.betas"
    assert set(NUMBER_RANGES) <= tested, sorted(set(NUMBER_RANGES) - tested)


@pytest.mark.parametrize("value, ok", [("maybe", False), ("aot_eager", True), ("true", True), ("false", True),
                                       ("1", False)])
def test_run_compile_names_a_backend(value, ok):
    if ok:
        TrainConfig.from_dict({}, [f"run.compile={value}"])
    else:
        with pytest.raises(ConfigError, match="run.compile"):
            TrainConfig.from_dict({}, [f"run.compile={value}"])


def test_the_written_config_round_trips_as_strict_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(TrainConfig().to_dict()))
    assert TrainConfig.from_file(path).to_dict() == TrainConfig().to_dict()
