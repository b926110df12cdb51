"""The ``hf_mask2former`` segmenter: transformers' Mask2Former from a ``save_pretrained`` folder, driven by the
audio-prompted queries of ``coavs.ops.assign_queries``, its masked attention on coavs's op (no downloads)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'coavs[hf]')")

from coavs.errors import UserError  # noqa: E402
from coavs.integrations import transformers as integration  # noqa: E402
from coavs.models import HFMask2FormerAVS, ModelConfig, build_model, read_checkpoint  # noqa: E402
from coavs.training.config import OptimSection  # noqa: E402
from coavs.training.plan import param_groups  # noqa: E402
from tests.support.helpers import assert_close  # noqa: E402
from tests.support.released import HIDDEN, IMAGE_SIZE, QUERIES, write_tiny_mask2former  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_mask2former(tmp_path_factory.mktemp("m2f") / "tiny")


def config(checkpoint, **overrides) -> ModelConfig:
    info = read_checkpoint(checkpoint)
    settings = dict(num_classes=3, num_audio_classes=2, num_clusters=0, dilation=2, num_queries=QUERIES,
                    hidden_dim=HIDDEN, audio_input="vggish", segmenter="hf_mask2former", checkpoint=str(checkpoint),
                    pixel_mean=info.pixel_mean, pixel_std=info.pixel_std)
    settings.update(overrides)
    return ModelConfig(**settings)


def inputs(n=2):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g), torch.randn(n, 128, generator=g)


def test_reads_the_checkpoint_and_its_image_processor(checkpoint):
    info = read_checkpoint(checkpoint)
    assert info.image_size == IMAGE_SIZE and info.config["hidden_dim"] == HIDDEN
    assert info.pixel_mean == pytest.approx((0.485, 0.456, 0.406)) and info.pixel_std == pytest.approx(
        (0.229, 0.224, 0.225))


def test_missing_folder_or_file_is_one_line(checkpoint, tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        read_checkpoint(tmp_path / "none")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((checkpoint / "config.json").read_text())
    with pytest.raises(UserError, match="preprocessor_config.json is missing"):
        read_checkpoint(tmp_path / "half")


def test_unprompted_queries_give_transformers_own_outputs(checkpoint):
    """With every gate 0 (no audio reaches the queries) the segmenter's decoder inputs are the checkpoint's query
    features: its predictions at every layer equal ``Mask2FormerForUniversalSegmentation.forward`` on the same
    normalised frames — the wiring (one pixel-level pass, the decoder called with our queries) is transformers'."""
    model = build_model(config(checkpoint, dormant_gate=0.0)).eval()
    frames, _ = inputs()
    queries = model.query_features()[None].expand(2, -1, -1)
    with torch.no_grad():
        ours = model.decode(queries, torch.ones(2, QUERIES, dtype=torch.bool), 1, model.image_features(frames))
        x = (frames - model.pixel_mean) / model.pixel_std
        theirs = model.hf(pixel_values=x, output_auxiliary_logits=True)
    expected = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in theirs.auxiliary_logits]
    expected.append((theirs.class_queries_logits, theirs.masks_queries_logits))
    assert len(ours) == len(expected) == 4  # the initial queries and 3 masked-attention layers
    for i, ((c, m), (ce, me)) in enumerate(zip(ours, expected)):
        assert_close(c, ce, what=f"class logits {i}")
        assert_close(m, me, what=f"mask logits {i}")


def test_audio_prompts_reach_the_decoder_as_gate_times_audio(checkpoint):
    """The decoder's input queries are ``queries_features + gate·audio_embedding`` (the reference code's
    ``query_features + prompt_features_projected``), with the gates of ``assign_queries``."""
    model = build_model(config(checkpoint)).eval()
    frames, audio = inputs()
    seen = {}
    decoder = model.hf.model.transformer_module.decoder
    handle = decoder.register_forward_pre_hook(lambda m, a, k: seen.update(q=k["inputs_embeds"]), with_kwargs=True)
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.7]])
    with torch.no_grad():
        out = model(frames, audio, marker_scores=scores)
        embedding = model.prompt_encoder(audio)
    handle.remove()
    gate = out["gate"]
    assert gate[0, :2].tolist() == [1.0, 1.0] and gate[0, 2:4].tolist() == [0.0, 0.0] and gate[1, 2:4].sum() == 2
    expected = model.query_features()[:, None] + gate.T[:, :, None] * embedding[None]
    assert_close(seen["q"], expected, what="prompted queries")


