import pytest
import torch
import torch.nn.functional as F

from coavs.training.point_sampling import point_sample, random_points, sample_mask_list, uncertain_points


def test_pixel_centres_read_pixels_exactly():
    x = torch.randn(2, 3, 5, 7)
    ys, xs = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    coords = torch.stack([(xs.flatten() + 0.5) / 7, (ys.flatten() + 0.5) / 5], -1)  # (x, y)
    got = point_sample(x, coords[None].expand(2, -1, -1))
    torch.testing.assert_close(got, x.flatten(2))


def test_bilinear_between_pixels_and_align_corners_false():
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    centre = torch.tensor([[[0.5, 0.5]]])  # between the four pixel centres
    assert point_sample(x, centre).item() == pytest.approx(15.0)
    # A point matches F.grid_sample with align_corners=False (Mask2Former's convention).
    coords = torch.rand(1, 9, 2)
    expected = F.grid_sample(x, 2 * coords[:, :, None] - 1, align_corners=False)[..., 0]
    torch.testing.assert_close(point_sample(x, coords), expected)


def test_bool_masks_read_as_float_and_gradient_flows():
    masks = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    masks[..., :2, :] = True
    got = point_sample(masks, torch.tensor([[[0.5, 0.25], [0.5, 0.8]]]))
    assert got.dtype == torch.float32 and got.flatten().tolist() == [1.0, 0.0]
    logits = torch.randn(1, 1, 4, 4, requires_grad=True)
    point_sample(logits, torch.rand(1, 5, 2)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_point_sample_checks_shapes():
    with pytest.raises(ValueError, match=r"coords must be \[B,P,2\]"):
        point_sample(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="batch size"):
        point_sample(torch.zeros(2, 1, 2, 2), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match=r"x must be \[B,C,H,W\]"):
        point_sample(torch.zeros(2, 2, 2), torch.zeros(2, 3, 2))


def test_random_points_range_shape_and_generator():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = random_points(4, 50, "cpu", g1), random_points(4, 50, "cpu", g2)
    assert a.shape == (4, 50, 2) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() < 1
    assert random_points(0, 5).shape == (0, 5, 2)


def test_uncertain_points_prefer_uncertain_regions():
    # Left half: logits near 0 (uncertain); right half: |logit| = 20 (certain).
    logits = torch.full((3, 1, 16, 16), 20.0)
    logits[..., :8] = 0.01
    generator = torch.Generator().manual_seed(0)
    points = uncertain_points(logits, 100, oversample_ratio=3.0, importance_ratio=0.75, generator=generator)
    assert points.shape == (3, 100, 2)
    important, uniform = points[:, :75], points[:, 75:]
    assert (important[..., 0] < 0.5).all(), "the most uncertain points come from the left half"
    assert (uniform[..., 0] >= 0.5).any(), "the random quarter is uniform"
    assert uncertain_points(logits, 10, importance_ratio=0.0).shape == (3, 10, 2)


def test_uncertain_points_checks_arguments():
    with pytest.raises(ValueError, match=r"\[N,1,h,w\]"):
        uncertain_points(torch.zeros(2, 3, 4, 4), 5)
    with pytest.raises(ValueError, match="oversample_ratio"):
        uncertain_points(torch.zeros(2, 1, 4, 4), 5, oversample_ratio=0.5)
    with pytest.raises(ValueError, match="importance_ratio"):
        uncertain_points(torch.zeros(2, 1, 4, 4), 5, importance_ratio=1.5)


def _mask_list_expected(masks, coords):
    out = torch.zeros(len(masks), max(m.shape[0] for m in masks), coords.shape[1])
    for b, m in enumerate(masks):
        if m.shape[0]:
            out[b, :m.shape[0]] = point_sample(m[None].float(), coords[b:b + 1])[0]
    return out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_sample_mask_list_equals_point_sample(device):
    masks = [torch.rand(3, 9, 13) > 0.5, torch.zeros(0, 9, 13, dtype=torch.bool), torch.rand(1, 9, 13),
             (torch.rand(2, 9, 13) > 0.3).to(torch.uint8)]
    coords = torch.rand(4, 50, 2) * 1.2 - 0.1  # some points outside the image: zero padding
    coords[:, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.5 / 13, 0.5 / 9]])
    got = sample_mask_list([m.to(device) for m in masks], coords.to(device))
    assert got.shape == (4, 3, 50) and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), _mask_list_expected(masks, coords), atol=1e-6, rtol=1e-5)
    ragged = [torch.rand(2, 5, 7) > 0.5, torch.rand(1, 8, 4) > 0.5]  # different sizes per sample
    torch.testing.assert_close(sample_mask_list([m.to(device) for m in ragged], coords[:2].to(device)).cpu(),
                               _mask_list_expected(ragged, coords[:2]), atol=1e-6, rtol=1e-5)
    assert sample_mask_list([torch.zeros(0, 4, 4)] * 2, coords[:2].to(device)).shape == (2, 0, 50)
