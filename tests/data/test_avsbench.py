"""AVSBench readers: palette, label map, S4/MS3/AVSS records, and clear errors for bad data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from coavs.data import DataError
from coavs.data.avsbench import (BINARY_LABELS, LabelMap, colour_to_index, detect_layout, palette, read_avss_records,
                                 read_mask, read_records, read_s4_records, read_synth_info)
from coavs.data.dataset import AVSSDataset, CoAVSDataset, MS3Dataset, S4Dataset, open_dataset

from tests.support.datasets import make_ms3, make_s4


def test_palette_is_voc_and_invertible():
    colours = palette(256)
    assert colours[:8].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128],
                                    [0, 128, 128], [128, 128, 128]]
    assert colours[8].tolist() == [64, 0, 0] and colours[70].tolist() == [32, 128, 128]  # bits from the high bit down
    assert len({tuple(c) for c in colours.tolist()}) == 256
    assert (colour_to_index(colours[None])[0] == np.arange(256)).all()
    assert colour_to_index(np.array([[[1, 0, 0], [128, 0, 1]]], dtype=np.uint8)).tolist() == [[-1, -1]]


def test_label_map_json_round_trip(tmp_path):
    labels = LabelMap(("background", "violin", "dog"))
    labels.to_json(tmp_path / "label2idx.json")
    assert json.loads((tmp_path / "label2idx.json").read_text()) == {"background": 1, "violin": 2, "dog": 3}
    assert LabelMap.from_json(tmp_path / "label2idx.json") == labels
    assert labels.index("dog") == 2 and labels.num_classes == 3


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"background": 1, "dog": 3}', "1..2"),
    ('{"dog": 1, "background": 2}', "index 1 must be 'background'"),
    ('{"background": 1, "dog": "2"}', "1..2"),
])
def test_bad_label_map(tmp_path, content, match):
    (tmp_path / "label2idx.json").write_text(content)
    with pytest.raises(DataError, match=match) as info:
        LabelMap.from_json(tmp_path / "label2idx.json")
    assert "label2idx.json" in str(info.value)


def test_detect_layout(tmp_path, synth_root):
    assert detect_layout(synth_root) == "avss"
    assert detect_layout(make_s4(tmp_path / "s4")) == "s4"
    assert detect_layout(make_ms3(tmp_path / "ms3")) == "ms3"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="s4_meta_data.csv, ms3_meta_data.csv, metadata.csv"):
        detect_layout(tmp_path / "empty")


def test_s4_reader(tmp_path):
    root = make_s4(tmp_path)
    train = S4Dataset(root, "train", audio="waveform")
    assert len(train) == 1 and train.num_classes == 2 and train.label_map == BINARY_LABELS
    item = train[0]
    assert item["uid"] == "clip0"
    assert item["frames"].shape == (5, 3, 32, 32)
    assert item["annotated"].tolist() == [True, False, False, False, False]
    assert set(item["labels"][0].unique().tolist()) == {0, 1} and (item["labels"][1:] == 255).all()
    assert item["labels"][0].sum() == 16 * 16
    assert item["audio"].shape == (5, 16000)
    assert item["frames"][2].mean() == pytest.approx(120 / 255, abs=1e-6)
    test = S4Dataset(root, "test")
    assert test[0]["annotated"].all() and test[0]["audio"].shape == (5, 1, 96, 64)


def test_ms3_reader_resamples(tmp_path):
    root = make_ms3(tmp_path)
    data = MS3Dataset(root, "train", audio="waveform")
    assert len(data) == 2 and len(MS3Dataset(root, "val")) == 0
    item = data[1]
    assert item["uid"] == "multi1" and item["annotated"].all()
    assert item["labels"].unique().tolist() == [0, 1]
    assert item["audio"].shape == (5, 16000)  # 22.05 kHz wav resampled to 16 kHz
    assert item["audio"].abs().max() > 0.01
    assert isinstance(open_dataset(root), MS3Dataset)


def test_avss_reader_round_trip(synth_root):
    """Colour masks, index masks and the generator's record agree."""
    data = AVSSDataset(synth_root, "val", audio="waveform")
    assert len(data) == 4 and data.class_names[1] == "violin"
    info = json.loads((synth_root / "coavs_synth.json").read_text())
    for i in range(len(data)):
        record = data.records[i]
        assert record.mask_format == "palette" and record.subset == "synth"
        labels = data[i]["labels"].numpy()
        for t in range(record.num_frames):
            semantic = read_mask(record.mask_paths[t].parent.parent / "labels_semantic" / f"{t}.png", "index", 11)
            assert (labels[t] == semantic).all()
            assert (labels[t] > 0).mean() == pytest.approx(info["clips"][record.uid]["target_area"][t], abs=1e-4)


@pytest.mark.parametrize("change, reason", [
    (lambda info: [info], "not a JSON object (got a list)"),
    (lambda info: {**info, "clips": list(info["clips"])}, '"clips" must be an object, got a list'),
    (lambda info: {k: v for k, v in info.items() if k != "subsets"}, '"subsets" is missing'),
])
def test_a_synthetic_set_info_of_the_wrong_shape_names_the_file(synth_copy, change, reason):
    path = synth_copy / "coavs_synth.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    for read in (read_synth_info, lambda root: CoAVSDataset(root, "train")):
        with pytest.raises(DataError) as info:
            read(synth_copy)
        assert str(info.value) == f"{path}: synthetic set info: {reason}"


