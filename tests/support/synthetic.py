"""A tiny synthetic audio-visual batch for model tests: coloured rectangles, one sounding class per frame.

Class ``c`` (1 … K-1) has its own colour and its own VGGish-like audio prototype; a silent distractor of another
class is drawn too (label 0), so the audio decides which object is the target.
"""

from __future__ import annotations

import torch


def make_batch(n: int = 4, size: int = 64, num_classes: int = 6, seed: int = 0, audio: str = "vggish"):
    """→ ``(frames [n,3,size,size], audio, labels [n,size,size] long)``."""
    gen = torch.Generator().manual_seed(seed)
    colours = torch.rand(num_classes, 3, generator=torch.Generator().manual_seed(123))
    prototypes = torch.randn(num_classes, 128, generator=torch.Generator().manual_seed(321))
    frames = torch.full((n, 3, size, size), 0.5)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    audio_rows = []
    for i in range(n):
        sounding, silent = (torch.randperm(num_classes - 1, generator=gen)[:2] + 1).tolist()
        for cls, is_sounding in ((silent, False), (sounding, True)):
            h, w = torch.randint(size // 4, size // 2, (2,), generator=gen).tolist()
            y = torch.randint(0, size - h, (1,), generator=gen).item()
            x = torch.randint(0, size - w, (1,), generator=gen).item()
            frames[i, :, y:y + h, x:x + w] = colours[cls][:, None, None]
            labels[i, y:y + h, x:x + w] = cls if is_sounding else 0
        audio_rows.append(prototypes[sounding] + 0.1 * torch.randn(128, generator=gen))
    feats = torch.stack(audio_rows)
    if audio == "vggish":
        return frames, feats, labels
    if audio == "logmel":
        return frames, feats.view(n, 1, 2, 64).repeat(1, 1, 48, 1), labels
    if audio == "waveform":
        t = torch.arange(16000) / 16000
        freqs = 200 + 100 * feats[:, :1].abs()
        return frames, torch.sin(2 * torch.pi * freqs * t), labels
    raise ValueError(audio)
