"""Supplementary A.1: mIoU as a function of the sounding objects' area, and the 30–40 % rescaling intervention.

:func:`area_analysis` consumes prediction batches (``coavs.eval.runner.predict_batches``: ``pred_labels``,
``fg_score``, ``labels``, ``annotated``, ``clip_index``, ``frame_index``, ``uid``) and groups the annotated frames
by the fraction of the frame their sounding objects cover. Given the batches of the same model on the rescaled
frames (:class:`coavs.analysis.rescale.RescaledDataset`), it scores those too, grouped by the *original* area bin:
the gap between the two curves is what object area alone costs.

Outputs (:func:`write_area_outputs`):

- ``area.csv``: one row per (condition, bin): ``condition`` (``original`` or ``rescaled``), ``bin`` (``"10-20%"``,
  ``"none"`` for frames without a sounding object, ``"all"``), ``area_lo``/``area_hi``, then the metrics of
  :class:`coavs.analysis.stats.GroupedMetrics` (``frames``, ``mean_area`` — the achieved area for rescaled rows —,
  ``binary_miou``, ``binary_fscore``, ``binary_iou_std``, ``semantic_*`` for multi-class data);
- ``area_frames.csv``: per frame ``uid``, ``frame``, ``area``, ``iou`` (and ``rescaled_area``, ``zoom``,
  ``rescaled_iou``, ``rescaled_object_area`` — the mean area of one sounding object after the per-object
  rescaling of A.1);
- ``area_classes.csv`` (multi-class data): per class its mean area over the frames that show it and its IoU/F
  over the whole set (the points of the paper's Figure A1a);
- ``area.png``: (a) per class, (b) per frame with a fitted quadratic (red), the binned mIoU (blue) and the
  rescaled mIoU per original bin (green).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from coavs.analysis import plots
from coavs.analysis.common import num_semantic_classes
from coavs.analysis.rescale import RescaledDataset
from coavs.analysis.stats import GroupedMetrics, area_bin_index, area_bin_label, binary_frame_iou, sounding_area
from coavs.analysis.tables import write_csv
from coavs.eval.metrics import SemanticAVSMetrics
from coavs.eval.runner import predict_batches

DEFAULT_EDGES = (0.0, 0.05, 0.10, 0.20, 0.30, 0.40, 0.50, 0.70, 1.0)
ALL = "all"


def annotated_frames(batch: dict) -> dict:
    """The annotated frames of a prediction batch (tensors on the CPU)."""
    keep = batch["annotated"].bool().cpu()
    rows = keep.nonzero().flatten()
    out = {}
    for key in ("pred_labels", "fg_score", "labels", "clip_index", "frame_index", "zoom", "object_area"):
        if key in batch and batch[key] is not None:
            out[key] = batch[key].detach().cpu().index_select(0, rows)
    out["uid"] = [batch["uid"][i] for i in rows.tolist()]
    return out


@dataclass
class AreaResult:
    """Everything :func:`write_area_outputs` writes (see the module docstring)."""

    edges: tuple[float, ...]
    num_classes: int | None
    rows: list[dict] = field(default_factory=list)
    frames: list[dict] = field(default_factory=list)
    classes: list[dict] = field(default_factory=list)
    target: tuple[float, float] | None = None


def _bin_rows(metrics: GroupedMetrics, edges, condition: str) -> list[dict]:
    order = [-1, *range(len(edges) - 1), ALL]
    rows = []
    for row in metrics.rows(order):
        key = row.pop("group")
        lo = edges[key] if isinstance(key, int) and key >= 0 else (0.0 if key == -1 else edges[0])
        hi = edges[key + 1] if isinstance(key, int) and key >= 0 else (0.0 if key == -1 else edges[-1])
        label = ALL if key == ALL else area_bin_label(key, edges)
        rows.append({"condition": condition, "bin": label, "area_lo": lo, "area_hi": hi, **row})
    return rows


def area_analysis(batches, num_classes: int | None, edges=DEFAULT_EDGES, rescaled_batches=None,
                  class_names: tuple[str, ...] | None = None, target=None) -> AreaResult:
    """Group annotated frames by sounding area (``edges``: bin edges of the area fraction) and score each bin.

    ``num_classes``: classes incl. background for the semantic metrics (None for binary data).
    ``rescaled_batches``: predictions on the rescaled frames (same clips), scored per original bin.
    """
    edges = tuple(float(e) for e in edges)
    original = GroupedMetrics(num_classes)
    frames: dict[tuple[int, int], dict] = {}
    per_class = SemanticAVSMetrics(num_classes) if num_classes is not None else None
    class_area = np.zeros(num_classes or 0, dtype=np.float64)
    class_count = np.zeros(num_classes or 0, dtype=np.int64)
    for batch in batches:
        b = annotated_frames(batch)
        if not b["uid"]:
            continue
        area = sounding_area(b["labels"])
        bins = area_bin_index(area, edges).tolist()
        original.update(bins, b["fg_score"], b["labels"], b.get("pred_labels"), area)
        original.update([ALL] * len(bins), b["fg_score"], b["labels"], b.get("pred_labels"), area)
        ious = binary_frame_iou(b["fg_score"], b["labels"])
        for i, uid in enumerate(b["uid"]):
            key = (int(b["clip_index"][i]), int(b["frame_index"][i]))
            frames[key] = {"uid": uid, "frame": key[1], "area": float(area[i]), "bin": bins[i],
                           "iou": float(ious[i])}
        if per_class is not None:
            per_class.update(b["pred_labels"], b["labels"])
            labels = b["labels"].flatten(1)
            counts = torch.stack([torch.bincount(row[row < num_classes], minlength=num_classes) for row in labels])
            fractions = counts.double() / labels.shape[1]
            class_area += fractions.sum(0).numpy()
            class_count += (counts > 0).sum(0).numpy()

    result = AreaResult(edges, num_classes, target=None if target is None else tuple(target))
    result.rows = _bin_rows(original, edges, "original")
    if rescaled_batches is not None:
        rescaled = GroupedMetrics(num_classes)
        for batch in rescaled_batches:
            b = annotated_frames(batch)
            if not b["uid"]:
                continue
            keys = [(int(c), int(f)) for c, f in zip(b["clip_index"], b["frame_index"])]
            missing = [k for k in keys if k not in frames]
            if missing:
                raise ValueError(f"rescaled batches hold frames the original batches do not: {missing[:3]}")
            bins = [frames[k]["bin"] for k in keys]
            area = sounding_area(b["labels"])
            rescaled.update(bins, b["fg_score"], b["labels"], b.get("pred_labels"), area)
            rescaled.update([ALL] * len(bins), b["fg_score"], b["labels"], b.get("pred_labels"), area)
            ious = binary_frame_iou(b["fg_score"], b["labels"])
            zoom = b.get("zoom")
            per_object = b.get("object_area")  # the achieved area of one object (per-object rescaling, A.1)
            for i, k in enumerate(keys):
                frames[k].update(rescaled_area=float(area[i]), rescaled_iou=float(ious[i]),
                                 zoom=float(zoom[i]) if zoom is not None else math.nan)
                if per_object is not None:
                    frames[k]["rescaled_object_area"] = float(per_object[i])
        result.rows += _bin_rows(rescaled, edges, "rescaled")
    result.frames = [{k: v for k, v in row.items() if k != "bin"} for row in frames.values()]
    if per_class is not None:
        stats = per_class.compute()
        names = class_names or tuple(str(c) for c in range(num_classes))
        for c in range(1, num_classes):
            if stats["class_frames"][c] == 0 and class_count[c] == 0:
                continue
            result.classes.append({
                "class": c, "name": names[c] if c < len(names) else str(c), "frames": int(class_count[c]),
                "mean_area": class_area[c] / class_count[c] if class_count[c] else math.nan,
                "iou": stats["per_class_iou"][c], "fscore": stats["per_class_fscore"][c]})
    return result


# ------------------------------------------------------------------------------------------------- output
AREA_COLUMNS = ["condition", "bin", "area_lo", "area_hi", "frames", "mean_area", "binary_miou", "binary_fscore",
                "binary_iou_std", "semantic_miou_present", "semantic_fscore_present"]


def write_area_outputs(result: AreaResult, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """``area.csv``, ``area_frames.csv``, ``area_classes.csv`` (multi-class) and ``area.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    columns = [c for c in AREA_COLUMNS if result.num_classes is not None or not c.startswith("semantic")]
    paths = {"table": write_csv(result.rows, out_dir / "area.csv", columns),
             "frames": write_csv(result.frames, out_dir / "area_frames.csv")}
    if result.classes:
        paths["classes"] = write_csv(result.classes, out_dir / "area_classes.csv")
    paths["figure"] = plot_area(result, out_dir / "area.png", title)
    return paths


