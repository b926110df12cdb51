"""The debias objective (fixed, uncertainty, bias_only), inference combination, and its config."""

import pytest
import torch

import coavs.ops as ops
from coavs.training.config import TrainConfig
from coavs.training.debias import DebiasConfig, DebiasObjective, combine, debiased_outputs
from coavs.training.losses import SetCriterion, targets_from_labels
from tests.support.losses import FirstQueriesMatcher, fake_outputs


def outputs_with_bias(n=3, q=4, k=3, requires_grad=True):
    out = fake_outputs(n, q, k, requires_grad=requires_grad)
    biased = fake_outputs(n, q, k, requires_grad=requires_grad)
    out["biased"] = {key: biased[key] for key in ("pred_logits", "pred_masks", "aux_outputs")}
    return out


def criterion(seed=0):
    c = SetCriterion(3, matcher=FirstQueriesMatcher(), num_points=32)
    c.generator = torch.Generator().manual_seed(seed)
    return c


def targets(n=3):
    return targets_from_labels(torch.randint(0, 3, (n, 8, 8), generator=torch.Generator().manual_seed(5)), 3)


@pytest.mark.parametrize("strategy", ["fixed", "uncertainty"])
def test_loss_is_vanilla_plus_weighted_debiased_loss_with_the_same_matching(strategy):
    out, ft = outputs_with_bias(), targets()
    config = DebiasConfig(strategy=strategy, weight=10.0, alpha=0.5)
    got = DebiasObjective(criterion(), config)(out, ft.targets, ft.annotated)

    reference = criterion()
    vanilla = reference(out, ft.targets, ft.annotated)
    debiased = ops.debias_logits(out["pred_masks"], out["pred_logits"], out["biased"]["pred_masks"],
                                 out["biased"]["pred_logits"], alpha=0.5, strategy=strategy)
    debias_out = {"pred_masks": debiased.mask, "pred_logits": debiased.cls, "active": out["active"],
                  "query_marker": out["query_marker"]}
    debias_loss = reference(debias_out, ft.targets, ft.annotated, indices=vanilla.indices[:1], aux=False)
    torch.testing.assert_close(got.total, vanilla.total + 10.0 * debias_loss.total)
    assert "debias/ce" in got.terms and "debias/ce_0" not in got.terms
    torch.testing.assert_close(got.terms["debias_total"], debias_loss.total.detach())


def test_aux_debias_covers_every_prediction():
    out, ft = outputs_with_bias(), targets()
    got = DebiasObjective(criterion(), DebiasConfig(aux=True))(out, ft.targets)
    assert {"debias/ce_0", "debias/ce_1"} <= set(got.terms)
    with pytest.raises(ValueError, match="aux_loss=True"):
        c = criterion()
        c.aux_loss = False
        DebiasObjective(c, DebiasConfig(aux=True))


def test_bias_only_fits_the_biased_branch_and_trains_vanilla_through_the_complement():
    out, ft = outputs_with_bias(), targets()
    result = DebiasObjective(criterion(), DebiasConfig(strategy="bias_only", weight=2.0))(out, ft.targets)
    assert "biased/ce" in result.terms and "debias/ce" in result.terms
    # Only the biased loss reaches the biased logits (the debiased term sees them through a stop-gradient).
    grad_b = torch.autograd.grad(result.total, out["biased"]["pred_logits"], retain_graph=True)[0]
    want_b = torch.autograd.grad(result.terms["biased/ce"] * 2.0, out["biased"]["pred_logits"])[0]
    torch.testing.assert_close(grad_b, want_b)
    # The vanilla logits learn from the debiased loss only: (1 + alpha) times its gradient w.r.t. x'.
    grad_v = torch.autograd.grad(result.total, out["pred_logits"], retain_graph=True)[0]
    want_v = torch.autograd.grad(2.0 * 2.0 * result.terms["debias/ce"], out["pred_logits"], retain_graph=True)[0]
    torch.testing.assert_close(grad_v, want_v)


def test_ensemble_trains_the_biased_branch_alone_and_the_vanilla_branch_in_a_product_of_experts():
    """D.1's logits ensemble: L(b) + λ·L(v + sg(b)); the biased logits get gradient only from L(b)."""
    out, t = outputs_with_bias(), targets()
    result = DebiasObjective(criterion(), DebiasConfig(strategy="ensemble", weight=3.0))(out, t.targets, t.annotated)
    reference = criterion()  # the same calls in the same order: the same sampled points
    vanilla = reference(out, t.targets, t.annotated)
    poe = dict(out, pred_masks=out["pred_masks"] + out["biased"]["pred_masks"].detach(),
               pred_logits=out["pred_logits"] + out["biased"]["pred_logits"].detach())
    ensemble = reference(poe, t.targets, t.annotated, indices=vanilla.indices[:1], aux=False)
    biased = reference(dict(out["biased"], active=out["active"], query_marker=out["query_marker"]), t.targets,
                       t.annotated, indices=vanilla.indices)
    torch.testing.assert_close(result.total, biased.total + 3.0 * ensemble.total)
    grads = torch.autograd.grad(result.total, [out["pred_masks"], out["biased"]["pred_masks"]], retain_graph=True)
    only_biased = torch.autograd.grad(biased.total, out["biased"]["pred_masks"])[0]
    torch.testing.assert_close(grads[1], only_biased)  # no gradient to the biased branch through the ensemble
    assert grads[0].abs().sum() > 0
    assert TrainConfig.from_dict({"debias": {"strategy": "ensemble"}}).inference_mode() == "vanilla"
    assert TrainConfig.from_dict({"debias": {"strategy": "fixed"}}).inference_mode() == "debias"


