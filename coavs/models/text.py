"""A bag-of-words text encoder: the same model, prompted by words instead of sound (the paper's D.1: AVS and
Ref-VOS are both cross-modal guided segmentation)."""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn


class BagOfWordsEncoder(nn.Module):
    """Token ids ``[N,L]`` (0 = padding) → ``[N,D]``: mean of word embeddings, then a 2-layer MLP.

    ``encode(sentences)`` turns strings into padded id tensors with the fixed ``vocabulary`` (unknown words
    are dropped). It has no ``descriptor`` (use ``num_clusters=0``) and no ``noise_like`` (use the ``mute``
    or ``ddpm`` biased branch).
    """

    def __init__(self, vocabulary: list[str], dim: int):
        super().__init__()
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary has repeated words")
        self.vocabulary = list(vocabulary)
        self.index = {w: i + 1 for i, w in enumerate(self.vocabulary)}
        self.embed = nn.EmbeddingBag(len(vocabulary) + 1, dim, mode="mean", padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def encode(self, sentences: list[str], device=None) -> Tensor:
        rows = [[self.index[w] for w in re.findall(r"[a-z]+", s.lower()) if w in self.index] for s in sentences]
        width = max(1, max((len(r) for r in rows), default=1))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return ids.to(device)

    def check_input(self, ids: Tensor) -> None:
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(f"text prompts must be token ids [N,L] (long), got {tuple(ids.shape)} {ids.dtype}")

    def forward(self, ids: Tensor) -> Tensor:
        return self.mlp(self.embed(ids))
