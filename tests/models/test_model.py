"""AVSModel end to end: shapes, the batched biased branch, state dicts, torch.compile, bf16, other prompts."""

import io

import pytest
import torch

import coavs.ops as ops
from coavs.models import AVSModel, BagOfWordsEncoder, ModelConfig, fit_kmeans
from coavs.training.debias import debiased_outputs
from tests.support.synthetic import make_batch

TINY = dict(hidden_dim=32, num_layers=2, ffn_dim=64, num_heads=4, backbone_widths=(8, 8, 16, 16),
            audio_channels=(4, 8))


def tiny_model(**overrides) -> AVSModel:
    config = ModelConfig.small(**{**TINY, **overrides})
    model = AVSModel(config)
    if config.num_clusters:
        descriptors = torch.randn(40, model.prompt_encoder.descriptor_dim)
        model.perception.set_clusters(fit_kmeans(descriptors, config.num_clusters, iters=5))
    return model.eval()


@pytest.mark.parametrize("audio_kind", ["vggish", "logmel", "waveform"])
def test_output_shapes_for_every_audio_input(audio_kind):
    model = tiny_model(audio_input=audio_kind)
    frames, audio, _ = make_batch(3, size=32, audio=audio_kind)
    out = model(frames, audio)
    c = model.config
    q, k = c.queries, c.num_classes
    assert out["pred_logits"].shape == (3, q, k + 1)
    assert out["pred_masks"].shape == (3, q, 8, 8)
    assert len(out["aux_outputs"]) == c.num_layers  # the initial queries + every layer but the last
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (3, q, k + 1) and aux["pred_masks"].shape == (3, q, 8, 8)
    assert out["active"].shape == (3, q) and out["active"].dtype == torch.bool
    assert out["gate"].shape == (3, q)
    assert out["query_marker"].tolist() == [s for s in range(c.num_markers) for _ in range(c.dilation)]
    assert out["marker_scores"].shape == (3, c.num_markers)
    assert out["audio_logits"].shape == (3, c.num_audio_classes)
    assert "biased" not in out
    # Every frame has exactly one cluster present, so at least d active queries.
    assert (out["active"].sum(1) >= c.dilation).all()


@pytest.mark.parametrize("kind", ["mute", "noise", "ddpm", "random_semantic"])
def test_biased_branch_shapes_and_the_vanilla_branch_is_unchanged(kind):
    model = tiny_model()
    frames, audio, _ = make_batch(4, size=32)
    plain = model(frames, audio)
    out = model(frames, audio, biased=kind)
    for key in ("pred_logits", "pred_masks"):
        assert out["biased"][key].shape == out[key].shape
        # The branches share keys and values but never attend to each other.
        torch.testing.assert_close(out[key], plain[key], atol=1e-5, rtol=1e-5)
    assert len(out["biased"]["aux_outputs"]) == len(out["aux_outputs"])
    assert not torch.allclose(out["biased"]["pred_masks"], out["pred_masks"])


def test_backbone_and_pixel_decoder_run_once_for_both_branches():
    model = tiny_model()
    calls = {"backbone": 0, "pixel_decoder": 0}
    model.backbone.register_forward_hook(lambda *a: calls.__setitem__("backbone", calls["backbone"] + 1))
    model.pixel_decoder.register_forward_hook(lambda *a: calls.__setitem__("pixel_decoder",
                                                                           calls["pixel_decoder"] + 1))
    frames, audio, _ = make_batch(2, size=32)
    model(frames, audio, biased="mute")
    assert calls == {"backbone": 1, "pixel_decoder": 1}


