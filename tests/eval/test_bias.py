import math

import pytest
import torch

from coavs.eval.bias import (BiasEvaluator, CounterfactualScore, FalsePositiveRate, audio_of_other_class, item_rms,
                             negative_audio, other_class_donors, silence_like, sounding_pixels, white_noise_like)

AUDIO_SHAPES = [(4, 16000), (4, 128), (4, 5, 128)]  # waveforms, embeddings, per-second embeddings


@pytest.mark.parametrize("shape", AUDIO_SHAPES)
def test_silence_and_noise_keep_the_shape(shape):
    audio = torch.randn(shape) * torch.tensor([0.1, 0.5, 1.0, 2.0]).view(-1, *([1] * (len(shape) - 1)))
    assert torch.equal(silence_like(audio), torch.zeros(shape))
    noise = white_noise_like(audio, rms=0.05, generator=torch.Generator().manual_seed(123))
    assert noise.shape == audio.shape and noise.dtype == audio.dtype
    torch.testing.assert_close(item_rms(noise), torch.full((4,), 0.05))
    matched = white_noise_like(audio, generator=torch.Generator().manual_seed(123))
    torch.testing.assert_close(item_rms(matched), item_rms(audio))
    assert torch.equal(matched, white_noise_like(audio, generator=torch.Generator().manual_seed(123)))
    assert not torch.allclose(matched / item_rms(matched).view(-1, *([1] * (len(shape) - 1))),
                              audio / item_rms(audio).view(-1, *([1] * (len(shape) - 1))))


def test_noise_is_white():
    noise = white_noise_like(torch.ones(1, 1 << 16), rms=1.0, generator=torch.Generator().manual_seed(1))[0]
    spectrum = torch.fft.rfft(noise).abs().pow(2)
    bands = spectrum[1:].reshape(8, -1).mean(1)
    assert (bands / bands.mean() - 1).abs().max() < 0.1  # flat power across the band


def test_other_class_donors_never_share_a_class():
    labels = torch.tensor([0, 0, 1, 2, 2, 1, 3])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        donors = other_class_donors(labels, generator=g)
        assert (labels[donors] != labels).all()
    multi_hot = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]])
    donors = other_class_donors(multi_hot, generator=g)
    assert not (multi_hot.bool() & multi_hot[donors].bool()).any(1).any()


def test_other_class_audio_from_batch_and_pool():
    audio = torch.arange(4.0)[:, None].expand(4, 3).clone()
    labels = torch.tensor([0, 1, 1, 2])
    swapped = audio_of_other_class(audio, labels, generator=torch.Generator().manual_seed(0))
    assert (labels[swapped[:, 0].long()] != labels).all()
    pool_audio, pool_labels = torch.full((2, 3), 9.0), torch.tensor([5, 6])
    from_pool = negative_audio("other", audio, labels, pool_audio=pool_audio, pool_labels=pool_labels)
    assert torch.equal(from_pool, torch.full((4, 3), 9.0))


def test_other_class_without_a_donor_is_an_error():
    with pytest.raises(ValueError, match="no audio of a different class in the batch"):
        other_class_donors(torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match="needs the class labels"):
        negative_audio("other", torch.randn(2, 5))
    with pytest.raises(ValueError, match="kind must be one of"):
        negative_audio("music", torch.randn(2, 5))
    with pytest.raises(ValueError, match="same format"):
        other_class_donors(torch.tensor([0, 1]), pool_labels=torch.tensor([[1, 0]]))


def test_sounding_pixels():
    logits = torch.tensor([[[-1.0, 0.0], [1e-9, 3.0]]])
    assert sounding_pixels(logits).tolist() == [[[False, False], [False, True]]]  # σ(1e-9) == 0.5 in float32
    assert sounding_pixels(torch.sigmoid(logits), "probabilities").tolist() == [[[False, False], [False, True]]]
    labels = torch.tensor([[[0, 3], [0, 1]]])
    assert sounding_pixels(labels, "labels").tolist() == [[[False, True], [False, True]]]
    assert sounding_pixels(labels, "labels", background=3).tolist() == [[[True, False], [True, True]]]
    assert sounding_pixels(logits[:, None]).shape == (1, 2, 2)
    with pytest.raises(TypeError, match="integer"):
        sounding_pixels(logits, "labels")


def test_false_positive_rate_is_a_mean_over_frames():
    sounding = torch.zeros(3, 4, 4, dtype=torch.bool)
    sounding[0, :2, :2] = True  # 4/16
    sounding[2] = True  # 16/16
    fpr = FalsePositiveRate()
    fpr.update(sounding[:1])
    fpr.update(sounding[1:])
    assert fpr.compute() == pytest.approx((0.25 + 0 + 1) / 3)
    assert fpr.frames == 3
    assert math.isnan(FalsePositiveRate().compute())


