"""The debias objective and inference-time combination of the vanilla and biased branches.

Training (``DebiasConfig.strategy``):
- ``fixed``:       ``L(vanilla) + λ·L(debias_logits(vanilla, biased, α))``, ``x' = (1+α)·x − α·x_b``;
- ``uncertainty``: the same with α scaled by the biased branch's confidence (``debias_logits``' strategy);
- ``bias_only``:   ``L(biased) + λ·L(debias_logits(vanilla, sg(biased), α))``: the biased branch alone is fit
  to the targets (so it holds the visual prior), and the vanilla branch learns only through the debiased
  logits, i.e. the complement of what the bias explains (``sg`` = stop-gradient).
Every debiased loss reuses the vanilla branch's matching (DESIGN: "with the same matching").

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

Inference (:func:`combine`): ``vanilla``, ``debias`` (the debiased logits) or ``ensemble`` (the average of the
vanilla and the debiased logits).

Bias-only audio (``mute``, ``noise``, ``ddpm``, ``random_semantic``) is produced inside the model
(:mod:`coavs.models.biased`, re-exported here) so that its branch is batched with the vanilla one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

import coavs.ops as ops
from coavs.models.biased import BIASED_AUDIO, DiffusionSchedule, biased_embedding  # noqa: F401  (re-export)
from coavs.training.losses import LossResult, SetCriterion

STRATEGIES = ("fixed", "uncertainty", "bias_only")
TRAIN_SCHEMES = ("auto", "separate", "mask", "class", "overall")
OVERALL_READINGS = ("score", "product")
_EPS = 1e-4
INFERENCE_MODES = ("vanilla", "debias", "ensemble")


@dataclass
class DebiasConfig:
    """How the biased branch is built and used. ``enabled=False`` trains the vanilla model only."""

    enabled: bool = True
    biased_audio: str = "mute"  # mute | noise | ddpm | random_semantic
    strategy: str = "fixed"  # fixed | uncertainty | bias_only
    weight: float = 10.0  # λ (the reference code uses 10)
    alpha: float = 1.0  # α of debias_logits (1 → 2x − x_b, the reference code)
    scheme: str = "auto"  # auto (from the dataset: mask for binary AVS, separate for semantic) | separate | mask |
    #                       class | overall (per-pixel; see overall_reading)
    overall_reading: str = "score"  # score: Σ softmax(c)·σ(m) | product: Σ_q m·c, the literal Eq. (1)
    aux: bool = False  # also debias every auxiliary prediction (the reference code debiases the final one only)

    def __post_init__(self):
        if self.biased_audio not in BIASED_AUDIO:
            raise ValueError(f"DebiasConfig.biased_audio must be one of {BIASED_AUDIO}, got {self.biased_audio!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"DebiasConfig.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.scheme not in TRAIN_SCHEMES:
            raise ValueError(f"DebiasConfig.scheme must be one of {TRAIN_SCHEMES}, got {self.scheme!r}")
        if self.overall_reading not in OVERALL_READINGS:
            raise ValueError(f"DebiasConfig.overall_reading must be one of {OVERALL_READINGS}, got "
                             f"{self.overall_reading!r}")
        if not (self.weight >= 0 and self.alpha >= 0):
            raise ValueError(f"DebiasConfig.weight and alpha must be >= 0, got {self.weight}, {self.alpha}")

    def resolved(self, binary: bool) -> "DebiasConfig":
        """This config with ``scheme: auto`` resolved for a binary (S4/MS3) or semantic dataset."""
        return dataclasses.replace(self, scheme=resolve_scheme(self.scheme, binary))


def resolve_scheme(scheme: str, binary: bool) -> str:
    """``auto`` → ``mask`` for binary AVS (supplementary B.2: the mask logits only, no background), ``separate``
    for semantic AVS; any other scheme as given."""
    if scheme == "auto":
        return "mask" if binary else "separate"
    return scheme


def overall_maps(mask: Tensor, cls: Tensor, mask_b: Tensor, cls_b: Tensor, alpha: float = 1.0,
                 reading: str = "score", strategy: str = "fixed", gate: Tensor | None = None,
                 gate_b: Tensor | None = None) -> Tensor:
    """The debiased per-pixel class map ``[B,K,h,w]`` at the mask resolution under the ``overall`` scheme
    (see the module docstring for the two readings). ``gate`` / ``gate_b`` ``[B,Q]``: query gates multiplied into
    each branch's masks (None: none). ``uncertainty`` scales α by the biased map's confidence (``score``:
    ``|2·clamp(S_b,0,1) − 1|``; ``product``: the biased branch's top softmax probability), without gradient."""
    if reading not in OVERALL_READINGS:
        raise ValueError(f"reading must be one of {OVERALL_READINGS}, got {reading!r}")
    uncertain = strategy == "uncertainty"

    def one(m, c, g):
        if reading == "score":
            s = torch.sigmoid(m.float())
            if g is not None:
                s = s * g.float()[:, :, None, None]
            return torch.einsum("bqk,bqhw->bkhw", torch.softmax(c.float(), dim=-1)[..., :-1], s)
        m = m.float() if g is None else m.float() * g.float()[:, :, None, None]
        return torch.einsum("bqk,bqhw->bkhw", c.float()[..., :-1], m)

    x, xb = one(mask, cls, gate), one(mask_b, cls_b, gate_b if gate_b is not None else gate)
    if uncertain:
        conf = ((2 * xb.detach().clamp(0, 1) - 1).abs() if reading == "score"
                else torch.softmax(xb.detach(), dim=1).amax(dim=1, keepdim=True))
        a = alpha * conf
    else:
        a = alpha
    return (1 + a) * x - a * xb


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
        strategy = "uncertainty" if cfg.strategy == "uncertainty" else "fixed"
        if cfg.scheme == "overall":
            pixel = overall_loss(outputs, targets, annotated, cfg.alpha, cfg.overall_reading, strategy,
                                 detach_biased=cfg.strategy == "bias_only")
            debias_loss = LossResult(pixel, {"overall_ce": pixel}, [])
        else:
            debiased = debiased_outputs(outputs, cfg.alpha, cfg.scheme, strategy, cfg.aux,
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