def test_avss_reads_labels_semantic_without_labels_rgb(synth_copy):
    import shutil

    uid = read_avss_records(synth_copy, "train")[0].uid
    before = AVSSDataset(synth_copy, "train")[0]["labels"]
    shutil.rmtree(synth_copy / "synth" / uid / "labels_rgb")
    records = read_avss_records(synth_copy, "train")
    assert records[0].mask_format == "index"
    assert (AVSSDataset(synth_copy, "train")[0]["labels"] == before).all()


def test_avss_real_subset_rules(tmp_path):
    """v1s train clips: 5 frames, frame 0 annotated; v2: 10 frames, all annotated; metadata columns by name."""
    (tmp_path / "metadata.csv").write_text("vid,uid,s_min,s_sec,a_obj,split,label\n"
                                           "a,a_1,0,0,dog,train,v1s\nb,b_1,0,0,dog,test,v1s\nc,c_1,0,0,man,train,v2\n")
    records = read_avss_records(tmp_path)
    assert [r.annotated for r in records[:2]] == [[True] + [False] * 4, [True] * 5]
    assert records[2].num_frames == 10 and all(records[2].annotated)
    assert str(records[2].frame_paths[9]).endswith("v2/c_1/frames/9.jpg")
    assert str(records[0].mask_paths[0]).endswith("v1s/a_1/labels_rgb/0.png")
    assert [r.uid for r in read_avss_records(tmp_path, subsets=("v2",))] == ["c_1"]


# ------------------------------------------------------------------ bad data: clear errors naming the file
def _first_train(root):
    return read_avss_records(root, "train")[0]


def test_missing_frame(synth_copy):
    record = _first_train(synth_copy)
    record.frame_paths[1].unlink()
    with pytest.raises(DataError, match=r"frames/1\.jpg: missing frame"):
        AVSSDataset(synth_copy, "train")[0]


def test_truncated_wav(synth_copy):
    path = _first_train(synth_copy).audio_path
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"audio\.wav: truncated wav"):
        AVSSDataset(synth_copy, "train")[0]
    path.write_bytes(b"RIFF\x00")
    with pytest.raises(DataError, match=r"audio\.wav: unreadable wav"):
        AVSSDataset(synth_copy, "train")[0]


def test_corrupt_png_mask(synth_copy):
    path = _first_train(synth_copy).mask_paths[0]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=r"labels_rgb/0\.png: unreadable mask"):
        AVSSDataset(synth_copy, "train")[0]


def test_wrong_label_id(synth_copy):
    path = _first_train(synth_copy).mask_paths[2]
    mask = np.zeros((48, 48), dtype=np.uint8)
    mask[5, 7] = 50  # a palette colour, but the synthetic map has 11 classes
    Image.fromarray(palette(256)[mask]).save(path)
    with pytest.raises(DataError, match=r"labels_rgb/2\.png: label id 50 at pixel \(y=5, x=7\)"):
        AVSSDataset(synth_copy, "train")[0]


def test_colour_outside_palette(synth_copy):
    path = _first_train(synth_copy).mask_paths[0]
    rgb = np.zeros((48, 48, 3), dtype=np.uint8)
    rgb[3, 4] = (120, 10, 10)
    Image.fromarray(rgb).save(path)
    with pytest.raises(DataError, match=r"colour \(120, 10, 10\) at pixel \(y=3, x=4\) is not a colour"):
        AVSSDataset(synth_copy, "train")[0]


def test_mask_size_mismatch(synth_copy):
    path = _first_train(synth_copy).mask_paths[0]
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match="mask is 40x40 but the frames are 48x48"):
        AVSSDataset(synth_copy, "train")[0]
    assert AVSSDataset(synth_copy, "train", image_size=32)[0]["labels"].shape == (3, 32, 32)


@pytest.mark.parametrize("csv_text, match", [
    ("uid,split\nx,train\n", "lacks column"),
    ("vid,uid,a_obj,split,label\nx,x_1,dog,train,synth\ny,y_1,dog,training,synth\n", "line 3: split 'training'"),
    ("vid,uid,a_obj,split,label\nx,,dog,train,synth\n", "line 2: empty 'uid'"),
    ("vid,uid,a_obj,split,label\nx,x_1,dog,train,v3\n", "line 2: label 'v3'"),
    ("vid,uid,a_obj,split,label\nx,../../etc,dog,train,synth\n", "not a plain name"),
])
def test_malformed_metadata_rows(synth_copy, csv_text, match):
    (synth_copy / "metadata.csv").write_text(csv_text)
    with pytest.raises(DataError, match=match) as info:
        read_records(synth_copy)
    assert "metadata.csv" in str(info.value)


def test_malformed_rows_can_be_collected(tmp_path):
    root = make_s4(tmp_path)
    with open(root / "s4_meta_data.csv", "a") as f:
        f.write("bad,0,dog_barking,holdout\n")
    problems = []
    records = read_s4_records(root, problems=problems)
    assert len(records) == 3 and len(problems) == 1 and "line 5" in str(problems[0])
