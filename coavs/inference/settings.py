"""The debias settings, one dataclass for every layer: :class:`DebiasConfig` is what training optimises
(``strategy``, ``weight``, ``aux``), what inference combines (``biased_audio``, ``alpha``, ``scheme``,
``overall_reading``; :meth:`DebiasConfig.inference_settings` gives the keyword arguments of
:func:`coavs.eval.runner.evaluate` / ``predict_batches``) and what the training config's ``debias`` section
holds (``strategy: none`` is ``enabled=False``). The ops, below this layer, take only the three values their
kernels need (:class:`coavs.ops.Debias`: ``alpha``, ``scheme``, ``strategy``), which
:func:`coavs.inference.postprocess.postprocess` builds from these settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from coavs.inference.combine import OVERALL_READINGS, logit_strategy, resolve_scheme
from coavs.models.biased import BIASED_AUDIO

STRATEGIES = ("fixed", "uncertainty", "bias_only", "ensemble")  # training strategies (debias.strategy, but none)
TRAIN_SCHEMES = ("auto", "separate", "mask", "class", "overall")


@dataclass
class DebiasConfig:
    """How the biased branch is built and used. ``enabled=False`` trains the vanilla model only."""

    enabled: bool = True
    biased_audio: str = "mute"  # mute | noise | ddpm | random_semantic
    strategy: str = "fixed"  # fixed | uncertainty | bias_only | ensemble
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

    def inference_settings(self) -> dict:
        """Keyword arguments of :func:`coavs.eval.runner.evaluate` and ``predict_batches`` that predict as this
        model was trained: ``biased``, ``alpha``, ``scheme``, ``strategy`` (the inference strategy of the training
        one, :func:`coavs.inference.combine.logit_strategy`) and ``overall_reading``."""
        return {"biased": self.biased_audio, "alpha": self.alpha, "scheme": self.scheme,
                "strategy": logit_strategy(self.strategy), "overall_reading": self.overall_reading}


__all__ = ["DebiasConfig", "STRATEGIES", "TRAIN_SCHEMES"]
