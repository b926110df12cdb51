"""Assignment-constrained Hungarian matching (the paper's answer to audio priming bias; docs/design.md, op 2).

A ground truth of latent semantic marker ``s`` may only be matched to the ``d`` queries that ``s`` owns, and only
to active queries (those of present markers); a ground truth with marker ``-1`` may go to any active query. The
costs of every query against every ground truth come from one :func:`coavs.ops.matching_cost` call for the whole
padded batch; the assignment itself is ``scipy.optimize.linear_sum_assignment`` per sample.

Ground truths that cannot all be matched (the marker is absent from the sample's active queries, more ground
truths of a marker than its ``d`` queries, or more unconstrained ground truths than free active queries) follow
one documented rule, ``on_unmatchable``:

* ``"drop"`` (default): the matcher returns, among the matchings that respect the constraint, one that matches
  the most ground truths, and among those the cheapest. The ground truths left over are not matched (the loss
  sees no query for them); they are listed in ``MatchResult.unmatched``, counted in ``num_unmatched``, and the
  first occurrence per matcher raises a ``UserWarning``. No ground truth is ever matched outside its marker.
* ``"raise"``: a ``ValueError`` naming the sample and the ground truths.

Non-finite costs of allowed pairs (NaN/inf logits) are always an error: a match on them would be meaningless.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from coavs.ops.matching_cost import matching_cost_op
from coavs.training.point_sampling import point_sample, random_points, sample_mask_list

UNMATCHABLE_RULES = ("drop", "raise")


class MatchResult(NamedTuple):
    """What :meth:`ConstrainedHungarianMatcher.match` returns.

    ``indices``: per sample ``(query_indices, target_indices)``, CPU long tensors, sorted by query (Mask2Former's
    convention); ``point_coords [B,P,2]``: the points at which the costs were taken (the loss may reuse them, see
    :func:`coavs.training.point_sampling.point_sample`); ``unmatched``: per sample the ground truths left without
    a query (CPU long, empty when all matched); ``cost [B,Q,G]``: the cost matrix (``+inf`` where not allowed).
    """

    indices: list[tuple[Tensor, Tensor]]
    point_coords: Tensor
    unmatched: list[Tensor]
    cost: Tensor


def allowed_pairs(query_marker: Tensor, active: Tensor, target_markers: Tensor) -> Tensor:
    """``[B,Q,G]`` bool: query ``q`` may take ground truth ``g`` of sample ``b``.

    ``query_marker [Q]`` (−1: owns none), ``active [B,Q]`` bool, ``target_markers [B,G]`` (−1: unconstrained).
    A pair is allowed when the query is active and the ground truth is unconstrained or of the query's marker.
    """
    same = query_marker[None, :, None] == target_markers[:, None, :]
    free = (target_markers == -1)[:, None, :]
    return active[:, :, None] & (same | free)


def constrained_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a min-cost matching of ``cost [n,m]`` where ``+inf`` marks forbidden pairs.

    Among the matchings that use only finite entries it returns one of maximum size, and among those one of
    minimum total cost: forbidden entries get a penalty larger than any possible difference of finite totals,
    so ``linear_sum_assignment`` first minimises how many it must use, then the cost; those pairs are dropped.
    """
    if np.isnan(cost).any() or np.isneginf(cost).any():
        raise ValueError("matching cost has NaN or -inf entries (non-finite predictions?)")
    finite = np.isfinite(cost)
    if finite.all():
        return linear_sum_assignment(cost)
    if not finite.any():
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    pairs = min(cost.shape)
    spread = float(np.abs(cost[finite]).max())
    penalty = 2.0 * spread * (pairs + 1) + 1.0
    rows, cols = linear_sum_assignment(np.where(finite, cost, penalty))
    keep = finite[rows, cols]
    return rows[keep], cols[keep]


