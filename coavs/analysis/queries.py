"""Supplementary C.1: the mask of every active query, grouped by the latent semantic marker that owns it.

Marker ``s`` owns queries ``s·d … s·d+d−1`` (``d`` = dilation); only the queries of present markers are active.
For a frame, :func:`query_view` lists every query with its marker, the marker's score, whether it is active, its
predicted class (argmax of the softmax over the ``K`` classes and "no object") with that probability, and the
area of its mask (``σ(mask logit) > 0.5`` after bilinear resizing to the frame). The masks are the vanilla
branch's: what each query proposes before any debias.

:func:`draw_query_grid` draws one frame: a header row (frame, ground truth, the final prediction under each
audio condition), then per condition the present markers (highest score first), each a group of same-coloured
boxes holding the masks of its queries over the frame, titled with the query's class and probability. Under
silence the perception module hears nothing: which markers stay present, and what their queries still segment,
is the visual prior.
:func:`draw_examples_grid` is the paper's Figure C4: rows are queries, columns are frames, so a row shows what
one query segments across examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from coavs.analysis import plots
from coavs.analysis.tables import write_csv
from coavs.eval.runner import predict_batches

NO_OBJECT = "no object"
CONDITIONS = ("normal", "silence")
_CONDITION_TITLES = {"normal": "its own audio", "silence": "silence", "noise": "white noise",
                     "misaligned": "another clip's audio"}


def marker_names(model_config, class_names) -> list[str]:
    """Names of the ``S`` markers: classifier markers by the class of label value ``s+1``, then ``cluster m``."""
    names = []
    for s in range(model_config.num_audio_classes):
        label = s + 1
        names.append(class_names[label] if label < len(class_names) else f"class {label}")
    names += [f"cluster {m}" for m in range(model_config.num_clusters)]
    return names


@dataclass
class QueryView:
    """One frame under one audio condition.

    rows: per query ``query``, ``marker`` (−1 none), ``marker_name``, ``marker_score``, ``active``, ``gate``,
    ``class``, ``class_name``, ``class_prob``, ``mask_area``; masks: ``[Q,H,W]`` σ(mask logits) at frame size;
    prediction: ``[H,W]`` final labels (under the run's inference mode).
    """

    condition: str
    rows: list[dict]
    masks: np.ndarray
    prediction: np.ndarray


def query_view(outputs: dict, index: int, size: tuple[int, int], class_names, markers: list[str],
               condition: str = "normal", prediction=None) -> QueryView:
    """The :class:`QueryView` of frame ``index`` of a batch of model ``outputs`` (see ``AVSModel.forward``)."""
    logits = outputs["pred_logits"][index].detach().float().cpu()  # [Q,K+1]
    masks = F.interpolate(outputs["pred_masks"][index:index + 1].detach().float().cpu(), size=size, mode="bilinear",
                          align_corners=False)[0].sigmoid()  # [Q,H,W]
    active = outputs["active"][index].cpu()
    gate = outputs["gate"][index].detach().float().cpu()
    query_marker = outputs["query_marker"].cpu()
    scores = outputs["marker_scores"][index].detach().float().cpu()
    probs = torch.softmax(logits, dim=-1)
    best_prob, best = probs.max(dim=-1)
    classes = logits.shape[-1] - 1
    rows = []
    for q in range(logits.shape[0]):
        marker = int(query_marker[q])
        cls = int(best[q])
        rows.append({
            "condition": condition, "query": q, "marker": marker,
            "marker_name": markers[marker] if 0 <= marker < len(markers) else "none",
            "marker_score": float(scores[marker]) if marker >= 0 else float("nan"),
            "active": bool(active[q]), "gate": float(gate[q]), "class": cls,
            "class_name": (class_names[cls] if cls < len(class_names) else str(cls)) if cls < classes else NO_OBJECT,
            "class_prob": float(best_prob[q]), "mask_area": float((masks[q] > 0.5).double().mean())})
    pred = np.zeros(size, dtype=np.int64) if prediction is None else np.asarray(prediction)
    return QueryView(condition, rows, masks.numpy(), pred)


def _marker_groups(view: QueryView) -> list[tuple[int, list[dict]]]:
    """Present markers (highest score first) with their active queries."""
    groups: dict[int, list[dict]] = {}
    for row in view.rows:
        if row["active"]:
            groups.setdefault(row["marker"], []).append(row)
    return sorted(groups.items(), key=lambda item: -np.nan_to_num(item[1][0]["marker_score"], nan=-1.0))


def _frame_image(frame) -> np.ndarray:
    """``[H,W,3]`` float in [0,1] from a ``[3,H,W]`` or ``[H,W,3]`` frame (uint8 0..255 or float 0..1)."""
    array = np.asarray(frame)
    image = array.astype(np.float64) / (255.0 if array.dtype == np.uint8 else 1.0)
    if image.ndim == 3 and image.shape[0] == 3:
        image = image.transpose(1, 2, 0)
    return np.clip(image, 0.0, 1.0)


def draw_query_grid(frame, labels, views: list[QueryView], num_classes: int, path, title: str = "",
                    max_markers: int = 12) -> Path:
    """One frame's per-query masks under each condition of ``views`` (see the module docstring); at most
    ``max_markers`` present markers per condition (the highest scores)."""
    image = _frame_image(frame)
    dilation = max([len(g) for view in views for _, g in _marker_groups(view)] + [1])
    per_row = max(1, 8 // dilation)  # marker groups per grid row
    width = max(2 + len(views), per_row * dilation)
    sections = []
    for view in views:
        present = _marker_groups(view)
        shown = present[:max_markers]
        rows = [shown[i:i + per_row] for i in range(0, len(shown), per_row)]
        sections.append((view, rows, len(present) - len(shown)))
    ratios = [1.0]
    for _, rows, _ in sections:
        ratios += [0.18] + [1.0] * max(1, len(rows))
    cell = 1.25
    fig_w, fig_h = cell * width + 0.4, cell * 1.3 * sum(ratios) + 0.5
    fig = plots.plt.figure(figsize=(fig_w, fig_h))
    grid = fig.add_gridspec(len(ratios), width, height_ratios=ratios, hspace=0.55, wspace=0.08,
                            left=0.02, right=0.98, bottom=0.01, top=1 - 0.8 / fig_h)

    def panel(r, c, picture, caption, edge=None):
        ax = fig.add_subplot(grid[r, c])
        ax.imshow(picture, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(caption, fontsize=6.5)
        if edge is not None:
            for spine in ax.spines.values():
                spine.set_edgecolor(edge)
                spine.set_linewidth(2.5)
        return ax

    def heading(r, text):
        ax = fig.add_subplot(grid[r, :])
        ax.axis("off")
        ax.text(0.0, 0.0, text, fontsize=8.5, fontweight="bold", transform=ax.transAxes)

    panel(0, 0, image, "frame")
    panel(0, 1, plots.colour_labels(np.asarray(labels), num_classes), "ground truth")
    for k, view in enumerate(views):
        panel(0, 2 + k, plots.colour_labels(view.prediction, num_classes),
              f"prediction\n({_CONDITION_TITLES.get(view.condition, view.condition)})")
    edges = plots.plt.rcParams["axes.prop_cycle"].by_key()["color"]
    r = 1
    for view, rows, hidden in sections:
        name = _CONDITION_TITLES.get(view.condition, view.condition)
        count = sum(row["active"] for row in view.rows)
        more = f"; {hidden} more markers not shown" if hidden else ""
        heading(r, f"under {name}: {count} active queries, grouped by marker (box colour){more}"
                if rows else f"under {name}: no active query")
        r += 1
        k = 0
        for row in rows:
            c = 0
            for marker, queries in row:
                colour = edges[k % len(edges)]
                k += 1
                for j, q in enumerate(queries):
                    head = (f"{q['marker_name']} (m{marker}, {q['marker_score']:.2f})" if j == 0 else "")
                    panel(r, c, plots.overlay(image, view.masks[q["query"]]),
                          f"{head}\nq{q['query']}: {q['class_name']} {q['class_prob']:.2f}", colour)
                    c += 1
            r += 1
        r += 0 if rows else 1
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.1 / fig_h)
    return plots.save(fig, path, palette_colours=256)


def draw_examples_grid(examples: list[tuple[str, np.ndarray, QueryView]], path, title: str = "",
                       max_markers: int = 12) -> Path:
    """Figure C4: rows = queries active in some example, columns = examples (``(name, frame, view)``); a cell is
    the query's mask over that frame, blank where the query is dormant. Only the queries of the ``max_markers``
    markers with the highest score in any example are shown."""
    best: dict[int, float] = {}
    for _, _, view in examples:
        for r in view.rows:
            if r["active"]:
                best[r["marker"]] = max(best.get(r["marker"], -1.0), np.nan_to_num(r["marker_score"], nan=-1.0))
    markers = set(sorted(best, key=lambda m: -best[m])[:max_markers])
    active = sorted({r["query"] for _, _, view in examples for r in view.rows if r["active"]
                     and r["marker"] in markers})
    if not active:
        active = [0]
    cols = len(examples)
    cell = 1.35
    fig, axes = plots.figure(cell * cols + 1.6, cell * len(active) + 0.6, len(active), cols)
    for c, (name, frame, view) in enumerate(examples):
        image = _frame_image(frame)
        by_query = {r["query"]: r for r in view.rows}
        for r, q in enumerate(active):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            row = by_query[q]
            head = f"{name}\n" if r == 0 else ""
            if row["active"]:
                ax.imshow(plots.overlay(image, view.masks[q]), interpolation="nearest")
                ax.set_title(f"{head}{row['class_name']} {row['class_prob']:.2f}", fontsize=6, pad=2)
            else:
                ax.imshow(np.full_like(image, 0.93))
                ax.text(0.5, 0.5, "dormant", ha="center", va="center", fontsize=6, color="grey",
                        transform=ax.transAxes)
                if head:
                    ax.set_title(head.strip(), fontsize=6, pad=2)
            if c == 0:
                ax.set_ylabel(f"query {q}\n{row['marker_name']}", fontsize=7, rotation=0, ha="right", va="center")
    height = cell * len(active) + 0.6
    fig.subplots_adjust(hspace=0.35, wspace=0.05, top=1 - 0.55 / height, bottom=0.01)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.1 / height)
    return plots.save(fig, path, palette_colours=256)


# ---------------------------------------------------------------------------------------------- running
def parse_frame_spec(text: str, dataset) -> tuple[int, int]:
    """``"UID:T"`` or ``"INDEX:T"`` (clip by uid or dataset index, frame ``T``; ``:T`` optional, default 0) →
    ``(clip index, frame)``."""
    name, _, frame = text.partition(":")
    try:
        t = int(frame) if frame else 0
    except ValueError:
        raise ValueError(f"frame {text!r}: the part after ':' must be a frame number") from None
    uids = list(getattr(dataset, "uids", []))
    if name in uids:
        clip = uids.index(name)
    else:
        try:
            clip = int(name)
        except ValueError:
            raise ValueError(f"frame {text!r}: no clip with uid {name!r} in this split "
                             f"(first uids: {', '.join(uids[:3])})") from None
        if not 0 <= clip < len(dataset):
            raise ValueError(f"frame {text!r}: clip index {clip} is outside 0..{len(dataset) - 1}")
    if t < 0:
        raise ValueError(f"frame {text!r}: the frame number must be >= 0")
    return clip, t


def default_frames(dataset, count: int = 4) -> list[tuple[int, int]]:
    """The first annotated frame of the first ``count`` clips."""
    return [(i, 0) for i in range(min(count, len(dataset)))]


def analyze_queries(model, model_config, dataset, frames: list[tuple[int, int]], out_dir, *, settings: dict,
                    conditions=CONDITIONS, device="cpu", max_markers: int = 12) -> dict:
    """Per requested ``(clip, frame)``: ``queries_<uid>_<t>.png`` (:func:`draw_query_grid` under ``conditions``),
    and for several frames ``queries_examples.png`` (:func:`draw_examples_grid`, own audio); ``queries.csv`` with
    every query's row per frame and condition. ``settings``: inference keyword arguments of ``predict_batches``
    (mode, biased, alpha, scheme, strategy). Returns ``{"figures": [...], "table": path, "rows": [...]}``."""
    out_dir = Path(out_dir)
    names = tuple(dataset.class_names)
    markers = marker_names(model_config, names)
    figures, table, examples = [], [], []
    for clip, t in frames:
        views, frame, labels, uid = [], None, None, None
        for condition in conditions:
            batches = list(predict_batches(model, dataset, indices=[clip], batch_size=1, device=device,
                                           audio=condition, **settings))
            batch = batches[0] if batches else None
            rows = [] if batch is None else (batch["frame_index"] == t).nonzero().flatten().tolist()
            if not rows:
                raise ValueError(f"clip {clip} ({dataset.uids[clip]}) has no annotated frame {t}")
            i = rows[0]
            frame, labels, uid = batch["frames"][i].cpu().numpy(), batch["labels"][i].cpu().numpy(), batch["uid"][i]
            size = tuple(batch["labels"].shape[-2:])
            view = query_view(batch["outputs"], i, size, names, markers, condition, batch["pred_labels"][i].cpu())
            views.append(view)
            table += [{"uid": uid, "frame": t, **row} for row in view.rows]
        title = f"{uid}, frame {t}: masks of the active queries ({settings.get('mode', 'vanilla')} prediction)"
        figures.append(draw_query_grid(frame, labels, views, len(names), out_dir / f"queries_{uid}_{t}.png", title,
                                       max_markers))
        examples.append((f"{uid}:{t}", frame, views[0]))
    if len(examples) > 1:
        figures.append(draw_examples_grid(examples, out_dir / "queries_examples.png",
                                          "each row: one query across frames (own audio)", max_markers))
    path = write_csv(table, out_dir / "queries.csv")
    return {"figures": figures, "table": path, "rows": table}