def plot_area(result: AreaResult, path: str | Path, title: str = "") -> Path:
    """The A.1 figure (see the module docstring)."""
    panels = 2 if result.classes else 1
    fig, axes = plots.figure(5.4 * panels, 4.2, 1, panels, layout="constrained")
    if result.classes:
        ax = axes[0, 0]
        x = np.array([c["mean_area"] for c in result.classes]) * 100
        y = np.array([c["iou"] for c in result.classes]) * 100
        ax.scatter(x, y, color=plots.MAIN_COLOUR, zorder=3)
        for cls, xi, yi in zip(result.classes, x, y):
            ax.annotate(cls["name"], (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
        fit = plots.polynomial_fit(x, y, degree=1)
        if fit is not None:
            ax.plot(*fit, color=plots.FIT_COLOUR, label="linear fit")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
        ax.set_xlabel("mean area of the class where it sounds (% of frame)")
        ax.set_ylabel("class IoU over the set (%)")
        ax.set_title("(a) per class")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)

    ax = axes[0, panels - 1]
    points = [f for f in result.frames if f["area"] > 0]
    x = np.array([f["area"] for f in points]) * 100
    y = np.array([f["iou"] for f in points]) * 100
    ax.scatter(x, y, s=6, alpha=0.25, color="grey", label="frames", zorder=1)
    fit = plots.polynomial_fit(x, y, degree=2)
    if fit is not None:
        ax.plot(*fit, color=plots.FIT_COLOUR, label="quadratic fit (frames)", zorder=2)
    for condition, colour, name in (("original", plots.MAIN_COLOUR, "mIoU per area bin"),
                                    ("rescaled", plots.INTERVENTION_COLOUR, _rescaled_name(result.target))):
        rows = [r for r in result.rows if r["condition"] == condition and r["bin"] not in (ALL, "none")]
        if not rows:
            continue
        # rescaled rows sit at their original bin's mean area, so both curves share the x of a bin
        at = {r["bin"]: r["mean_area"] for r in result.rows if r["condition"] == "original"}
        bx = np.array([at[r["bin"]] for r in rows]) * 100
        by = np.array([r["binary_miou"] for r in rows]) * 100
        ax.plot(bx, by, "o-", color=colour, label=name, zorder=3)
        if condition == "original":
            for r, xi, yi in zip(rows, bx, by):
                ax.annotate(f"n={r['frames']}", (xi, yi), textcoords="offset points", xytext=(0, -11),
                            ha="center", fontsize=7, color=colour)
    ax.set_xlabel("area of the sounding objects (% of frame)")
    ax.set_ylabel("IoU of the sounding pixels (%)")
    ax.set_title("(b) per frame, binned" if panels == 2 else "per frame, binned")
    ax.set_ylim(-2, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    if title:
        fig.suptitle(title)
    return plots.save(fig, path)


def _rescaled_name(target) -> str:
    if target is None:
        return "rescaled frames, by original bin"
    lo, hi = target
    return f"objects rescaled to {100 * lo:.0f}-{100 * hi:.0f}%, by original bin"


# ------------------------------------------------------------------------------------------------ running
def run_area(model, dataset, out_dir, *, settings: dict, edges=DEFAULT_EDGES, target=(0.30, 0.40),
             rescale: bool = True, batch_size: int = 4, device="cpu", max_clips: int | None = None,
             progress: bool = False, title: str = "") -> tuple[AreaResult, dict[str, Path]]:
    """Predict ``dataset`` (and its rescaled frames, unless ``rescale`` is False) with ``model`` and write the A.1
    outputs. ``settings``: inference keyword arguments of ``predict_batches`` (mode, biased, alpha, scheme,
    strategy)."""
    common = dict(batch_size=batch_size, device=device, max_clips=max_clips, progress=progress, **settings)
    rescaled = None
    if rescale:
        rescaled = predict_batches(model, RescaledDataset(dataset, target), **common)
    result = area_analysis(predict_batches(model, dataset, **common), num_semantic_classes(dataset), edges,
                           rescaled, tuple(dataset.class_names), target if rescale else None)
    return result, write_area_outputs(result, out_dir, title)
