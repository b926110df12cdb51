"""Matplotlib helpers for the analysis figures: the Agg backend (no display), saving, fitted curves, overlays.

Import this module before ``matplotlib.pyplot``: it selects the Agg backend, so figures render on machines
without a display (servers, CI) and never open a window.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: figures are only written to files

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from PIL import Image

from coavs.data.avsbench import palette  # noqa: E402

DPI = 110
FIT_COLOUR = "tab:red"
MAIN_COLOUR = "tab:blue"
COUNT_COLOUR = "tab:orange"
INTERVENTION_COLOUR = "tab:green"

plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
                     "figure.dpi": DPI})


def figure(width: float, height: float, rows: int = 1, cols: int = 1, **kwargs):
    """``(fig, axes)`` of ``width × height`` inches (``axes`` always a 2-D array)."""
    return plt.subplots(rows, cols, figsize=(width, height), squeeze=False, **kwargs)


def save(fig, path: str | Path, dpi: int = DPI, palette_colours: int | None = None) -> Path:
    """Write ``fig`` as PNG (tight bounding box) and close it. ``palette_colours``: store the PNG with an
    adaptive palette of that many colours (figures made of photos compress 3x smaller, with no visible change
    at this size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette_colours is None:
        fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    else:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
        image = Image.open(buffer).convert("RGB")
        image.quantize(palette_colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, format="PNG", optimize=True)
    plt.close(fig)
    return path


def polynomial_fit(x, y, degree: int = 2, points: int = 100):
    """``(xs, ys)`` of a least-squares polynomial of ``degree`` through the finite points (lower degree when
    there are few distinct x), or None when fewer than two distinct x remain."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    distinct = np.unique(x).size
    if distinct < 2:
        return None
    degree = min(degree, distinct - 1)
    coeffs = np.polyfit(x, y, degree)
    xs = np.linspace(x.min(), x.max(), points)
    return xs, np.polyval(coeffs, xs)


def label_colours(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` float RGB in [0, 1] of the VOC palette (class 0 = black background)."""
    return palette(max(num_classes, 1))[:num_classes].astype(np.float64) / 255.0


def colour_labels(labels: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """``[H,W,3]`` float image of a label map (unannotated pixels grey)."""
    colours = label_colours(max(num_classes, int(labels[labels != ignore_index].max(initial=0)) + 1))
    out = colours[np.clip(labels, 0, len(colours) - 1)]
    out[labels == ignore_index] = 0.5
    return out


def overlay(frame: np.ndarray, mask: np.ndarray, colour=(1.0, 0.1, 0.1), strength: float = 0.6) -> np.ndarray:
    """``frame [H,W,3]`` (float in [0,1]) tinted by ``mask [H,W]`` (values in [0,1]: probability or 0/1)."""
    weight = strength * np.clip(mask, 0.0, 1.0)[..., None]
    return np.clip(frame * (1 - weight) + np.asarray(colour, dtype=np.float64) * weight, 0.0, 1.0)
