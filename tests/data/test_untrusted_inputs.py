"""Data the user hands us (issue 24): an unknown split, a clip listed in two splits, VGGish features holding NaN,
a full decode-cache disk, ``coavs synth``'s folder permissions, and ``verify --limit`` that says what it checked."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from coavs.data import open_dataset
from coavs.data.avsbench import read_records
from coavs.data.cache import ClipCache
from coavs.data.dataset import read_vggish_features
from coavs.data.errors import DataError
from coavs.data.synth import SynthConfig, generate
from coavs.data.verify import verify_dataset
from tests.support.datasets import make_ms3, make_s4


@pytest.fixture
def layouts(tmp_path, synth_root):
    return {"avss": synth_root, "s4": make_s4(tmp_path / "s4"), "ms3": make_ms3(tmp_path / "ms3")}


@pytest.mark.parametrize("kind", ["avss", "s4", "ms3"])
@pytest.mark.parametrize("split", ["training", "Train", "", "all", "tests"])
def test_an_unknown_split_is_refused(layouts, kind, split):
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        open_dataset(layouts[kind], split)


def _list_first_clip_again(meta, split: str) -> str:
    """Appends the first row of ``meta`` again, in ``split``; returns the clip's uid."""
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0])
    duplicate = dict(rows[0], split=split)
    with open(meta, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows + [duplicate])
    return rows[0][fields[0]] if "uid" not in fields else rows[0]["uid"]


@pytest.mark.parametrize("kind, meta", [("avss", "metadata.csv"), ("s4", "s4_meta_data.csv"),
                                        ("ms3", "ms3_meta_data.csv")])
@pytest.mark.parametrize("other", ["test", "same"])
def test_a_clip_listed_twice_is_refused_by_every_split(layouts, kind, meta, other, tmp_path, synth_copy):
    root = synth_copy if kind == "avss" else layouts[kind]
    with open(root / meta, newline="") as f:
        first_split = next(csv.DictReader(f))["split"]
    uid = _list_first_clip_again(root / meta, first_split if other == "same" else other)
    for split in ("train", "val", "test"):  # whichever split is opened, not only the two concerned
        with pytest.raises(DataError, match=f"clip '{uid}' is listed"):
            open_dataset(root, split)
    problems: list = []
    read_records(root, problems=problems)  # verify's mode: collected, not raised
    assert any("is listed" in str(p) for p in problems)
    assert not verify_dataset(root, deep=False).ok


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_vggish_features_with_nan_or_inf_are_refused(bad, tmp_path):
    feats = np.zeros((5, 128), dtype=np.float32)
    feats[2, 7] = bad
    path = tmp_path / "clip.npy"
    np.save(path, feats)
    with pytest.raises(DataError, match="NaN or infinite") as info:
        read_vggish_features(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("array, match", [(np.zeros((0, 128)), r"\[T, 128\]"), (np.zeros((4, 64)), r"\[T, 128\]"),
                                          (np.array(["a", "b"]), "must be numbers")])
def test_vggish_features_of_another_shape_or_type(array, match, tmp_path):
    path = tmp_path / "clip.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=match):
        read_vggish_features(path)


def test_a_dataset_with_nan_vggish_features_names_the_file(synth_root, tmp_path):
    data = open_dataset(synth_root, "train", audio="vggish", vggish_dir=tmp_path)
    for uid in data.uids:
        np.save(tmp_path / f"{uid}.npy", np.full((3, 128), np.nan if uid == data.uids[1] else 0.5, np.float32))
    assert data[0]["audio"].shape == (3, 128)
    with pytest.raises(DataError, match=f"{data.uids[1]}.npy.*NaN"):
        data[1]


def test_a_full_cache_disk_names_the_cache_file(tmp_path, monkeypatch):
    cache = ClipCache(tmp_path / "cache", {"kind": "test"})

    def full(file, array, allow_pickle=False):
        file.write(b"\x93NUMPY partial")
        raise OSError("18432 requested and 8160 written")  # numpy's own message on a full disk

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(DataError) as info:
        cache.put("clip", "sig", "frames", np.zeros(10))
    message = str(info.value)
    assert str(cache.path("clip", "sig", "frames")) in message and "decode cache" in message
    assert "MiB free" in message and "data.cache_dir" in message
    assert not list(cache.root.glob("*.tmp-*"))  # the partial file is gone


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_synth_creates_its_folder_with_the_umask_permissions(umask, tmp_path):
    previous = os.umask(umask)
    try:
        root = generate(tmp_path / "set", SynthConfig(num_clips=3, frames_per_clip=1, image_size=16))["root"]
    finally:
        os.umask(previous)
    assert os.stat(root).st_mode & 0o777 == 0o777 & ~umask


def test_verify_limit_says_how_much_it_checked(synth_root):
    report = verify_dataset(synth_root, deep=False, limit=2)
    assert report.partial and report.clips_checked == 2 and report.clips_listed == 16
    assert report.format().splitlines()[-1] == "OK for the first 2 of 16 clips"
    full = verify_dataset(synth_root, deep=False)
    assert not full.partial and full.format().splitlines()[-1] == "OK"
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="limit must be"):
            verify_dataset(synth_root, deep=False, limit=bad)