class ConstrainedHungarianMatcher(nn.Module):
    """Mask2Former's Hungarian matcher with the dilated query-to-semantic constraint.

    Args:
        cost_class, cost_mask, cost_dice: weights of ``−p[class]``, the mean sigmoid cross-entropy and the dice
            cost (Mask2Former's 2, 5, 5).
        num_points: ``P`` uniform points per sample at which masks are compared (Mask2Former: 112·112 = 12544).
        on_unmatchable: ``"drop"`` or ``"raise"`` (see the module docstring).

    Call as ``matcher(pred_logits [B,Q,K+1], pred_masks [B,Q,h,w], targets, query_marker [Q], active [B,Q],
    point_coords=None, generator=None)``; ``targets`` is a list of ``B`` dicts with ``labels [G] long``,
    ``masks [G,H,W]`` (float or bool) and ``markers [G] long`` (−1 = unconstrained; a missing ``markers`` means
    all unconstrained). Returns the per-sample ``(query_indices, target_indices)`` list; the full
    :class:`MatchResult` of the last call is ``last_result`` and its points ``last_point_coords``. ``match(...)``
    returns the :class:`MatchResult` directly. Points: ``point_coords [B,P,2]`` if given (e.g. shared with the
    loss), else ``random_points`` drawn with ``generator``; the same points serve predictions and ground truths.
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544, on_unmatchable: str = "drop"):
        super().__init__()
        if on_unmatchable not in UNMATCHABLE_RULES:
            raise ValueError(f"on_unmatchable must be one of {UNMATCHABLE_RULES}, got {on_unmatchable!r}")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all costs can't be 0")
        self.cost_class, self.cost_mask, self.cost_dice = float(cost_class), float(cost_mask), float(cost_dice)
        self.num_points = int(num_points)
        self.on_unmatchable = on_unmatchable
        self.num_unmatched = 0  # ground truths left unmatched so far ("drop" rule)
        self._warned = False
        self.last_result: MatchResult | None = None

    @property
    def last_point_coords(self) -> Tensor | None:
        return None if self.last_result is None else self.last_result.point_coords

    def forward(self, pred_logits: Tensor, pred_masks: Tensor, targets: list[dict], query_marker: Tensor,
                active: Tensor, point_coords: Tensor | None = None,
                generator: torch.Generator | None = None) -> list[tuple[Tensor, Tensor]]:
        return self.match(pred_logits, pred_masks, targets, query_marker, active, point_coords, generator).indices

    @torch.no_grad()
    def match(self, pred_logits: Tensor, pred_masks: Tensor, targets: list[dict], query_marker: Tensor,
              active: Tensor, point_coords: Tensor | None = None,
              generator: torch.Generator | None = None) -> MatchResult:
        """The matching and what it was computed from; see the class docstring."""
        batch, device = pred_logits.shape[0], pred_logits.device
        _validate(pred_logits, pred_masks, targets, query_marker, active)
        if point_coords is None:
            point_coords = random_points(batch, self.num_points, device, generator)
        elif point_coords.dim() != 3 or point_coords.shape[0] != batch or point_coords.shape[2] != 2:
            raise ValueError(f"point_coords must be [B,P,2] with B={batch}, got {tuple(point_coords.shape)}")
        point_coords = point_coords.to(device)

        counts = [int(t["labels"].shape[0]) for t in targets]
        query_marker, active = query_marker.to(device), active.to(device)
        labels = _padded([t["labels"] for t in targets], 0, device)
        markers = _padded([t["markers"] if t.get("markers") is not None else torch.full_like(t["labels"], -1)
                           for t in targets], -1, device)
        _check_values(labels, markers, counts, pred_logits.shape[-1], query_marker)
        target_points = sample_mask_list([t["masks"] for t in targets], point_coords)
        mask_points = point_sample(pred_masks.detach(), point_coords)
        allowed = allowed_pairs(query_marker, active, markers)
        # Shapes and values are checked above; the custom op skips the public function's second round of checks.
        cost = matching_cost_op(mask_points, target_points, pred_logits.detach(), labels, allowed,
                                torch.tensor(counts, dtype=torch.long, device=device),
                                self.cost_class, self.cost_mask, self.cost_dice)

        cost_host = cost.detach().to("cpu", torch.float64).numpy()  # one transfer for the whole batch
        indices, unmatched = [], []
        for b in range(batch):
            rows, cols = constrained_assignment(cost_host[b, :, :counts[b]])
            left = np.setdiff1d(np.arange(counts[b]), cols)
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
            unmatched.append(torch.as_tensor(left, dtype=torch.int64))
            if left.size:
                self._unmatchable(b, left, markers[b, :counts[b]].cpu(), active[b], query_marker)
        result = MatchResult(indices, point_coords, unmatched, cost)
        self.last_result = result
        return result

    def _unmatchable(self, sample: int, left: np.ndarray, markers: Tensor, active: Tensor, query_marker: Tensor):
        what = ", ".join(f"{int(g)} (marker {int(markers[g])})" for g in left)
        message = (f"sample {sample}: ground truths {what} cannot be matched under the query-assignment constraint "
                   f"(marker absent from the {int(active.sum())} active queries, or more ground truths than its "
                   "queries)")
        if self.on_unmatchable == "raise":
            raise ValueError(message)
        self.num_unmatched += int(left.size)
        if not self._warned:
            self._warned = True
            warnings.warn(message + "; they are left unmatched (on_unmatchable='drop'; later cases are counted in "
                          "matcher.num_unmatched without a warning)", UserWarning, stacklevel=4)


def _padded(rows: list[Tensor], value: int, device) -> Tensor:
    """``[B,G]`` long: per-sample vectors padded with ``value`` (no Python loop of device copies)."""
    if not rows:
        return torch.zeros(0, 0, dtype=torch.long, device=device)
    return pad_sequence([r.to(device) for r in rows], batch_first=True, padding_value=value)


def _validate(pred_logits, pred_masks, targets, query_marker, active) -> None:
    if pred_logits.dim() != 3:
        raise ValueError(f"pred_logits must be [B,Q,K+1], got shape {tuple(pred_logits.shape)}")
    batch, num_queries = pred_logits.shape[:2]
    if pred_masks.dim() != 4 or pred_masks.shape[:2] != (batch, num_queries):
        raise ValueError(f"pred_masks must be [B,Q,h,w] with B={batch}, Q={num_queries}, got "
                         f"{tuple(pred_masks.shape)}")
    if not isinstance(targets, (list, tuple)) or len(targets) != batch:
        raise ValueError(f"targets must be a list of {batch} dicts (one per sample), got "
                         f"{type(targets).__name__} of length {len(targets) if hasattr(targets, '__len__') else '?'}")
    if query_marker.dtype != torch.long or query_marker.shape != (num_queries,):
        raise ValueError(f"query_marker must be a long [Q={num_queries}] tensor, got {query_marker.dtype} "
                         f"{tuple(query_marker.shape)}")
    if active.dtype != torch.bool or active.shape != (batch, num_queries):
        raise ValueError(f"active must be a bool [B,Q] = [{batch},{num_queries}] tensor, got {active.dtype} "
                         f"{tuple(active.shape)}")
    for b, t in enumerate(targets):
        if "labels" not in t or "masks" not in t:
            raise ValueError(f"targets[{b}] must have 'labels' and 'masks'")
        n = t["labels"].shape[0]
        if t["labels"].dim() != 1 or t["labels"].dtype != torch.long:
            raise ValueError(f"targets[{b}]['labels'] must be a long [G] tensor, got {t['labels'].dtype} "
                             f"{tuple(t['labels'].shape)}")
        if t["masks"].dim() != 3 or t["masks"].shape[0] != n:
            raise ValueError(f"targets[{b}]['masks'] must be [G={n},H,W], got {tuple(t['masks'].shape)}")
        markers = t.get("markers")
        if markers is not None and (markers.dtype != torch.long or markers.shape != (n,)):
            raise ValueError(f"targets[{b}]['markers'] must be a long [G={n}] tensor, got {markers.dtype} "
                             f"{tuple(markers.shape)}")


def _check_values(labels: Tensor, markers: Tensor, counts: list[int], num_classes: int, query_marker: Tensor):
    """Labels in ``[0, K+1)`` and markers ``-1`` or owning queries, for every real ground truth: one host sync."""
    if labels.numel() == 0:
        return
    real = torch.arange(labels.shape[1], device=labels.device) < torch.tensor(counts, device=labels.device)[:, None]
    num_markers = query_marker.max() + 1 if query_marker.numel() else torch.zeros((), device=labels.device)
    bad_label = real & ((labels < 0) | (labels >= num_classes))
    bad_marker = real & ((markers < -1) | (markers >= num_markers))
    if not bool((bad_label | bad_marker).any()):
        return
    b, g = (bad_label | bad_marker).nonzero()[0].tolist()
    if bad_label[b, g]:
        raise ValueError(f"targets[{b}]['labels'][{g}] = {int(labels[b, g])} is not a class index in "
                         f"[0, {num_classes}) (pred_logits has K+1 = {num_classes})")
    raise ValueError(f"targets[{b}]['markers'][{g}] = {int(markers[b, g])} must be -1 (unconstrained) or a marker in "
                     f"[0, {int(num_markers)}) that owns queries")
