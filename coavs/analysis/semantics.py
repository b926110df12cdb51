"""Supplementary A.2: mIoU against the number of sounding semantics and of sounding instances per frame.

:func:`semantics_analysis` consumes prediction batches (as :func:`coavs.analysis.area.area_analysis`) and groups
the annotated frames twice: by the number of distinct sounding classes in the ground truth, and by the number of
sounding instances (connected components per class; see :mod:`coavs.analysis.stats`).

Outputs (:func:`write_semantics_outputs`):

- ``semantics.csv``: one row per (``by``, ``count``): ``by`` is ``semantics`` or ``instances``, ``count`` the
  number (``all`` for every frame), then the metrics of :class:`coavs.analysis.stats.GroupedMetrics`;
- ``semantics_frames.csv``: per frame ``uid``, ``frame``, ``semantics``, ``instances``, ``area``, ``iou``;
- ``semantics.png``: the paper's Figure A2 — per count, the mean per-frame IoU (blue line) with ± one standard
  deviation (shade), the frame count (orange bars, right axis), and for multi-class data the semantic mIoU over
  the classes present (dashed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coavs.analysis import plots
from coavs.analysis.area import ALL, annotated_frames
from coavs.analysis.common import num_semantic_classes
from coavs.analysis.stats import GroupedMetrics, binary_frame_iou, frame_statistics
from coavs.analysis.tables import write_csv
from coavs.eval.runner import predict_batches

GROUPINGS = ("semantics", "instances")


@dataclass
class SemanticsResult:
    """Everything :func:`write_semantics_outputs` writes."""

    num_classes: int | None
    rows: list[dict] = field(default_factory=list)
    frames: list[dict] = field(default_factory=list)


def semantics_analysis(batches, num_classes: int | None, min_instance_fraction: float = 0.0005) -> SemanticsResult:
    """Score the annotated frames grouped by sounding semantics and instances per frame."""
    grouped = {by: GroupedMetrics(num_classes) for by in GROUPINGS}
    result = SemanticsResult(num_classes)
    for batch in batches:
        b = annotated_frames(batch)
        if not b["uid"]:
            continue
        stats = frame_statistics(b["labels"], min_instance_fraction)
        counts = {"semantics": stats.semantics.tolist(), "instances": stats.instances.tolist()}
        for by, metrics in grouped.items():
            metrics.update(counts[by], b["fg_score"], b["labels"], b.get("pred_labels"), stats.area)
            metrics.update([ALL] * len(b["uid"]), b["fg_score"], b["labels"], b.get("pred_labels"), stats.area)
        ious = binary_frame_iou(b["fg_score"], b["labels"])
        for i, uid in enumerate(b["uid"]):
            result.frames.append({"uid": uid, "frame": int(b["frame_index"][i]),
                                  "semantics": counts["semantics"][i], "instances": counts["instances"][i],
                                  "area": float(stats.area[i]), "iou": float(ious[i])})
    for by, metrics in grouped.items():
        numbers = sorted(k for k in metrics.groups if k != ALL)
        for row in metrics.rows([*numbers, ALL]):
            result.rows.append({"by": by, "count": row.pop("group"), **row})
    return result


SEMANTICS_COLUMNS = ["by", "count", "frames", "mean_area", "binary_miou", "binary_fscore", "binary_iou_std",
                     "semantic_miou_present", "semantic_fscore_present"]


def write_semantics_outputs(result: SemanticsResult, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """``semantics.csv``, ``semantics_frames.csv`` and ``semantics.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    columns = [c for c in SEMANTICS_COLUMNS if result.num_classes is not None or not c.startswith("semantic_")]
    return {"table": write_csv(result.rows, out_dir / "semantics.csv", columns),
            "frames": write_csv(result.frames, out_dir / "semantics_frames.csv"),
            "figure": plot_semantics(result, out_dir / "semantics.png", title)}


def plot_semantics(result: SemanticsResult, path: str | Path, title: str = "") -> Path:
    """The A.2 figure (see the module docstring)."""
    fig, axes = plots.figure(11.0, 4.2, 1, 2, layout="constrained")
    names = {"semantics": "(a) sounding semantics (classes) per frame",
             "instances": "(b) sounding instances per frame"}
    for ax, by in zip(axes[0], GROUPINGS):
        rows = [r for r in result.rows if r["by"] == by and r["count"] != ALL]
        x = np.array([r["count"] for r in rows], dtype=np.float64)
        counts = ax.twinx()
        counts.bar(x, [r["frames"] for r in rows], width=0.6, color=plots.COUNT_COLOUR, alpha=0.35,
                   label="frames")
        counts.set_ylim(0, 3 * max([r["frames"] for r in rows] + [1]))  # bars in the lower third
        counts.set_ylabel("frames (bars)", color=plots.COUNT_COLOUR)
        counts.tick_params(axis="y", colors=plots.COUNT_COLOUR)
        ax.set_zorder(counts.get_zorder() + 1)  # lines above the bars
        ax.patch.set_visible(False)
        mean = np.array([r["binary_miou"] for r in rows]) * 100
        std = np.array([r["binary_iou_std"] for r in rows]) * 100
        ax.fill_between(x, np.clip(mean - std, 0, 100), np.clip(mean + std, 0, 100), color=plots.MAIN_COLOUR,
                        alpha=0.2, label="± 1 std of frame IoU")
        ax.plot(x, mean, "o-", color=plots.MAIN_COLOUR, label="mIoU (sounding pixels)")
        if result.num_classes is not None:
            semantic = np.array([r["semantic_miou_present"] for r in rows]) * 100
            ax.plot(x, semantic, "s--", color="tab:purple", label="semantic mIoU (classes present)")
        ax.set_xticks(x)
        ax.set_xlabel(names[by])
        ax.set_ylabel("mIoU (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
    if title:
        fig.suptitle(title)
    return plots.save(fig, path)


def run_semantics(model, dataset, out_dir, *, settings: dict, min_instance_fraction: float = 0.0005,
                  batch_size: int = 4, device="cpu", max_clips: int | None = None, progress: bool = False,
                  title: str = "") -> tuple[SemanticsResult, dict[str, Path]]:
    """Predict ``dataset`` with ``model`` and write the A.2 outputs (``settings`` as in ``run_area``)."""
    batches = predict_batches(model, dataset, batch_size=batch_size, device=device, max_clips=max_clips,
                              progress=progress, **settings)
    result = semantics_analysis(batches, num_semantic_classes(dataset), min_instance_fraction)
    return result, write_semantics_outputs(result, out_dir, title)