def test_counterfactual_score_hand_case():
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    a[0, :, :2] = True
    b = ~a
    score = CounterfactualScore()
    score.update(a.clone(), a, b)  # follows the playing source exactly
    score.update(a | b, b, a)  # segments both: IoU 8/16 with the playing one, 8/16 leak
    r = score.compute()
    assert r["follow_iou"] == pytest.approx((1 + 0.5) / 2, abs=1e-7)
    assert r["leak_iou"] == pytest.approx((0 + 0.5) / 2, abs=1e-7)
    assert r["silent_fp"] == pytest.approx((0 + 1) / 2, abs=1e-7)  # the silent source: none, then all of it
    assert r["frames"] == 2
    half = a.clone()
    half[0, :2] = False  # 4 of the silent source's 8 pixels called sounding
    score.reset()
    score.update(b | half, b, a)
    assert score.compute()["silent_fp"] == pytest.approx(0.5)


# A toy world: each frame shows objects (masks) of known classes; audio is a class-indicator embedding.
CLASSES = 4


def toy_batch(batch=6, size=8, generator=None):
    classes = torch.arange(batch) % CLASSES
    objects = torch.zeros(batch, 2, size, size, dtype=torch.bool)
    objects[:, 0, :4, :4] = True  # the object of the clip's class
    objects[:, 1, 4:, 4:] = True  # a second object, class + 1
    audio = torch.nn.functional.one_hot(classes, CLASSES).float()
    frames = {"objects": objects, "classes": torch.stack([classes, (classes + 1) % CLASSES], 1)}
    return frames, audio, classes


def listening_model(frames, audio):
    """Segments the objects whose class is heard (indicator > 0.5): no visual prior."""
    heard = audio.gather(1, frames["classes"]) > 0.5  # [B, 2]
    sounding = (frames["objects"] & heard[:, :, None, None]).any(1)
    return torch.where(sounding, 10.0, -10.0)


def prior_model(frames, audio):
    """Segments the first object whatever it hears: a pure visual prior."""
    return torch.where(frames["objects"][:, 0], 10.0, -10.0)


def test_bias_evaluator_separates_listening_from_prior():
    frames, audio, classes = toy_batch()
    results = {}
    for name, model in (("listening", listening_model), ("prior", prior_model)):
        evaluator = BiasEvaluator(model, noise_rms=0.01, generator=torch.Generator().manual_seed(0))
        evaluator.update_negative(frames, audio, classes)
        # Counterfactual: play object 0's sound alone, then object 1's.
        sources = (torch.nn.functional.one_hot(frames["classes"][:, 0], CLASSES).float(),
                   torch.nn.functional.one_hot(frames["classes"][:, 1], CLASSES).float())
        evaluator.update_counterfactual(frames, sources, (frames["objects"][:, 0], frames["objects"][:, 1]))
        results[name] = evaluator.compute()
    listening, prior = results["listening"], results["prior"]
    for kind in ("silence", "noise"):
        assert listening[f"fpr_{kind}"] == 0.0
        assert prior[f"fpr_{kind}"] == pytest.approx(16 / 64)
        assert listening[f"fpr_{kind}_frames"] == 6
    # Another clip's audio may be the class of this frame's second object: FP only where that object is.
    assert 0.0 <= listening["fpr_misaligned"] <= 16 / 64
    assert prior["fpr_misaligned"] == pytest.approx(16 / 64)
    assert listening["counterfactual_iou"] == pytest.approx(1.0, abs=1e-6)
    assert listening["counterfactual_leak_iou"] == 0.0
    assert listening["fp_swapped"] == 0.0  # the silent object is never segmented
    assert prior["counterfactual_iou"] == pytest.approx(0.5, abs=1e-6)  # right for one source of two
    assert prior["fp_swapped"] == pytest.approx(0.5)  # object 0 is segmented also while only object 1 plays
    assert prior["counterfactual_frames"] == 12


def test_bias_evaluator_works_on_waveforms_and_labels():
    seen = []

    def model(frames, audio):
        seen.append(audio.shape)
        return torch.zeros(audio.shape[0], 3, 3, dtype=torch.long)  # all background

    evaluator = BiasEvaluator(model, output="labels", kinds=("silence", "noise"))
    evaluator.update_negative(None, torch.randn(2, 16000))
    assert seen == [(2, 16000), (2, 16000)]
    assert evaluator.compute()["fpr_silence"] == 0.0


def test_bias_evaluator_bad_arguments():
    with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
        BiasEvaluator(prior_model, kinds=("silence", "music"))
    with pytest.raises(ValueError, match="output must be one of"):
        BiasEvaluator(prior_model, output="scores")
    with pytest.raises(TypeError, match="predict must be a callable"):
        BiasEvaluator(None)
