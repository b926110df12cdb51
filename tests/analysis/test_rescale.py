"""The A.1 intervention: frames rescaled so that the sounding objects cover 30-40 % of them."""

import pytest
import torch

from coavs.analysis.rescale import RescaledDataset, check_target, rescale_frame, zoom_factor


def frame_with(boxes, size=96, classes=None):
    labels = torch.zeros(size, size, dtype=torch.long)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        labels[y0:y1, x0:x1] = (classes or list(range(1, len(boxes) + 1)))[k]
    frame = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    return frame, labels


def area(labels):
    return float((labels > 0).double().mean())


@pytest.mark.parametrize("box", [(10, 20, 60, 75), (40, 43, 40, 44), (0, 3, 0, 4), (30, 60, 30, 62), (5, 90, 5, 90)])
def test_single_objects_land_in_the_target_range(box):
    frame, labels = frame_with([box])
    new_frame, new_labels, zoom = rescale_frame(frame, labels)
    assert new_frame.shape == frame.shape and new_labels.shape == labels.shape
    assert 0.29 <= area(new_labels) <= 0.41  # pixel rounding: within a percent of the range
    assert (zoom > 1) == (area(labels) < 0.3)
    assert set(new_labels.unique().tolist()) == {0, 1}
    assert new_frame.min() >= 0 and new_frame.max() <= 1


def test_frames_in_range_and_without_objects_are_unchanged():
    for boxes in ([(0, 56, 0, 56)], []):  # 34 % of the frame, and nothing
        frame, labels = frame_with(boxes)
        new_frame, new_labels, zoom = rescale_frame(frame, labels)
        assert zoom == 1.0 and new_frame is frame and new_labels is labels


def test_zoom_never_cuts_a_sounding_object():
    frame, labels = frame_with([(0, 10, 0, 10), (85, 96, 85, 96)])  # opposite corners: the box spans the frame
    _, new_labels, zoom = rescale_frame(frame, labels)
    assert zoom == 1.0 and torch.equal(new_labels, labels)
    frame, labels = frame_with([(20, 30, 20, 30), (50, 60, 60, 70)])  # box of 40x50: zoom at most 96/50
    _, new_labels, zoom = rescale_frame(frame, labels)
    assert zoom == pytest.approx(96 / 50)
    assert set(new_labels.unique().tolist()) == {0, 1, 2}
    assert area(new_labels) < 0.3  # the target is out of reach without cutting an object


def test_zoom_out_pads_with_the_mean_colour_and_background():
    frame, labels = frame_with([(2, 94, 2, 94)])
    new_frame, new_labels, zoom = rescale_frame(frame, labels)
    assert zoom < 1
    assert new_labels[0, 0] == 0 and new_labels[48, 48] == 1
    torch.testing.assert_close(new_frame[:, 0, 0], frame.mean(dim=(1, 2)), atol=1e-5, rtol=0)


def test_targets():
    assert check_target((0.3, 0.4)) == (0.3, 0.4)
    assert check_target(0.35) == (0.35, 0.35)
    for bad in ((0.4, 0.3), (0.0, 0.4), (0.5, 0.95), "x"):
        with pytest.raises(ValueError, match="target area"):
            check_target(bad)
    assert zoom_factor(0.1) == pytest.approx(3 ** 0.5)
    assert zoom_factor(0.8) == pytest.approx(0.5 ** 0.5)
    assert zoom_factor(0.0) == 1.0 and zoom_factor(0.35) == 1.0


def test_rescale_frame_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same size"):
        rescale_frame(torch.rand(3, 8, 8), torch.zeros(8, 9, dtype=torch.long))


def test_rescaled_dataset(tiny_set):
    from coavs.data import open_dataset

    base = open_dataset(tiny_set, "test")
    rescaled = RescaledDataset(base, (0.3, 0.4))
    assert len(rescaled) == len(base) and rescaled.num_classes == base.num_classes
    item, original = rescaled[0], base[0]
    assert item["frames"].shape == original["frames"].shape and item["labels"].shape == original["labels"].shape
    assert item["zoom"].shape == (original["frames"].shape[0],)
    for t in range(item["zoom"].numel()):
        before, after = area(original["labels"][t]), area(item["labels"][t])
        if item["zoom"][t] == 1.0:
            assert torch.equal(item["labels"][t], original["labels"][t])
        elif before < 0.3:
            assert after > before
        else:
            assert after < before


def test_each_object_not_the_whole_sounding_area_is_rescaled():
    """Supplementary A.1: "each target object" to 30-40 %: two equal objects side by side (12 % together) are
    zoomed until each covers 30-40 %, where the earlier whole-area reading stops at 30-40 % for both together."""
    frame, labels = frame_with([(40, 56, 36, 48), (40, 56, 48, 60)], classes=[1, 2])  # two objects, 2 % each
    _, per_object, zoom_object = rescale_frame(frame, labels)
    _, per_frame, zoom_frame = rescale_frame(frame, labels, per="frame")
    for cls in (1, 2):
        assert 0.29 <= float((per_object == cls).double().mean()) <= 0.41
    assert 0.29 <= area(per_frame) <= 0.41
    assert zoom_object > zoom_frame > 1
    with pytest.raises(ValueError, match="per must be"):
        rescale_frame(frame, labels, per="pixel")
