"""The synthetic Co-AVS generator: layout, determinism, knobs, and distinct looks and sounds per class."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import wavfile

from coavs.data import DataError, synth, synth_sounds
from coavs.data.avsbench import SYNTH_INFO_FILE
from coavs.data.audio import log_mel, resample, split_seconds
from coavs.data.synth import CLASS_NAMES, SYNTH_CLASSES, SynthConfig, generate, generate_clip

from tests.support.datasets import TINY


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_avss(synth_root):
    with open(synth_root / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["uid"] for r in rows] == [f"synth_{i:05d}" for i in range(TINY.num_clips)]
    assert {"vid", "uid", "a_obj", "split", "label"} <= set(rows[0])
    assert sorted(r["split"] for r in rows).count("train") == 8
    assert sum(r["split"] == "val" for r in rows) == 4 and sum(r["split"] == "test" for r in rows) == 4
    label2idx = json.loads((synth_root / "label2idx.json").read_text())
    assert label2idx == {"background": 1, **{name: i + 2 for i, name in enumerate(CLASS_NAMES)}}
    info = json.loads((synth_root / "coavs_synth.json").read_text())
    assert info["subsets"] == {"synth": {"num_frames": 3, "annotated": "all"}}
    for row in rows:
        clip = synth_root / row["label"] / row["uid"]
        assert sorted(p.name for p in (clip / "frames").iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]
        assert sorted(p.name for p in (clip / "labels_rgb").iterdir()) == ["0.png", "1.png", "2.png"]
        assert sorted(p.name for p in (clip / "labels_semantic").iterdir()) == ["0.png", "1.png", "2.png"]
        assert Image.open(clip / "frames" / "0.jpg").size == (48, 48)
        assert Image.open(clip / "labels_rgb" / "0.png").mode == "P"
        rate, samples = wavfile.read(clip / "audio.wav")
        assert rate == 16000 and samples.dtype == np.int16 and samples.shape == (3 * 16000,)
        assert row["a_obj"] == "_".join(info["clips"][row["uid"]]["sounding"])


def test_same_config_same_bytes_whatever_the_workers(tmp_path):
    config = SynthConfig(num_clips=6, frames_per_clip=2, image_size=32, seed=11, num_distractors=1)
    generate(tmp_path / "a", config, workers=1)
    generate(tmp_path / "b", config, workers=2)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 6 * 7 + 3  # 2 frames, 2+2 masks, 1 wav per clip + 3 index files
    assert [k for k in a if a[k] != b[k]] == []
    generate(tmp_path / "c", SynthConfig(num_clips=6, frames_per_clip=2, image_size=32, seed=12, num_distractors=1))
    c = _files(tmp_path / "c")
    assert sum(a[k] != c[k] for k in a if k.endswith(".jpg")) > 6


def test_existing_folder_refused_then_replaced(tmp_path):
    config = SynthConfig(num_clips=2, frames_per_clip=1, image_size=16)
    generate(tmp_path / "set", config)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(tmp_path / "set", config)
    (tmp_path / "set" / "stray.txt").write_text("old")
    generate(tmp_path / "set", config, overwrite=True)
    assert not (tmp_path / "set" / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no staging or old folders left


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path / "set", SynthConfig(num_clips=2, frames_per_clip=1, image_size=16))
    assert list(tmp_path.iterdir()) == []


def _clips(config: SynthConfig, split: str = "train", n: int = 40) -> list[dict]:
    return [generate_clip(config, i, split, None) for i in range(n)]


def test_semantics_instances_distractors():
    config = SynthConfig(frames_per_clip=1, image_size=64, num_semantics=3, instances_per_semantic=2,
                         num_distractors=1, silent_prob=0.0, object_area=0.3)
    for clip in _clips(config, n=10):
        assert len(clip["featured"]) == 3 and clip["sounding"] == clip["featured"] and clip["silent"] == []
        assert len(clip["distractors"]) == 1 and clip["distractors"][0] not in clip["featured"]
    ranged = SynthConfig(frames_per_clip=1, image_size=32, num_semantics=(1, 3), silent_prob=0.0)
    assert {len(c["featured"]) for c in _clips(ranged, n=40)} == {1, 2, 3}


def test_visual_prior_knob():
    never = _clips(SynthConfig(frames_per_clip=1, image_size=32, silent_prob=0.0))
    assert all(c["silent"] == [] for c in never)
    always = _clips(SynthConfig(frames_per_clip=1, image_size=32, silent_prob=1.0, min_sounding=1))
    assert all(len(c["sounding"]) == 1 and len(c["silent"]) == 1 for c in always)
    mute = _clips(SynthConfig(frames_per_clip=1, image_size=32, silent_prob=1.0, min_sounding=0))
    assert all(c["sounding"] == [] for c in mute)
    per_class = _clips(SynthConfig(frames_per_clip=1, image_size=32, silent_prob={"car": 1.0}), n=60)
    assert any("car" in c["featured"] for c in per_class)
    assert all("car" not in c["sounding"] for c in per_class)
    assert all(c["silent"] in ([], ["car"]) for c in per_class)
    split_prior = SynthConfig(frames_per_clip=1, image_size=32, silent_prob=0.0, eval_silent_prob=1.0)
    assert all(c["silent"] == [] for c in _clips(split_prior, "train"))
    assert all(len(c["silent"]) == 1 for c in _clips(split_prior, "test"))


def test_silent_objects_are_visible_but_unlabelled(synth_root):
    info = json.loads((synth_root / "coavs_synth.json").read_text())
    names = info["classes"]
    silent_seen = 0
    for uid, clip in info["clips"].items():
        for t in range(3):
            rgb = np.asarray(Image.open(synth_root / "synth" / uid / "labels_rgb" / f"{t}.png"))
            ids = {names[i] for i in np.unique(rgb) if i}
            assert ids <= set(clip["sounding"])
            assert ids >= set(clip["sounding"]) & set(clip["visible"][t])
            assert clip["target_area"][t] == pytest.approx((rgb > 0).mean(), abs=1e-4)
            silent_seen += len(set(clip["visible"][t]) - set(clip["sounding"]))
    assert silent_seen > 0  # the tiny set has silent objects and distractors in view


@pytest.mark.parametrize("area", [0.1, 0.3])
def test_object_area(area):
    config = SynthConfig(frames_per_clip=2, image_size=96, num_semantics=1, silent_prob=0.0, object_area=area)
    covered = [np.mean(c["target_area"]) for c in _clips(config, n=20)]
    assert np.mean(covered) == pytest.approx(area, rel=0.08)
    assert min(covered) > 0.8 * area and max(covered) < 1.2 * area


def test_shapes_and_textures_differ_between_classes():
    looks = [synth.shape_mask(c.shape, 40, 40) & ~synth.texture_mask(c.texture, 40, 40) for c in SYNTH_CLASSES]
    for i in range(len(looks)):
        for j in range(i + 1, len(looks)):
            assert (looks[i] != looks[j]).mean() > 0.1, (SYNTH_CLASSES[i].name, SYNTH_CLASSES[j].name)
    assert len({c.colour for c in SYNTH_CLASSES}) == len(SYNTH_CLASSES)


def _sound_profile(cls, seed: int, rate: int = 16000) -> torch.Tensor:
    wave = synth_sounds.class_sound(cls, 2.0, rate, np.random.default_rng(seed))
    patches = log_mel(split_seconds(resample(wave.astype(np.float32), rate), 2))
    profile = patches.mean(dim=(0, 1, 2))  # mean log-mel per band
    return profile - profile.mean()


def test_each_class_has_its_own_sound():
    """A clip's sound is nearest (per-band mean log-mel) to another rendering of the same class."""
    reference = torch.stack([_sound_profile(c, seed=1) for c in SYNTH_CLASSES])
    for k, cls in enumerate(SYNTH_CLASSES):
        distances = (reference - _sound_profile(cls, seed=2)).norm(dim=1)
        assert int(distances.argmin()) == k, (cls.name, distances)


