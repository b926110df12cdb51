"""Datasets: item contents per audio mode, padding, Co-AVS annotations, misaligned audio, the disk cache."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from coavs.data import DataError
from coavs.data.cache import ClipCache
from coavs.data.dataset import AVSSDataset, CoAVSDataset, open_dataset
from coavs.data.loader import make_loader


def test_item_contents(synth_root):
    data = open_dataset(synth_root, "train")
    assert isinstance(data, CoAVSDataset) and len(data) == 8 and data.num_classes == 11
    item = data[3]
    assert item["frames"].shape == (3, 3, 48, 48) and item["frames"].dtype == torch.float32
    assert 0.0 <= item["frames"].min() and item["frames"].max() <= 1.0
    assert item["audio"].shape == (3, 1, 96, 64) and torch.isfinite(item["audio"]).all()
    assert item["labels"].shape == (3, 48, 48) and item["labels"].dtype == torch.int64
    assert item["annotated"].all() and item["valid"].all()
    assert item["uid"] == data.records[3].uid and item["index"] == 3
    for key in ("sounding", "visible", "silent"):
        assert item[key].shape == (3, 11) and item[key].dtype == torch.bool and not item[key][:, 0].any()
    assert torch.equal(item["silent"], item["visible"] & ~item["sounding"])
    for t in range(3):  # labelled classes sound and are visible
        present = set(item["labels"][t].unique().tolist()) - {0}
        assert present <= set(torch.nonzero(item["sounding"][t] & item["visible"][t]).flatten().tolist())
    raw = AVSSDataset(synth_root, "train", uint8_frames=True)[3]
    assert raw["frames"].dtype == torch.uint8 and torch.equal(raw["frames"].float() / 255, item["frames"])
    assert "sounding" not in raw


def test_waveform_and_vggish_modes(synth_root, tmp_path):
    data = open_dataset(synth_root, "val", audio="waveform")
    wave = data[0]["audio"]
    assert wave.shape == (3, 16000) and wave.abs().max() > 0.01
    for i, uid in enumerate(data.uids):
        np.save(tmp_path / f"{uid}.npy", np.full((2 if i == 0 else 4, 128), i, dtype=np.float32))
    vggish = open_dataset(synth_root, "val", audio="vggish", vggish_dir=tmp_path)
    short = vggish[0]["audio"]  # 2 rows for 3 frames: the last row repeats
    assert short.shape == (3, 128) and (short == 0).all()
    assert vggish[1]["audio"].shape == (3, 128) and (vggish[1]["audio"] == 1).all()
    np.save(tmp_path / f"{data.uids[2]}.npy", np.zeros((3, 64), dtype=np.float32))
    with pytest.raises(DataError, match=r"must be \[T, 128\], got \(3, 64\)"):
        vggish[2]
    (tmp_path / f"{data.uids[3]}.npy").unlink()
    with pytest.raises(DataError, match="missing VGGish feature file"):
        vggish[3]
    with pytest.raises(ValueError, match="vggish_dir"):
        open_dataset(synth_root, "val", audio="vggish")
    with pytest.raises(ValueError, match="audio must be one of"):
        open_dataset(synth_root, "val", audio="mfcc")


@pytest.mark.parametrize("audio", ["logmel", "waveform"])
def test_padding_and_cutting_frames(synth_root, audio):
    item = open_dataset(synth_root, "test", audio=audio, num_frames=5)[0]
    assert item["frames"].shape[0] == 5 and (item["frames"][3:] == 0).all()
    assert item["valid"].tolist() == [True] * 3 + [False] * 2
    assert item["annotated"].tolist() == [True] * 3 + [False] * 2
    assert (item["labels"][3:] == 255).all() and not item["sounding"][3:].any()
    silence = float(np.log(0.01)) if audio == "logmel" else 0.0
    assert item["audio"].shape[0] == 5 and (item["audio"][3:] == silence).all()
    cut = open_dataset(synth_root, "test", audio=audio, num_frames=2)[0]
    assert cut["frames"].shape[0] == 2 and cut["audio"].shape[0] == 2 and cut["sounding"].shape[0] == 2


def test_resize(synth_root):
    item = open_dataset(synth_root, "test", image_size=(32, 40))[1]
    assert item["frames"].shape == (3, 3, 32, 40) and item["labels"].shape == (3, 32, 40)
    assert set(item["labels"].unique().tolist()) <= set(range(11))


def test_first_frame_annotation_like_v1s(tmp_path):
    from coavs.data.synth import SynthConfig, generate

    generate(tmp_path / "s", SynthConfig(num_clips=4, frames_per_clip=3, image_size=24, train_annotation="first",
                                         split_fractions=(1, 0, 0)))
    item = open_dataset(tmp_path / "s", "train")[0]
    assert item["annotated"].tolist() == [True, False, False]
    assert (item["labels"][1:] == 255).all() and (item["labels"][0] != 255).all()


def test_misaligned_audio_names_no_visible_class(synth_root):
    data = open_dataset(synth_root, "train")
    picks = data.misaligned_indices(seed=5)
    assert picks == data.misaligned_indices(seed=5)
    for i, j in enumerate(picks):
        assert j != i and data.sounding_classes(j)
        assert not data.sounding_classes(j) & (data.visible_classes(i) | data.sounding_classes(i))
    assert len({tuple(data.misaligned_indices(seed=s)) for s in range(4)}) > 1


def test_cache_round_trip_and_hits(synth_root, tmp_path):
    plain = open_dataset(synth_root, "train")
    cached = open_dataset(synth_root, "train", cache_dir=tmp_path / "cache")
    first = cached[2]
    assert cached.cache.misses == 2 and cached.cache.hits == 0  # visual + audio
    second = cached[2]
    assert cached.cache.hits == 2
    reference = plain[2]
    for key in ("frames", "audio", "labels", "annotated", "sounding"):
        assert torch.equal(first[key], reference[key]) and torch.equal(second[key], reference[key])
    names = sorted(p.name.split(".")[-2] for p in cached.cache.root.glob("*.npy"))
    assert names == ["audio-logmel", "visual-native"]
    assert isinstance(cached.cache.get(cached.records[2].split + "-synth-" + cached.records[2].uid,
                                       cached._visual_signature(cached.records[2]), "visual-native"), np.memmap)


def test_cache_rebuilds_damaged_and_ignores_leftovers(synth_root, tmp_path):
    data = open_dataset(synth_root, "train", cache_dir=tmp_path / "cache")
    reference = data[0]
    for path in data.cache.root.glob("*.npy"):
        path.write_bytes(path.read_bytes()[:60])  # cut short
    (data.cache.root / "x.npy.tmp-123-abc").write_bytes(b"half")  # a writer killed mid-write
    again = open_dataset(synth_root, "train", cache_dir=tmp_path / "cache")
    item = again[0]
    assert again.cache.misses == 2 and torch.equal(item["frames"], reference["frames"])
    assert torch.equal(item["audio"], reference["audio"])


def test_cache_notices_changed_sources(synth_copy, tmp_path):
    data = open_dataset(synth_copy, "train", cache_dir=tmp_path / "cache")
    data[0]
    path = data.records[0].frame_paths[0]
    from PIL import Image

    Image.new("RGB", (48, 48), (255, 0, 0)).save(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    fresh = open_dataset(synth_copy, "train", cache_dir=tmp_path / "cache")
    item = fresh[0]
    assert fresh.cache.misses == 1 and fresh.cache.hits == 1  # frames decoded again, audio features reused
    assert item["frames"][0, 0].mean() > 0.95


def test_cache_put_is_atomic(tmp_path, monkeypatch):
    cache = ClipCache(tmp_path, {"kind": "test"})

    def exploding_save(f, array, allow_pickle):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", exploding_save)
    with pytest.raises(DataError, match="disk full"):  # a DataError naming the file (one line on the CLI)
        cache.put("clip", "sig", "visual", np.zeros(3))
    assert list(cache.root.glob("*.npy*")) == [] and cache.get("clip", "sig", "visual") is None


def test_loader_with_workers_and_cache(synth_root, tmp_path):
    data = open_dataset(synth_root, "train", cache_dir=tmp_path / "cache", num_frames=4)
    loader = make_loader(data, batch_size=3, shuffle=True, num_workers=2, seed=1, persistent_workers=False)
    assert loader.pin_memory == torch.cuda.is_available()
    seen = []
    for epoch in range(2):
        for batch in loader:
            assert batch["frames"].shape[1:] == (4, 3, 48, 48) and batch["audio"].shape[1:] == (4, 1, 96, 64)
            assert batch["sounding"].shape[1:] == (4, 11) and len(batch["uid"]) == batch["frames"].shape[0]
            seen.extend(batch["index"].tolist())
    assert sorted(seen) == sorted(list(range(8)) * 2)
    assert len(list(data.cache.root.glob("*.npy"))) == 16  # each clip's entries written once (by some worker)
    order = [b["index"].tolist() for b in make_loader(data, 3, shuffle=True, num_workers=0, seed=1)]
    assert order == [b["index"].tolist() for b in make_loader(data, 3, shuffle=True, num_workers=0, seed=1)]
