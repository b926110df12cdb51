"""The debias objective and inference-time combination of the vanilla and biased branches.

Training (``DebiasConfig.strategy``; the settings dataclass lives in :mod:`coavs.inference.settings`):
- ``fixed``:       ``L(vanilla) + λ·L(debias_logits(vanilla, biased, α))``, ``x' = (1+α)·x − α·x_b``;
- ``uncertainty``: the same with α scaled by the biased branch's confidence (``debias_logits``' strategy);
- ``bias_only``:   ``L(biased) + λ·L(debias_logits(vanilla, sg(biased), α))``: the biased branch alone is fit
  to the targets (so it holds the visual prior), and the vanilla branch learns only through the debiased
  logits, i.e. the complement of what the bias explains (``sg`` = stop-gradient).
- ``ensemble``:    ``L(biased) + λ·L(vanilla + sg(biased))``: supplementary D.1's "logits ensemble", read as the
  ensemble-based debiasing of the VQA literature (product of experts: Clark et al. 2019, He et al. 2019; RUBi,
  Cadene et al. 2019, in the same family): the biased branch is fit to the targets alone and holds the visual
  prior, the vanilla branch is trained only *in ensemble* with it — the sum of their logits, a product of the two
  experts' probabilities — so it needs to explain only what the prior does not; at inference the vanilla branch
  alone predicts (``TrainConfig.inference_mode()`` is ``vanilla``). D.1 reports it below vanilla on Ref-VOS.
Every debiased loss reuses the vanilla branch's matching (docs/design.md, "Training": "with the same matching").

Schemes (supplementary B.2, D.3): ``auto`` (the default) resolves from the dataset: binary AVS (S4, MS3)
debiases the mask logits only (``mask``), semantic AVS both logits separately (``separate``). ``overall``
debiases the per-mask product of mask and class logits, in one of two readings (``overall_reading``):

- ``score``: the per-pixel class score ``S[k] = Σ_q softmax(c_q)[k]·σ(m_q)``, ``S' = (1+α)·S − α·S_b``
  (``coavs.ops.debias_logits``' ``overall``);
- ``product``: the literal product of Eq. (1), the matrix product of mask and class logits over the queries,
  ``Z[k] = Σ_q m_q·c_q[k]``, ``Z' = (1+α)·Z − α·Z_b`` (class logits without "no object").

Per-pixel maps cannot be trained with a set loss, so under ``overall`` the debiased loss is a per-pixel
cross-entropy at the mask resolution (``score``: on ``S'`` clamped to ``[ε, ∞)`` and normalised; ``product``:
softmax of ``Z'``) against the label map rebuilt from the targets; the vanilla set loss is unchanged.

Inference (:func:`combine`): ``vanilla`` or ``debias`` (the debiased logits).

Bias-only audio (``mute``, ``noise``, ``ddpm``, ``random_semantic``) is produced inside the model
(:mod:`coavs.models.biased`) so that its branch is batched with the vanilla one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from coavs.inference.combine import combine, debiased_outputs, ensemble_outputs, logit_strategy, overall_maps
from coavs.inference.settings import DebiasConfig
from coavs.training.losses import LossResult, SetCriterion

_EPS = 1e-4


def overall_log_probs(maps: Tensor, reading: str) -> Tensor:
    """Per-pixel log class probabilities ``[B,K,h,w]`` of an :func:`overall_maps` map."""
    if reading == "score":
        p = maps.clamp_min(_EPS)
        return torch.log(p / p.sum(dim=1, keepdim=True))
    return torch.log_softmax(maps, dim=1)


def labels_from_targets(targets: list[dict], size: tuple[int, int], device) -> Tensor:
    """The label map ``[N,h,w]`` (0 where no target mask) rebuilt from per-frame targets, resized (nearest)."""
    maps = []
    for t in targets:
        masks = t["masks"]
        if masks.numel() == 0:
            maps.append(torch.zeros(size, dtype=torch.long, device=device))
            continue
        small = F.interpolate(masks.float()[None], size=size, mode="nearest")[0] > 0.5
        label = torch.zeros(size, dtype=torch.long, device=device)
        for g in range(small.shape[0]):
            label[small[g]] = int(t["labels"][g])
        maps.append(label)
    return torch.stack(maps) if maps else torch.zeros((0, *size), dtype=torch.long, device=device)


def overall_loss(outputs: dict, targets: list[dict], annotated: Tensor | None, alpha: float, reading: str,
                 strategy: str, detach_biased: bool) -> Tensor:
    """Per-pixel cross-entropy of the debiased ``overall`` map against the targets (annotated frames only)."""
    biased = outputs["biased"]
    mask_b, cls_b = biased["pred_masks"], biased["pred_logits"]
    if detach_biased:
        mask_b, cls_b = mask_b.detach(), cls_b.detach()
    maps = overall_maps(outputs["pred_masks"], outputs["pred_logits"], mask_b, cls_b, alpha, reading, strategy,
                        outputs.get("gate"), biased.get("gate"))
    labels = labels_from_targets(targets, tuple(maps.shape[-2:]), maps.device)
    keep = annotated if annotated is not None else torch.ones(maps.shape[0], dtype=torch.bool,
                                                               device=maps.device)
    keep = keep.to(maps.device).bool()
    if not bool(keep.any()):
        return maps.sum() * 0.0
    return F.nll_loss(overall_log_probs(maps[keep], reading), labels[keep])


class DebiasObjective:
    """``objective(outputs, targets, annotated)`` → :class:`LossResult` of the whole training loss.

    ``terms`` holds the vanilla terms, ``debias/<term>`` for the debiased loss, ``biased/<term>`` for
    ``bias_only``, and ``vanilla_total``/``debias_total``. With ``config.enabled`` False (or outputs without a
    biased branch and strategy ``fixed``/``uncertainty``) it is the plain set loss. ``binary``: resolves
    ``scheme: auto`` (mask-only for binary AVS, separate otherwise; the trainer passes the dataset's).
    """

    def __init__(self, criterion: SetCriterion, config: DebiasConfig | None = None, binary: bool = False):
        self.criterion = criterion
        self.config = (config or DebiasConfig()).resolved(binary)  # scheme auto: mask if binary, else separate
        if self.config.aux and not criterion.aux_loss:
            raise ValueError("DebiasConfig.aux needs a criterion with aux_loss=True (it reuses the aux matching)")

    @property
    def biased_audio(self) -> str | None:
        """What to pass as ``AVSModel.forward(biased=…)``."""
        return self.config.biased_audio if self.config.enabled else None

    def __call__(self, outputs: dict, targets: list[dict], annotated: Tensor | None = None) -> LossResult:
        cfg = self.config
        vanilla = self.criterion(outputs, targets, annotated)
        if not cfg.enabled:
            return vanilla
        if "biased" not in outputs:
            raise ValueError("debias is enabled but the outputs hold no biased branch: call the model with "
                             f"biased={cfg.biased_audio!r}")
        # The debiased loss reuses the vanilla matching (final prediction first, then aux in order).
        indices = vanilla.indices if cfg.aux else vanilla.indices[:1]
        strategy = logit_strategy(cfg.strategy)
        if cfg.strategy == "ensemble":
            debias_loss = self.criterion(ensemble_outputs(outputs, cfg.aux), targets, annotated, indices=indices,
                                         aux=cfg.aux)
        elif cfg.scheme == "overall":
            pixel = overall_loss(outputs, targets, annotated, cfg.alpha, cfg.overall_reading, strategy,
                                 detach_biased=cfg.strategy == "bias_only")
            debias_loss = LossResult(pixel, {"overall_ce": pixel}, [])
        else:
            debiased = debiased_outputs(outputs, cfg.alpha, cfg.scheme, strategy, cfg.aux,
                                        detach_biased=cfg.strategy == "bias_only")
            debias_loss = self.criterion(debiased, targets, annotated, indices=indices, aux=cfg.aux)
        fit_biased = cfg.strategy in ("bias_only", "ensemble")
        if fit_biased:
            biased_out = dict(outputs["biased"], active=outputs["active"], query_marker=outputs["query_marker"])
            biased_loss = self.criterion(biased_out, targets, annotated, indices=vanilla.indices)
        terms = {"vanilla_total": vanilla.total.detach(), "debias_total": debias_loss.total.detach()}
        terms.update({f"debias/{k}": v for k, v in debias_loss.terms.items()})
        if fit_biased:
            # The vanilla branch learns through the debiased (or ensemble) logits only; its plain loss is reported.
            terms.update({k: v.detach() for k, v in vanilla.terms.items()})
            terms.update({f"biased/{k}": v for k, v in biased_loss.terms.items()})
            total = biased_loss.total + cfg.weight * debias_loss.total
        else:
            terms.update(vanilla.terms)
            total = vanilla.total + cfg.weight * debias_loss.total
        return LossResult(total, terms, vanilla.indices)


# combine and DebiasConfig live in coavs.inference; README shows them imported from here.
__all__ = ["DebiasConfig", "DebiasObjective", "combine", "debiased_outputs", "labels_from_targets", "overall_loss",
           "overall_log_probs", "overall_maps"]