def test_mixture_contains_each_sounding_class():
    rng = np.random.default_rng(0)
    violin, car = synth._CLASS_BY_NAME["violin"], synth._CLASS_BY_NAME["car"]
    mix = synth_sounds.mix_sounds([violin, car], 1.0, 16000, 0.0, rng).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(mix))
    freqs = np.fft.rfftfreq(mix.size, 1 / 16000)
    band = lambda lo, hi: spectrum[(freqs >= lo) & (freqs < hi)].mean()  # noqa: E731
    assert band(400, 480) > 5 * band(5000, 8000)  # violin fundamental
    assert band(60, 400) > 5 * band(5000, 8000)  # engine band
    assert np.abs(mix).max() <= 32767


@pytest.mark.parametrize("kwargs, match", [
    ({"num_clips": 0}, "num_clips"),
    ({"image_size": 8}, "image_size"),
    ({"classes": ("violin", "unicorn")}, "classes"),
    ({"num_semantics": (3, 1)}, "num_semantics"),
    ({"num_semantics": 6, "num_distractors": 5}, "exceeds"),
    ({"object_area": 0.95}, "object_area"),
    ({"silent_prob": 1.5}, "silent_prob"),
    ({"silent_prob": {"unicorn": 0.5}}, "unknown class"),
    ({"min_sounding": 3}, "min_sounding"),
    ({"train_annotation": "some"}, "train_annotation"),
    ({"frame_format": "gif"}, "frame_format"),
    ({"label": "../x"}, "label"),
])
def test_config_errors_name_the_knob(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kwargs)


def test_a_summary_without_its_clips_is_a_data_error_naming_the_file(tmp_path, monkeypatch):
    write_index = synth._write_index

    def without_clips(root, config, clips):
        write_index(root, config, clips)
        info = json.loads((root / SYNTH_INFO_FILE).read_text())
        del info["clips"]
        (root / SYNTH_INFO_FILE).write_text(json.dumps(info))

    monkeypatch.setattr(synth, "_write_index", without_clips)
    with pytest.raises(DataError) as info:
        generate(tmp_path / "set", SynthConfig(num_clips=4, frames_per_clip=1, image_size=32))
    path = tmp_path / "set" / SYNTH_INFO_FILE
    assert info.value.path == str(path) and str(info.value) == f'{path}: synthetic set info: "clips" is missing'
