"""The debias objective and inference-time combination of the vanilla and biased branches.

Training (``DebiasConfig.strategy``):
- ``fixed``:       ``L(vanilla) + λ·L(debias_logits(vanilla, biased, α))``, ``x' = (1+α)·x − α·x_b``;
- ``uncertainty``: the same with α scaled by the biased branch's confidence (``debias_logits``' strategy);
- ``bias_only``:   ``L(biased) + λ·L(debias_logits(vanilla, sg(biased), α))``: the biased branch alone is fit
  to the targets (so it holds the visual prior), and the vanilla branch learns only through the debiased
  logits, i.e. the complement of what the bias explains (``sg`` = stop-gradient).
Every debiased loss reuses the vanilla branch's matching (DESIGN: "with the same matching").

Inference (:func:`combine`): ``vanilla``, ``debias`` (the debiased logits) or ``ensemble`` (the average of the
vanilla and the debiased logits).

Bias-only audio (``mute``, ``noise``, ``ddpm``, ``random_semantic``) is produced inside the model
(:mod:`coavs.models.biased`, re-exported here) so that its branch is batched with the vanilla one.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import coavs.ops as ops
from coavs.models.biased import BIASED_AUDIO, DiffusionSchedule, biased_embedding  # noqa: F401  (re-export)
from coavs.training.losses import LossResult, SetCriterion

STRATEGIES = ("fixed", "uncertainty", "bias_only")
TRAIN_SCHEMES = ("separate", "mask", "class")
INFERENCE_MODES = ("vanilla", "debias", "ensemble")


@dataclass
class DebiasConfig:
    """How the biased branch is built and used. ``enabled=False`` trains the vanilla model only."""

    enabled: bool = True
    biased_audio: str = "mute"  # mute | noise | ddpm | random_semantic
    strategy: str = "fixed"  # fixed | uncertainty | bias_only
    weight: float = 10.0  # λ (the reference code uses 10)
    alpha: float = 1.0  # α of debias_logits (1 → 2x − x_b, the reference code)
    scheme: str = "separate"  # separate (semantic AVS) | mask (binary AVS, no background class) | class
    aux: bool = False  # also debias every auxiliary prediction (the reference code debiases the final one only)

    def __post_init__(self):
        if self.biased_audio not in BIASED_AUDIO:
            raise ValueError(f"DebiasConfig.biased_audio must be one of {BIASED_AUDIO}, got {self.biased_audio!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"DebiasConfig.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.scheme not in TRAIN_SCHEMES:
            raise ValueError(f"DebiasConfig.scheme must be one of {TRAIN_SCHEMES} for training (the 'overall' scheme "
                             f"gives per-pixel scores, which a set loss cannot use), got {self.scheme!r}")
        if not (self.weight >= 0 and self.alpha >= 0):
            raise ValueError(f"DebiasConfig.weight and alpha must be >= 0, got {self.weight}, {self.alpha}")


def _debias_pair(vanilla: dict, biased: dict, alpha: float, scheme: str, strategy: str, detach_biased: bool) -> dict:
    mask_b, cls_b = biased["pred_masks"], biased["pred_logits"]
    if detach_biased:
        mask_b, cls_b = mask_b.detach(), cls_b.detach()
    out = ops.debias_logits(vanilla["pred_masks"], vanilla["pred_logits"], mask_b, cls_b, alpha=alpha,
                            scheme=scheme, strategy=strategy)
    return {"pred_masks": out.mask, "pred_logits": out.cls}


def debiased_outputs(outputs: dict, alpha: float = 1.0, scheme: str = "separate", strategy: str = "fixed",
                     aux: bool = False, detach_biased: bool = False) -> dict:
    """The debiased prediction from a model output that holds ``"biased"``: ``pred_logits``, ``pred_masks``
    (and ``aux_outputs`` when ``aux``), with the vanilla branch's ``active``/``gate``/``query_marker``."""
    if "biased" not in outputs:
        raise ValueError("outputs hold no biased branch: call the model with biased='mute' (or another kind)")
    biased = outputs["biased"]
    result = _debias_pair(outputs, biased, alpha, scheme, strategy, detach_biased)
    result["aux_outputs"] = ([_debias_pair(v, b, alpha, scheme, strategy, detach_biased)
                              for v, b in zip(outputs["aux_outputs"], biased["aux_outputs"])] if aux else [])
    for key in ("active", "gate", "query_marker"):
        if key in outputs:
            result[key] = outputs[key]
    return result


def combine(outputs: dict, mode: str = "debias", alpha: float = 1.0, scheme: str = "separate",
            strategy: str = "fixed") -> tuple[Tensor, Tensor]:
    """Inference logits ``(pred_masks, pred_logits)``: ``vanilla``, ``debias`` or ``ensemble`` (the average of
    the vanilla and debiased logits)."""
    if mode not in INFERENCE_MODES:
        raise ValueError(f"mode must be one of {INFERENCE_MODES}, got {mode!r}")
    if mode == "vanilla":
        return outputs["pred_masks"], outputs["pred_logits"]
    debiased = debiased_outputs(outputs, alpha, scheme, strategy)
    if mode == "debias":
        return debiased["pred_masks"], debiased["pred_logits"]
    return ((outputs["pred_masks"] + debiased["pred_masks"]) / 2,
            (outputs["pred_logits"] + debiased["pred_logits"]) / 2)


class DebiasObjective:
    """``objective(outputs, targets, annotated)`` → :class:`LossResult` of the whole training loss.

    ``terms`` holds the vanilla terms, ``debias/<term>`` for the debiased loss, ``biased/<term>`` for
    ``bias_only``, and ``vanilla_total``/``debias_total``. With ``config.enabled`` False (or outputs without a
    biased branch and strategy ``fixed``/``uncertainty``) it is the plain set loss.
    """

    def __init__(self, criterion: SetCriterion, config: DebiasConfig | None = None):
        self.criterion = criterion
        self.config = config or DebiasConfig()
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
        debiased = debiased_outputs(outputs, cfg.alpha, cfg.scheme,
                                    "uncertainty" if cfg.strategy == "uncertainty" else "fixed", cfg.aux,
                                    detach_biased=cfg.strategy == "bias_only")
        debias_loss = self.criterion(debiased, targets, annotated, indices=indices, aux=cfg.aux)
        if cfg.strategy == "bias_only":
            biased_out = dict(outputs["biased"], active=outputs["active"], query_marker=outputs["query_marker"])
            biased_loss = self.criterion(biased_out, targets, annotated, indices=vanilla.indices)
        terms = {"vanilla_total": vanilla.total.detach(), "debias_total": debias_loss.total.detach()}
        terms.update({f"debias/{k}": v for k, v in debias_loss.terms.items()})
        if cfg.strategy == "bias_only":
            # The vanilla branch learns through the debiased logits only; its plain loss is a reported metric.
            terms.update({k: v.detach() for k, v in vanilla.terms.items()})
            terms.update({f"biased/{k}": v for k, v in biased_loss.terms.items()})
            total = biased_loss.total + cfg.weight * debias_loss.total
        else:
            terms.update(vanilla.terms)
            total = vanilla.total + cfg.weight * debias_loss.total
        return LossResult(total, terms, vanilla.indices)