def test_disabled_objective_is_the_set_loss_and_enabled_needs_the_branch():
    out, ft = outputs_with_bias(), targets()
    plain = DebiasObjective(criterion(), DebiasConfig(enabled=False))
    assert plain.biased_audio is None
    torch.testing.assert_close(plain(out, ft.targets).total, criterion()(out, ft.targets).total)
    del out["biased"]
    with pytest.raises(ValueError, match="no biased branch"):
        DebiasObjective(criterion(), DebiasConfig(biased_audio="ddpm"))(out, ft.targets)


def test_combine_modes():
    out = outputs_with_bias(requires_grad=False)
    m, c = combine(out, "vanilla")
    assert m is out["pred_masks"] and c is out["pred_logits"]
    dm, dc = combine(out, "debias", alpha=1.0)
    torch.testing.assert_close(dm, 2 * out["pred_masks"] - out["biased"]["pred_masks"])
    with pytest.raises(ValueError, match="debias at alpha/2 and is gone"):  # the old mode names its replacement
        combine(out, "ensemble")
    mask_only = debiased_outputs(out, scheme="mask")
    assert mask_only["pred_logits"] is out["pred_logits"]
    with pytest.raises(ValueError, match="mode must be"):
        combine(out, "average")


@pytest.mark.parametrize("changes, message", [
    (dict(strategy="mixin"), "strategy"), (dict(scheme="pixel"), "scheme"),
    (dict(overall_reading="sum"), "overall_reading"),
    (dict(biased_audio="silence"), "biased_audio"), (dict(weight=-1.0), ">= 0"),
])
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        DebiasConfig(**changes)


# ------------------------------------------------------------------------- supplementary B.2 and D.3
def test_scheme_auto_is_mask_only_for_binary_avs_and_separate_for_semantic():
    assert DebiasConfig().scheme == "auto"
    assert DebiasConfig().resolved(binary=True).scheme == "mask"
    assert DebiasConfig().resolved(binary=False).scheme == "separate"
    assert DebiasConfig(scheme="class").resolved(binary=True).scheme == "class"  # an explicit scheme stays
    binary_run = TrainConfig.from_dict({"debias": {"strategy": "fixed"}, "resolved": {"binary": True}})
    semantic_run = TrainConfig.from_dict({"debias": {"strategy": "fixed"}, "resolved": {"binary": False}})
    assert binary_run.debias_config().scheme == "mask" and semantic_run.debias_config().scheme == "separate"
    out, t = outputs_with_bias(), targets()
    binary = DebiasObjective(criterion(), DebiasConfig(), binary=True)(out, t.targets, t.annotated)
    mask = DebiasObjective(criterion(), DebiasConfig(scheme="mask"))(out, t.targets, t.annotated)
    torch.testing.assert_close(binary.total, mask.total)
    mask_only = debiased_outputs(out, scheme="mask")
    assert mask_only["pred_logits"] is out["pred_logits"]  # the class logits (background included) untouched


def test_overall_score_reading_is_the_per_pixel_score_debias():
    from coavs.training.debias import overall_maps

    out = outputs_with_bias(requires_grad=False)
    got = overall_maps(out["pred_masks"], out["pred_logits"], out["biased"]["pred_masks"],
                       out["biased"]["pred_logits"], alpha=0.7, reading="score")
    want = ops.debias_logits(out["pred_masks"], out["pred_logits"], out["biased"]["pred_masks"],
                             out["biased"]["pred_logits"], alpha=0.7, scheme="overall").mask
    torch.testing.assert_close(got, want)