def test_biased_branch_shares_the_image_features_and_equals_a_separate_pass(checkpoint, monkeypatch):
    """Both branches run in one decoder call on one pixel-level pass; the vanilla outputs equal a run without
    the biased branch, and the biased outputs equal a run whose queries are the biased ones."""
    model = build_model(config(checkpoint)).eval()
    frames, audio = inputs()
    calls = []
    pixel = model.hf.model.pixel_level_module
    pixel.register_forward_hook(lambda *args: calls.append("pixel"))
    with torch.no_grad():
        both = model(frames, audio, biased="mute")
        assert calls == ["pixel"]
        alone = model(frames, audio)
        features = model.image_features(frames)
        muted = model.assign(model.perceive(torch.zeros_like(model.prompt_encoder(audio)), audio).scores,
                             torch.zeros_like(model.prompt_encoder(audio)))
        biased_alone = model.decode(muted.queries, muted.active, 1, features)[-1]
    assert_close(both["pred_masks"], alone["pred_masks"], what="vanilla masks")
    assert_close(both["pred_logits"], alone["pred_logits"], what="vanilla logits")
    assert_close(both["biased"]["pred_logits"], biased_alone[0], what="biased logits")
    assert_close(both["biased"]["pred_masks"], biased_alone[1], what="biased masks")


def test_masked_attention_runs_the_coavs_op(checkpoint, monkeypatch):
    model = build_model(config(checkpoint))
    assert len(integration.accelerated_layers(model)) == 3
    calls = []
    original = integration.masked_cross_attention
    monkeypatch.setattr(integration, "masked_cross_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    frames, audio = inputs()
    out = model(frames, audio, biased="ddpm")
    (out["pred_masks"].sum() + out["biased"]["pred_logits"].sum()).backward()
    assert len(calls) == 3  # one call per masked-attention layer, both branches batched
    assert model.query_features().grad is not None and all(p.grad is not None for p in model.prompt_encoder.parameters())


def test_heads_follow_the_dataset_and_a_run_rebuilds_without_the_folder(checkpoint, tmp_path):
    """num_labels and num_queries come from the run (ADE20k's 150 classes and the checkpoint's 12 queries are
    re-initialised), and the model rebuilds from the stored hf_config alone, to the same outputs."""
    cfg = config(checkpoint, num_queries=16, dilation=8)
    model = build_model(cfg).eval()
    assert model.hf.class_predictor.out_features == 4 and model.query_features().shape == (16, HIDDEN)
    rebuilt = build_model(cfg.replace(checkpoint=str(tmp_path / "gone"), hf_config=read_checkpoint(checkpoint).config),
                          pretrained=False).eval()
    rebuilt.load_state_dict(model.state_dict())
    frames, audio = inputs()
    with torch.no_grad():
        a, b = model(frames, audio), rebuilt(frames, audio)
    assert_close(a["pred_masks"], b["pred_masks"], what="rebuilt masks")


def test_pretrained_weights_are_the_checkpoints(checkpoint):
    from transformers import Mask2FormerForUniversalSegmentation

    hf = Mask2FormerForUniversalSegmentation.from_pretrained(checkpoint, local_files_only=True)
    ours = build_model(config(checkpoint)).hf.state_dict()
    theirs = hf.state_dict()
    same = [k for k in theirs if not k.startswith(("class_predictor", "criterion")) and k in ours]
    assert len(same) > 100 and all(torch.equal(ours[k], theirs[k]) for k in same)


def test_freeze_and_parameter_groups(checkpoint):
    model = build_model(config(checkpoint, freeze=("backbone",)))
    assert isinstance(model, HFMask2FormerAVS)
    backbone = [n for n, p in model.named_parameters() if n.startswith(model.backbone_prefix)]
    assert backbone and not any(p.requires_grad for n, p in model.named_parameters() if n in backbone)
    groups = param_groups(build_model(config(checkpoint)), 1e-4, OptimSection(backbone_lr_scale=0.1))
    assert {g["lr"] for g in groups} == {1e-4, 1e-5}
    embeddings = {id(p) for n, p in model.named_parameters() if n in model.embedding_names}
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert len(embeddings) == 3 and not embeddings & decayed


def test_hidden_size_must_match_the_checkpoint(checkpoint):
    with pytest.raises(ValueError, match="must equal the checkpoint's hidden_dim"):
        build_model(config(checkpoint, hidden_dim=64))
