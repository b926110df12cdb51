"""Audio perception: latent semantic markers per frame, ``scores [N,S]`` for :func:`coavs.ops.assign_queries`.

Markers ``0 … C-1``: a multi-label audio classifier on the audio embedding (class probabilities; present at
``≥ threshold``, 0.4). Markers ``C … C+M-1``: k-means clusters fitted on the training set's audio descriptors
(``coavs fit-markers``), one-hot (exactly one cluster is present per frame). ``scores = [probs, one_hot]``.

Precomputed per-clip marker files (the paper's way, ``coavs markers``) are read by :mod:`coavs.data.markers` and
passed to the model as ``marker_scores``; this module is then not asked.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MARKER_FILE_FORMAT = "coavs-kmeans-markers"


# ------------------------------------------------------------------------------------------------- k-means
class KMeansFit(NamedTuple):
    """Cluster centres in standardised descriptor space, and the standardisation (``(x − mean) / std``)."""

    centroids: Tensor  # [M,F]
    mean: Tensor  # [F]
    std: Tensor  # [F]
    inertia: float  # mean squared distance to the nearest centre (standardised space)


def fit_kmeans(features: Tensor, num_clusters: int, iters: int = 100, seed: int = 0, tol: float = 1e-6) -> KMeansFit:
    """Lloyd's k-means with k-means++ seeding on standardised ``features [M,F]`` (float64, deterministic).

    An emptied cluster is re-seeded at the point farthest from its centre.
    """
    if not isinstance(features, Tensor) or features.dim() != 2:
        raise ValueError(f"features must be a 2-D tensor [M,F], got "
                         f"{tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__}")
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or num_clusters < 1:
        raise ValueError(f"num_clusters must be a positive int, got {num_clusters!r}")
    if features.shape[0] < num_clusters:
        raise ValueError(f"k-means needs at least num_clusters = {num_clusters} samples, got {features.shape[0]}")
    x = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-8)
    x = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)

    # k-means++: each next centre drawn with probability proportional to the squared distance.
    centres = x[torch.randint(len(x), (1,), generator=gen)]
    for _ in range(1, num_clusters):
        d2 = torch.cdist(x, centres).pow(2).min(dim=1).values
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
        centres = torch.cat([centres, x[torch.multinomial(probs, 1, generator=gen)]])

    previous = float("inf")
    for _ in range(iters):
        dist = torch.cdist(x, centres).pow(2)
        assign = dist.argmin(dim=1)
        inertia = dist.gather(1, assign[:, None]).mean().item()
        counts = torch.bincount(assign, minlength=num_clusters)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        new = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        for empty in (counts == 0).nonzero().flatten().tolist():
            far = dist.gather(1, assign[:, None]).squeeze(1).argmax()
            new[empty] = x[far]
            assign[far] = empty
        centres = new
        if previous - inertia <= tol * max(previous, 1e-12):
            break
        previous = inertia
    dist = torch.cdist(x, centres).pow(2)
    inertia = dist.min(dim=1).values.mean().item()
    return KMeansFit(centres.float(), mean.float(), std.float(), inertia)


def save_kmeans(path: str | os.PathLike, fit: KMeansFit, descriptor: str) -> Path:
    """Write a marker file (a dict of tensors and strings, loadable with ``weights_only=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"format": MARKER_FILE_FORMAT, "version": 1, "descriptor": descriptor, "centroids": fit.centroids,
                "mean": fit.mean, "std": fit.std, "inertia": fit.inertia}, tmp)
    os.replace(tmp, path)
    return path


def load_kmeans(path: str | os.PathLike) -> tuple[KMeansFit, str]:
    """Read a file written by :func:`save_kmeans` → ``(fit, descriptor kind)``."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != MARKER_FILE_FORMAT:
        raise ValueError(f"{path} is not a coavs k-means marker file (written by `coavs fit-markers`)")
    fit = KMeansFit(data["centroids"].float(), data["mean"].float(), data["std"].float(), float(data["inertia"]))
    return fit, str(data["descriptor"])


# --------------------------------------------------------------------------------------------- perception
class Perceived(NamedTuple):
    scores: Tensor  # [N,S] marker scores in [0,1]
    class_logits: Tensor | None  # [N,C] classifier logits (for its multi-label loss), None without a classifier
    cluster_ids: Tensor | None  # [N] long, None without clusters


class Perception(nn.Module):
    """Embedding ``[N,D]`` (+ descriptor ``[N,F]``) → marker scores ``[N,C+M]``.

    ``class_presence [N,C]`` (training only, optional): teacher forcing — the class markers become
    ``max(prob, presence)``, so every ground-truth class has active queries even while the classifier is
    still wrong; wrongly predicted extra classes stay active and learn "no object".
    """

    def __init__(self, dim: int, num_classes: int, num_clusters: int, descriptor_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.num_clusters = num_clusters
        self.classifier = (nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, num_classes))
                           if num_classes else None)
        self.register_buffer("centroids", torch.zeros(num_clusters, descriptor_dim))
        self.register_buffer("descriptor_mean", torch.zeros(descriptor_dim))
        self.register_buffer("descriptor_std", torch.ones(descriptor_dim))
        self.register_buffer("clusters_fitted", torch.tensor(False))
        self._fitted = False
        self._warned = False
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_fitted())

    def _sync_fitted(self) -> None:
        self._fitted = bool(self.clusters_fitted)

    @property
    def fitted(self) -> bool:
        """Whether the cluster centres were set (always True without clusters)."""
        return self.num_clusters == 0 or self._fitted

    def set_clusters(self, fit: KMeansFit) -> None:
        """Install k-means centres (from :func:`fit_kmeans` or :func:`load_kmeans`)."""
        if tuple(fit.centroids.shape) != tuple(self.centroids.shape):
            raise ValueError(f"cluster centres must be {tuple(self.centroids.shape)} (num_clusters, descriptor "
                             f"dim) for this model, got {tuple(fit.centroids.shape)}")
        with torch.no_grad():
            self.centroids.copy_(fit.centroids)
            self.descriptor_mean.copy_(fit.mean)
            self.descriptor_std.copy_(fit.std)
            self.clusters_fitted.fill_(True)
        self._fitted = True

    def cluster_ids(self, descriptor: Tensor) -> Tensor:
        """Nearest centre of each descriptor ``[N,F]`` → ``[N]`` long."""
        x = (descriptor.float() - self.descriptor_mean) / self.descriptor_std
        return torch.cdist(x, self.centroids.float()).argmin(dim=1)

    def forward(self, embedding: Tensor, descriptor: Tensor | None = None,
                class_presence: Tensor | None = None) -> Perceived:
        parts, class_logits, ids = [], None, None
        if self.classifier is not None:
            class_logits = self.classifier(embedding)
            probs = torch.sigmoid(class_logits.float())
            if class_presence is not None:
                probs = torch.maximum(probs, class_presence.to(probs.dtype))
            parts.append(probs)
        if self.num_clusters:
            if descriptor is None:
                raise ValueError("this model has k-means markers: Perception needs the audio descriptor")
            if not self._fitted and not torch.compiler.is_compiling() and not self._warned:
                warnings.warn("k-means markers are not fitted (run `coavs fit-markers` and load the file); every "
                              "frame falls into cluster 0")
                self._warned = True
            ids = self.cluster_ids(descriptor)
            parts.append(F.one_hot(ids, self.num_clusters).float())
        return Perceived(torch.cat(parts, dim=1), class_logits, ids)