def test_overall_product_reading_is_the_literal_eq1_and_differs_from_debiasing_each_factor():
    from coavs.training.debias import overall_maps

    out = outputs_with_bias(requires_grad=False)
    m, c = out["pred_masks"].double(), out["pred_logits"].double()[..., :-1]
    mb, cb = out["biased"]["pred_masks"].double(), out["biased"]["pred_logits"].double()[..., :-1]
    got = overall_maps(m, out["pred_logits"].double(), mb, out["biased"]["pred_logits"].double(), alpha=1.0,
                       reading="product")
    literal = torch.zeros_like(got)
    for b in range(m.shape[0]):  # Z[k](p) = Σ_q m_q(p)·c_q[k]: mask × class logits as a matrix product
        mm = m[b].flatten(1).T
        mmb = mb[b].flatten(1).T
        literal[b] = (2 * mm @ c[b] - mmb @ cb[b]).T.reshape(got.shape[1:])
    torch.testing.assert_close(got, literal)
    factorwise = torch.einsum("bqk,bqhw->bkhw", 2 * c - cb, 2 * m - mb)  # Eq. (1)'s left-hand side
    assert not torch.allclose(got, factorwise.to(got.dtype))


@pytest.mark.parametrize("reading", ["score", "product"])
def test_overall_scheme_trains_with_a_per_pixel_loss(reading):
    from coavs.training.debias import labels_from_targets, overall_log_probs, overall_maps

    out, t = outputs_with_bias(), targets()
    config = DebiasConfig(scheme="overall", overall_reading=reading, weight=2.0)
    result = DebiasObjective(criterion(), config)(out, t.targets, t.annotated)
    maps = overall_maps(out["pred_masks"], out["pred_logits"], out["biased"]["pred_masks"],
                        out["biased"]["pred_logits"], 1.0, reading)
    labels = labels_from_targets(t.targets, tuple(maps.shape[-2:]), maps.device)
    expected = torch.nn.functional.nll_loss(overall_log_probs(maps, reading), labels)
    torch.testing.assert_close(result.terms["debias/overall_ce"], expected)
    vanilla = criterion()(out, t.targets, t.annotated)
    torch.testing.assert_close(result.total, vanilla.total + 2.0 * expected)
    result.total.backward()
    for tensor in (out["pred_masks"], out["pred_logits"], out["biased"]["pred_masks"]):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_product_reading_at_inference():
    import torch.nn.functional as F

    from coavs.eval.runner import postprocess
    from coavs.training.debias import overall_maps

    out = outputs_with_bias(requires_grad=False)
    labels, fg = postprocess(out, (16, 16), "debias", scheme="overall", overall_reading="product")
    maps = F.interpolate(overall_maps(out["pred_masks"], out["pred_logits"], out["biased"]["pred_masks"],
                                      out["biased"]["pred_logits"], 1.0, "product"), size=(16, 16),
                         mode="bilinear", align_corners=False)
    assert torch.equal(labels, maps.argmax(1))
    torch.testing.assert_close(fg, 1 - torch.softmax(maps, 1)[:, 0])
    score_labels, _ = postprocess(out, (16, 16), "debias", scheme="overall", overall_reading="score")
    assert score_labels.shape == labels.shape


@pytest.mark.parametrize("reading", ["score", "product"])
def test_overall_at_inference_weights_each_branch_with_its_own_gate_as_training_does(reading):
    """Training's per-pixel loss gates the biased map with the biased branch's gate; inference must read the same
    map (before: the vanilla gate on both branches, with the score reading)."""
    import torch.nn.functional as F

    from coavs.eval.runner import postprocess
    from coavs.training.debias import overall_maps

    out = outputs_with_bias(n=4, q=6, requires_grad=False)
    g = torch.Generator().manual_seed(2)
    out["gate"] = (torch.rand(4, 6, generator=g) < 0.4).float()  # few queries active in the vanilla branch
    out["biased"]["gate"] = torch.ones(4, 6)  # every query active in the biased branch (biased_queries: all)
    labels, fg = postprocess(out, (16, 16), "debias", scheme="overall", overall_reading=reading)

    def read(gate_b):
        maps = overall_maps(out["pred_masks"], out["pred_logits"], out["biased"]["pred_masks"],
                            out["biased"]["pred_logits"], 1.0, reading, "fixed", out["gate"], gate_b)
        return F.interpolate(maps, size=(16, 16), mode="bilinear", align_corners=False)

    maps = read(out["biased"]["gate"])
    assert torch.equal(labels, maps.argmax(1))
    assert not torch.equal(labels, read(out["gate"]).argmax(1))  # the vanilla gate on both reads another map
    if reading == "score":
        positive = maps.clamp_min(0)
        torch.testing.assert_close(fg, (positive[:, 1:].sum(1) / positive.sum(1).clamp_min(1e-12)).clamp(0, 1))
    else:
        torch.testing.assert_close(fg, 1 - torch.softmax(maps, 1)[:, 0])


def test_old_config_key_debias_mode_still_works_with_one_warning():
    with pytest.warns(FutureWarning, match="debias.mode is deprecated"):
        old = TrainConfig.from_dict({"debias": {"mode": "uncertainty"}})
    assert old.debias["strategy"] == "uncertainty" and "mode" not in old.debias
    with pytest.raises(Exception, match="old name of debias.strategy"):
        TrainConfig.from_dict({"debias": {"mode": "fixed", "strategy": "uncertainty"}})
