"""Config, audio encoders, perception (k-means, classifier), backbone and pixel decoder."""

import importlib.util

import pytest
import torch

from coavs.models import (AudioEncoder, ModelConfig, Perception, PixelDecoder, SmallCNN, build_backbone, fit_kmeans,
                          load_kmeans, save_kmeans)
from coavs.models.audio import LogMel, logmel_stats
from coavs.models.biased import DiffusionSchedule, other_clip_rows
from coavs.models.layers import sine_positions


# ------------------------------------------------------------------------------------------------- config
def test_small_config_derives_queries_from_markers_and_dilation():
    c = ModelConfig.small()
    assert c.num_markers == 5 + 3 and c.queries == 8 * 2
    assert c.class_to_marker() == [-1, 0, 1, 2, 3, 4]
    assert ModelConfig.from_dict(c.to_dict()) == c
    # supplementary B.1: the paper preset runs the simple dilation at d = 2 (one marker, two queries)
    paper = ModelConfig.paper()
    assert paper.dilation == 2 and paper.num_markers == 100 and paper.queries == 200
    assert paper.biased_queries == "all"  # D.2: every marker-owned query active, whatever the audio


@pytest.mark.parametrize("changes, message", [
    (dict(num_queries=15), "exceeds num_queries"),
    (dict(hidden_dim=66), "divisible by num_heads"),
    (dict(num_audio_classes=6), "at most"),
    (dict(num_audio_classes=0, num_clusters=0), "at least one marker"),
    (dict(audio_input="mp3"), "audio_input"),
    (dict(marker_threshold=1.5), "marker_threshold"),
    (dict(dilation=0), "dilation"),
    (dict(backbone_widths=(8, 8, 8)), "backbone_widths"),
])
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.small(**changes)
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({"hidden": 3})


# -------------------------------------------------------------------------------------------------- audio
@pytest.mark.parametrize("kind, shape", [("vggish", (3, 128)), ("logmel", (3, 1, 96, 64)), ("waveform", (3, 16000))])
def test_audio_encoders_shapes_descriptors_and_noise(kind, shape):
    enc = AudioEncoder(kind, 32, (4, 8))
    audio = torch.randn(shape)
    emb = enc(audio)
    assert emb.shape == (3, 32)
    emb.sum().backward()
    assert enc.descriptor(audio).shape == (3, enc.descriptor_dim)
    noise = enc.noise_like(audio)
    assert noise.shape == audio.shape and not torch.equal(noise, audio)
    assert enc(noise).shape == (3, 32)


def test_vggish_mlp_is_the_reference_projection():
    enc = AudioEncoder("vggish", 256)
    layers = [m for m in enc.net.net]
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear"]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (128, 512, 256)


def test_logmel_frontend_matches_the_data_pipeline():
    from coavs.data.audio import log_mel

    wave = torch.randn(2, 16000) * 0.1
    torch.testing.assert_close(LogMel()(wave), log_mel(wave))
    assert logmel_stats(log_mel(wave)).shape == (2, 128)


def test_noise_keeps_the_level_of_the_input():
    enc = AudioEncoder("waveform", 16, (4,))
    loud = torch.randn(2, 16000) * torch.tensor([[0.01], [1.0]])
    rms = enc.noise_like(loud).pow(2).mean(1).sqrt()
    assert rms[1] / rms[0] > 30


@pytest.mark.parametrize("kind, shape", [("vggish", (2, 128)), ("logmel", (2, 1, 96, 64)), ("waveform", (2, 16000))])
def test_fixed_level_noise_does_not_depend_on_the_input(kind, shape):
    """The biased branch's noise: the same draw whatever the clip sounds like (no level, no statistics)."""
    enc = AudioEncoder(kind, 16, (4,))
    quiet, loud = torch.randn(shape) * 0.01, torch.randn(shape) * 3 + 1
    a = enc.noise_like(quiet, torch.Generator().manual_seed(5), fixed_level=True)
    b = enc.noise_like(loud, torch.Generator().manual_seed(5), fixed_level=True)
    assert torch.equal(a, b) and a.shape == quiet.shape
    if kind == "waveform":
        assert a.pow(2).mean().sqrt().item() == pytest.approx(0.05, rel=0.05)


def test_audio_encoder_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[N,128\]"):
        AudioEncoder("vggish", 16).check_input(torch.randn(2, 64))
    with pytest.raises(ValueError, match="input_kind"):
        AudioEncoder("mfcc", 16)


# --------------------------------------------------------------------------------------------- perception
def _blobs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = centres.repeat_interleave(30, 0) + 0.3 * torch.randn(90, 2, generator=gen)
    return points, torch.arange(3).repeat_interleave(30)


