"""Per-clip marker files (coavs.data.markers): every accepted form, the folder reader, and the dataset item."""

import json

import pytest
import torch

from coavs.data.dataset import open_dataset
from coavs.data.errors import DataError
from coavs.data.markers import ReferenceMarkers, load_reference_markers, markers_from_reference


def test_reference_marker_files_in_every_form(tmp_path):
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.5]])
    torch.testing.assert_close(markers_from_reference(scores, 4), torch.tensor([[0.9, 0.1, 0, 0], [0.2, 0.5, 0, 0]]))
    assert markers_from_reference(torch.tensor([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    assert markers_from_reference(torch.tensor([[1, 3], [2, -1]]), 4).tolist() == [[0, 1, 0, 1], [0, 0, 1, 0]]
    torch.save([[0, 2], torch.tensor([1])], tmp_path / "vid.pth")  # the reference code's per-frame id lists
    assert load_reference_markers(tmp_path / "vid.pth", 3).tolist() == [[1, 0, 1], [0, 1, 0]]
    with pytest.raises(ValueError, match="out of range"):
        markers_from_reference(torch.tensor([5]), 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        markers_from_reference(torch.tensor([[2.0]]), 3)


def test_marker_folder_reads_its_layout_and_names_bad_files(tmp_path):
    with pytest.raises(DataError, match="marker folder does not exist"):
        ReferenceMarkers(tmp_path / "absent")
    with pytest.raises(DataError, match="no markers.json"):
        ReferenceMarkers(tmp_path)
    (tmp_path / "markers.json").write_text(json.dumps({"format": "coavs-markers", "num_classes": 2,
                                                       "num_clusters": 3}))
    torch.save([torch.tensor([0, 4]), torch.tensor([3])], tmp_path / "a.pth")
    torch.save([torch.tensor([2])], tmp_path / "silence.pth")
    folder = ReferenceMarkers(tmp_path)
    assert folder.num_markers == 5 and folder("a").tolist() == [[1, 0, 0, 0, 1], [0, 0, 0, 1, 0]]
    assert folder.condition("silence").tolist() == [[0, 0, 1, 0, 0]]
    with pytest.raises(DataError, match=r"b\.pth: missing marker file"):
        folder("b")
    with pytest.raises(DataError, match=r"noise\.pth: missing marker file"):
        folder.condition("noise")
    (tmp_path / "c.pth").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"c\.pth: unreadable marker file"):
        folder("c")
    torch.save([torch.tensor([7])], tmp_path / "d.pth")
    with pytest.raises(DataError, match=r"d\.pth: bad marker file \(marker id 7 is out of range"):
        folder("d")
    (tmp_path / "markers.json").write_text("{}")
    with pytest.raises(DataError, match="not a coavs marker description"):
        ReferenceMarkers(tmp_path)


def test_a_corrupt_marker_description_is_a_data_error_naming_the_file(tmp_path):
    (tmp_path / "markers.json").write_text('{"format": "coavs-markers",')
    with pytest.raises(DataError, match=r"markers\.json: marker info: not valid JSON \(line 1, column 28") as info:
        ReferenceMarkers(tmp_path, num_markers=3)
    assert str(tmp_path / "markers.json") in str(info.value)


def test_dataset_items_carry_markers_padded_like_the_audio(synth_root, tmp_path):
    dataset = open_dataset(synth_root, "val")
    (tmp_path / "markers.json").write_text(json.dumps({"format": "coavs-markers", "num_classes": 10,
                                                       "num_clusters": 2}))
    for uid in dataset.uids:
        torch.save([torch.tensor([1, 10])], tmp_path / f"{uid}.pth")  # one row: repeated over the frames
    with_markers = open_dataset(synth_root, "val", marker_dir=tmp_path, num_frames=5)
    assert with_markers.marker_layout == (10, 2)
    item = with_markers[0]
    frames = dataset.records[0].num_frames
    assert item["markers"].shape == (5, 12)
    assert item["markers"][:frames].tolist() == [[0, 1] + [0] * 8 + [1, 0]] * frames
    assert not item["markers"][frames:].any()  # padding frames carry no marker (and are dropped)