def test_mute_branch_equals_a_vanilla_run_without_audio_on_the_same_markers():
    model = tiny_model(biased_queries="shared")  # the pre-D.2 behaviour, kept as an ablation
    frames, audio, _ = make_batch(3, size=32)
    out = model(frames, audio, biased="mute")
    encoder_forward = model.prompt_encoder.forward
    model.prompt_encoder.forward = lambda x: torch.zeros_like(encoder_forward(x))
    silent = model(frames, audio, marker_scores=out["marker_scores"])
    torch.testing.assert_close(out["biased"]["pred_masks"], silent["pred_masks"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["biased"]["pred_logits"], silent["pred_logits"], atol=1e-5, rtol=1e-5)


def test_debiased_outputs_are_debias_logits_of_the_two_branches():
    model = tiny_model()
    frames, audio, _ = make_batch(2, size=32)
    out = model(frames, audio, biased="ddpm")
    for strategy in ("fixed", "uncertainty"):
        got = debiased_outputs(out, alpha=0.7, scheme="separate", strategy=strategy, aux=True)
        want = ops.debias_logits(out["pred_masks"], out["pred_logits"], out["biased"]["pred_masks"],
                                 out["biased"]["pred_logits"], alpha=0.7, strategy=strategy)
        torch.testing.assert_close(got["pred_masks"], want.mask)
        torch.testing.assert_close(got["pred_logits"], want.cls)
        assert len(got["aux_outputs"]) == len(out["aux_outputs"])
    fixed = debiased_outputs(out)
    torch.testing.assert_close(fixed["pred_masks"], 2 * out["pred_masks"] - out["biased"]["pred_masks"])


def test_state_dict_round_trip_keeps_weights_and_fitted_markers():
    model = tiny_model()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = AVSModel(model.config).eval()
    assert not clone.perception.fitted
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    assert clone.perception.fitted
    frames, audio, _ = make_batch(2, size=32)
    a, b = model(frames, audio, biased="mute"), clone(frames, audio, biased="mute")
    for key in ("pred_logits", "pred_masks", "marker_scores"):
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    torch.testing.assert_close(a["biased"]["pred_masks"], b["biased"]["pred_masks"], atol=0, rtol=0)


def test_load_markers_checks_the_file(tmp_path):
    from coavs.models import save_kmeans

    model = tiny_model()
    save_kmeans(tmp_path / "ok.pt", fit_kmeans(torch.randn(20, 128), 3), "vggish")
    model.load_markers(tmp_path / "ok.pt")
    save_kmeans(tmp_path / "wrong.pt", fit_kmeans(torch.randn(20, 128), 3), "logmel_stats")
    with pytest.raises(ValueError, match="fitted on 'logmel_stats'"):
        model.load_markers(tmp_path / "wrong.pt")
    save_kmeans(tmp_path / "four.pt", fit_kmeans(torch.randn(20, 128), 4), "vggish")
    with pytest.raises(ValueError, match="4 clusters"):
        model.load_markers(tmp_path / "four.pt")


def test_every_part_gets_a_gradient():
    model = tiny_model().train()
    frames, audio, _ = make_batch(2, size=32)
    out = model(frames, audio, biased="noise")
    loss = sum(o["pred_masks"].square().mean() + o["pred_logits"].square().mean() for o in (out, out["biased"]))
    (loss + out["audio_logits"].sum()).backward()
    for name in ("prompt_encoder", "perception", "backbone", "pixel_decoder", "decoder"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert model.query_feat.grad.abs().sum() > 0 and model.query_pos.grad.abs().sum() > 0


def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    model = tiny_model(num_layers=1).train()
    frames, audio, _ = make_batch(2, size=32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(frames, audio, biased="mute")
    loss = out["pred_masks"].square().mean() + out["biased"]["pred_logits"].square().mean()
    loss.backward()
    assert model.query_feat.grad is not None and torch.isfinite(model.query_feat.grad).all()
    eager = model(frames, audio, biased="mute")
    torch.testing.assert_close(out["pred_masks"], eager["pred_masks"], atol=1e-4, rtol=1e-4)


def test_bf16_autocast_forward_and_backward():
    model = tiny_model().train()
    frames, audio, _ = make_batch(2, size=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(frames, audio, biased="ddpm")
        loss = out["pred_masks"].float().square().mean() + out["biased"]["pred_logits"].float().square().mean()
    assert out["pred_masks"].dtype == torch.bfloat16
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_given_marker_scores_replace_perception():
    model = tiny_model()
    frames, audio, _ = make_batch(2, size=32)
    scores = torch.zeros(2, model.config.num_markers)
    scores[0, 1] = scores[1, 6] = 1.0
    out = model(frames, audio, marker_scores=scores)
    assert out["active"][0].nonzero().flatten().tolist() == [2, 3]
    assert out["active"][1].nonzero().flatten().tolist() == [12, 13]
    assert out["audio_logits"] is None


def test_a_text_prompt_drives_the_same_model():
    encoder = BagOfWordsEncoder(["red", "blue", "square", "circle"], 32)
    model = AVSModel(ModelConfig.small(**TINY, num_clusters=0), prompt_encoder=encoder)
    frames = torch.rand(2, 3, 32, 32)
    ids = encoder.encode(["the red square", "a blue circle, please"])
    assert ids.tolist() == [[1, 3], [2, 4]]
    out = model(frames, ids, biased="mute")
    assert out["pred_masks"].shape == (2, model.config.queries, 8, 8)
    with pytest.raises(ValueError, match="noise_like"):
        model(frames, ids, biased="noise")
    with pytest.raises(ValueError, match="descriptor"):
        AVSModel(ModelConfig.small(**TINY), prompt_encoder=encoder)


def test_bad_inputs_are_named():
    model = tiny_model()
    frames, audio, _ = make_batch(2, size=32)
    with pytest.raises(ValueError, match="frames must be"):
        model(frames[:, :2], audio)
    with pytest.raises(ValueError, match="one entry per frame"):
        model(frames, audio[:1])
    with pytest.raises(ValueError, match=r"\[N,128\]"):
        model(frames, audio[:, :64])
    with pytest.raises(ValueError, match="biased must be one of"):
        model(frames, audio, biased="silence")
    with pytest.raises(ValueError, match="marker_scores must be"):
        model(frames, audio, marker_scores=torch.zeros(2, 3))


@pytest.mark.gpu
def test_paper_sized_model_trains_on_gpu_with_debias_bf16_and_compile():
    from coavs.training.debias import DebiasConfig, DebiasObjective
    from coavs.training.losses import SetCriterion, targets_from_labels

    device = torch.device("cuda")
    config = ModelConfig.paper()
    model = AVSModel(config).to(device).train()
    frames, audio, labels = make_batch(4, size=384, num_classes=config.num_classes)
    frames, audio, labels = frames.to(device), audio.to(device), labels.to(device)
    model.perception.set_clusters(fit_kmeans(torch.randn(200, 128), config.num_clusters, iters=5))
    ft = targets_from_labels(labels, config.num_classes, model.class_to_marker())
    objective = DebiasObjective(SetCriterion(config.num_classes), DebiasConfig(biased_audio="ddpm"))  # separate
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(frames, audio, biased="ddpm", class_presence=ft.presence[:, 1:])
        loss = objective(out, ft.targets, ft.annotated).total
    assert out["pred_masks"].shape == (4, 200, 96, 96)  # the paper preset: S·d = 100·2 queries (B.1)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        plain, both = model(frames, audio), model(frames, audio, biased="mute")
        torch.testing.assert_close(both["pred_masks"], plain["pred_masks"], atol=2e-3, rtol=2e-3)
    model.train()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(frames, audio, biased="mute")
    (out["pred_masks"].float().square().mean() + out["biased"]["pred_logits"].float().square().mean()).backward()


@pytest.mark.parametrize("queries", ["all", "own"])
@pytest.mark.parametrize("kind", ["mute", "noise", "ddpm", "random_semantic"])
def test_biased_branch_ignores_the_vanilla_markers(kind, queries):
    """Supplementary D.2: the biased branch carries no audio semantics, so changing only the (vanilla) markers
    must not move its "visual prior" logits; the earlier behaviour (shared markers) is kept as an ablation."""
    frames, audio, _ = make_batch(3, size=32)
    model = tiny_model(biased_queries=queries)
    s = model.config.num_markers
    a, b = torch.zeros(3, s), torch.zeros(3, s)
    a[:, 0], b[:, s - 1] = 1.0, 1.0  # two different marker sets for the vanilla branch
    torch.manual_seed(0)
    out_a = model(frames, audio, biased=kind, marker_scores=a)
    torch.manual_seed(0)
    out_b = model(frames, audio, biased=kind, marker_scores=b)
    assert not torch.allclose(out_a["pred_masks"], out_b["pred_masks"])  # the vanilla branch follows its markers
    for key in ("pred_masks", "pred_logits"):
        torch.testing.assert_close(out_a["biased"][key], out_b["biased"][key], atol=1e-5, rtol=1e-5)
    assert torch.equal(out_a["biased"]["active"], out_b["biased"]["active"])
    if queries == "all":  # the rule: every query that owns a marker is active with gate 1, in every frame
        owned = model.config.num_markers * model.config.dilation
        assert out_a["biased"]["active"][:, :owned].all() and not out_a["biased"]["active"][:, owned:].any()
        assert (out_a["biased"]["gate"][:, :owned] == 1).all()
    shared = tiny_model(biased_queries="shared")
    shared.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    sa = shared(frames, audio, biased=kind, marker_scores=a)
    torch.manual_seed(0)
    sb = shared(frames, audio, biased=kind, marker_scores=b)
    assert not torch.allclose(sa["biased"]["pred_masks"], sb["biased"]["pred_masks"])
    assert torch.equal(sa["biased"]["active"], sa["active"])  # shared: the vanilla branch's active queries


def test_own_mute_branch_is_a_vanilla_run_on_silence_markers_without_audio():
    from coavs.models.biased import silence_input

    model = tiny_model(audio_input="logmel", biased_queries="own")
    frames, audio, _ = make_batch(3, size=32, audio="logmel")
    out = model(frames, audio, biased="mute")
    silence = silence_input(audio, model.prompt_encoder)
    zero = torch.zeros(3, model.config.hidden_dim)
    scores = model.perceive(zero, silence).scores
    encoder_forward = model.prompt_encoder.forward
    model.prompt_encoder.forward = lambda x: torch.zeros_like(encoder_forward(x))
    expected = model(frames, audio, marker_scores=scores)
    torch.testing.assert_close(out["biased"]["pred_masks"], expected["pred_masks"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["biased"]["active"], expected["active"])
    with pytest.raises(ValueError, match="biased_queries"):
        ModelConfig.small(biased_queries="vanilla")