def test_kmeans_recovers_separated_clusters_and_round_trips(tmp_path):
    points, truth = _blobs()
    fit = fit_kmeans(points, 3, seed=1)
    perception = Perception(8, 0, 3, 2)
    perception.set_clusters(fit)
    ids = perception.cluster_ids(points)
    # Same partition as the truth, up to renaming.
    assert all(len(set(ids[truth == k].tolist())) == 1 for k in range(3))
    assert len(set(ids.tolist())) == 3
    path = save_kmeans(tmp_path / "m.pt", fit, "vggish")
    loaded, kind = load_kmeans(path)
    assert kind == "vggish"
    torch.testing.assert_close(loaded.centroids, fit.centroids)
    with pytest.raises(ValueError, match="at least num_clusters"):
        fit_kmeans(points[:2], 3)
    torch.save({"x": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a coavs k-means marker file"):
        load_kmeans(tmp_path / "bad.pt")


def test_perception_scores_are_class_probs_then_one_hot_cluster():
    perception = Perception(8, 4, 3, 2)
    perception.set_clusters(fit_kmeans(_blobs()[0], 3))
    emb, desc = torch.randn(5, 8), _blobs()[0][::18]
    out = perception(emb, desc)
    assert out.scores.shape == (5, 7) and out.class_logits.shape == (5, 4)
    torch.testing.assert_close(out.scores[:, :4], torch.sigmoid(out.class_logits))
    assert torch.equal(out.scores[:, 4:].sum(1), torch.ones(5))
    presence = torch.zeros(5, 4)
    presence[:, 2] = 1
    forced = perception(emb, desc, class_presence=presence)
    assert torch.all(forced.scores[:, 2] == 1)
    assert torch.equal(forced.scores[:, :2], out.scores[:, :2])


def test_unfitted_clusters_warn_and_fitted_state_survives_state_dict():
    perception = Perception(8, 0, 3, 2)
    with pytest.warns(UserWarning, match="not fitted"):
        perception(torch.randn(2, 8), torch.randn(2, 2))
    perception.set_clusters(fit_kmeans(_blobs()[0], 3))
    other = Perception(8, 0, 3, 2)
    other.load_state_dict(perception.state_dict())
    assert other.fitted


# ------------------------------------------------------------------------------------ backbone and decoder
def test_small_cnn_and_pixel_decoder_strides():
    backbone = SmallCNN((8, 16, 16, 32))
    feats = backbone(torch.randn(2, 3, 64, 96))
    assert [f.shape[-2:] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [f.shape[1] for f in feats] == [8, 16, 16, 32]
    decoder = PixelDecoder(backbone.out_channels, 32, heads=4, ffn_dim=64, encoder_layers=1)
    mask_features, levels = decoder(feats)
    assert mask_features.shape == (2, 32, 16, 24)
    assert [lv.shape for lv in levels] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]


def test_build_backbone_errors():
    with pytest.raises(ValueError, match="small_cnn"):
        build_backbone("resnet50")
    with pytest.raises(ValueError, match="trains from scratch"):
        build_backbone("small_cnn", weights="w.pt")
    if importlib.util.find_spec("timm") is None:
        with pytest.raises(ImportError, match="timm, which is not installed"):
            build_backbone("timm:resnet18")
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(ImportError, match="torchvision, which is not installed"):
            build_backbone("torchvision:resnet18")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
def test_torchvision_backbone_loads_local_weights(tmp_path):
    import torchvision

    reference = torchvision.models.get_model("resnet18", weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pt")
    backbone = build_backbone("torchvision:resnet18", weights=str(tmp_path / "r18.pt"))
    assert backbone.out_channels == [64, 128, 256, 512]
    torch.testing.assert_close(backbone.stem[0].weight, reference.conv1.weight)


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_timm_backbone_four_levels():
    backbone = build_backbone("timm:resnet18")
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == backbone.out_channels and len(feats) == 4


def test_sine_positions_are_distinct_per_position():
    pos = sine_positions(3, 4, 16)
    assert pos.shape == (12, 16)
    assert torch.cdist(pos, pos).add(torch.eye(12)).min() > 1e-3


# ------------------------------------------------------------------------------------------- biased audio
def test_diffusion_schedule_is_the_reference_schedule_rescaled_to_zero_terminal_snr():
    schedule = DiffusionSchedule(100)
    betas = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)
    root = torch.cumprod(1 - betas, 0).sqrt()
    expected = ((root - root[-1]) * root[0] / (root[0] - root[-1])).square()  # Lin et al.: first kept, last 0
    torch.testing.assert_close(schedule.alpha_bars, expected.float())
    assert schedule.alpha_bars[-1].item() == 0.0 and schedule.alpha_bars[0].item() == pytest.approx(1 - 1e-4)
    x, eps = torch.randn(2, 4), torch.randn(2, 4)
    t = torch.tensor([0, 50])
    ab = expected[t].float()[:, None]
    torch.testing.assert_close(schedule(x, t, eps), ab.sqrt() * x + (1 - ab).sqrt() * eps)
    torch.manual_seed(3)
    end = schedule.last_step(x)
    torch.manual_seed(3)
    assert torch.equal(end, torch.randn_like(x))  # the last step is pure noise: nothing of x is left


def test_other_clip_rows_never_pick_the_same_clip():
    clips = torch.tensor([5, 5, 7, 7, 7, 9])
    rows, has_other = other_clip_rows(clips, 6, "cpu", training=False)
    assert rows.tolist() == [2, 2, 5, 5, 5, 0]  # the next row of another clip, cyclically
    assert has_other.all()
    for _ in range(20):
        rows, _ = other_clip_rows(clips, 6, "cpu", training=True)
        assert (clips[rows] != clips).all()
    rows, has_other = other_clip_rows(torch.tensor([3, 3]), 2, "cpu", training=True)
    assert not has_other.any() and rows.tolist() == [0, 1]  # one clip: no other clip to take audio from
    rows, has_other = other_clip_rows(None, 3, "cpu", training=False)  # None: every row its own clip
    assert rows.tolist() == [1, 2, 0] and has_other.all()
