"""Benchmark of ``matching_cost`` and the constrained matcher against the eager reference and a per-sample loop.

    python -m benchmarks.bench_matching [--quick] [--device cuda] [--step-ms 850]

Two levels:
  cost     the cost matrix from points already sampled (``coavs.ops.matching_cost`` vs the batched eager reference
           vs Mask2Former's per-sample cost code in a Python loop over the batch, as the paper's code does)
  matcher  everything a training step pays per prediction: point sampling, costs, one device-to-host copy and
           ``linear_sum_assignment`` per sample (``ConstrainedHungarianMatcher`` vs the per-sample loop matcher)

The matcher runs once per decoder prediction (``--matchings-per-step``, 10 for the paper's 9-layer decoder plus the
initial prediction). With ``--step-ms`` (a training step measured elsewhere, e.g. by the training benchmark at
the same batch) the table also gives the share of the step spent matching.
"""

from __future__ import annotations

import torch

import coavs.ops as ops
from benchmarks.common import Ratio, Work, base_parser, measure, nbytes, report, synchronize
from coavs.ops import _dispatch, reference
from coavs.training.matcher import ConstrainedHungarianMatcher, allowed_pairs, constrained_assignment
from coavs.training.point_sampling import point_sample, random_points
from tests.support.matching import mask2former_cost  # the baseline the tests check the op against


def per_sample_costs(mask_points, target_points, class_logits, labels, allowed, counts):
    costs = []
    for b, n in enumerate(counts):
        c = mask2former_cost(mask_points[b], target_points[b, :n], class_logits[b], labels[b, :n], dtype=torch.float32)
        costs.append(torch.where(allowed[b, :, :n], c, torch.full_like(c, float("inf"))))
    return costs


def per_sample_matcher(pred_logits, pred_masks, targets, query_marker, active, num_points):
    """The loop a straightforward port of Mask2Former's matcher does: sample, cost, copy and assign per sample."""
    indices = []
    for b, t in enumerate(targets):
        coords = torch.rand(1, num_points, 2, device=pred_masks.device)
        out = point_sample(pred_masks[b:b + 1], coords)[0]
        tgt = point_sample(t["masks"][None].float(), coords)[0]
        cost = mask2former_cost(out, tgt, pred_logits[b], t["labels"], dtype=torch.float32)
        ok = allowed_pairs(query_marker, active[b:b + 1], t["markers"][None])[0]
        cost = torch.where(ok, cost, torch.full_like(cost, float("inf"))).cpu().numpy()
        indices.append(constrained_assignment(cost))
    return indices


def make_batch(batch, num_queries, num_markers, dilation, max_gt, num_classes, size, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, num_markers, generator=gen) ** 3
    assigned = ops.assign_queries(scores, torch.zeros(batch, 1), torch.zeros(num_queries, 1), dilation)
    pred_logits = torch.randn(batch, num_queries, num_classes + 1, generator=gen).to(device)
    pred_masks = torch.randn(batch, num_queries, size // 4, size // 4, generator=gen).to(device)
    targets = []
    for b in range(batch):
        n = int(torch.randint(1, max_gt + 1, (1,), generator=gen))
        present = assigned.query_marker[assigned.active[b]].unique()
        markers = present[torch.randint(0, len(present), (n,), generator=gen)]
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=gen).to(device),
                        "masks": (torch.rand(n, size, size, generator=gen) > 0.5).to(device),
                        "markers": markers.to(device)})
    return pred_logits, pred_masks, targets, assigned.query_marker.to(device), assigned.active.to(device)


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--step-ms", type=float, default=None, help="a training step's time at this batch (ms)")
    parser.add_argument("--matchings-per-step", type=int, default=10)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quick:
        batch, num_queries, num_markers, dilation, max_gt, num_points = 2, 20, 4, 5, 3, 256
        classes, size = 5, 32
    else:  # the training shape: B=20, Q=100, G <= 10, P = 12544 (AVSS: 71 classes)
        batch, num_queries, num_markers, dilation, max_gt, num_points = 20, 100, 20, 5, 10, 12544
        classes, size = 71, 256
    pred_logits, pred_masks, targets, query_marker, active = make_batch(
        batch, num_queries, num_markers, dilation, max_gt, classes, size, device)
    shape = f"B{batch} Q{num_queries} G<={max_gt} P{num_points} K+1={classes + 1}"

    # Inputs of the cost level: everything sampled once at shared points.
    counts = [len(t["labels"]) for t in targets]
    num_gt = max(counts)
    coords = random_points(batch, num_points, device)
    mask_points = point_sample(pred_masks, coords)
    target_points = torch.zeros(batch, num_gt, num_points, device=device)
    labels = torch.zeros(batch, num_gt, dtype=torch.long, device=device)
    markers = torch.full((batch, num_gt), -1, dtype=torch.long, device=device)
    for b, t in enumerate(targets):
        target_points[b, :counts[b]] = point_sample(t["masks"][None].float(), coords[b:b + 1])[0]
        labels[b, :counts[b]], markers[b, :counts[b]] = t["labels"], t["markers"]
    allowed = allowed_pairs(query_marker, active, markers)
    count_tensor = torch.tensor(counts, device=device)
    cost_args = (mask_points, target_points, pred_logits, labels, allowed, count_tensor)

    rows = []

    speedups = [Ratio("speedup_vs_loop", "per_sample_loop"), Ratio("speedup_vs_eager", "eager_reference")]

    def record(level, providers):
        for row in measure(providers, device, fields={"level": level, "shape": shape}, ratios=speedups,
                           min_time_s=0.5):
            if level == "matcher" and "median_ms" in row:
                row["ms_per_step"] = row["median_ms"] * args.matchings_per_step
                if args.step_ms:
                    row["pct_of_step"] = 100 * row["ms_per_step"] / args.step_ms
            rows.append(row)

    spec = _dispatch.REGISTRY["matching_cost"]
    backends = [b for b in ("native", "triton") if _dispatch.availability(spec, b, device.type)[0]]

    costs = {"per_sample_loop": lambda: per_sample_costs(*cost_args),
             "eager_reference": lambda: reference.matching_cost(*cost_args, 2.0, 5.0, 5.0)}
    for backend in backends:
        def cost(backend=backend):
            with ops.use_backend(backend):
                return ops.matching_cost(*cost_args)
        costs[backend] = cost
    record("cost", costs)

    matchers = {"per_sample_loop": lambda: per_sample_matcher(pred_logits, pred_masks, targets, query_marker, active,
                                                              num_points)}
    matcher = ConstrainedHungarianMatcher(num_points=num_points)
    for backend in ["reference"] + backends:
        def match(backend=backend):
            with ops.use_backend(backend):
                return matcher(pred_logits, pred_masks, targets, query_marker, active)
        matchers["eager_reference" if backend == "reference" else f"matcher[{backend}]"] = match
    record("matcher", matchers)

    # The Hungarian step alone (host side), for the split of the matcher's time.
    host_cost = ops.matching_cost(*cost_args).cpu().double().numpy()
    synchronize(device)
    record("hungarian", {"linear_sum_assignment x B":
                         lambda: [constrained_assignment(host_cost[b, :, :n]) for b, n in enumerate(counts)]})

    notes = (f"per_sample_loop = Mask2Former's per-sample cost code in a Python loop over the batch (the paper's "
             f"code loops likewise); eager_reference = coavs.ops.reference.matching_cost (batched PyTorch). "
             f"matcher rows: point sampling + costs + copy + linear_sum_assignment; ms_per_step = "
             f"{args.matchings_per_step} matchings per training step"
             + (f"; pct_of_step against a {args.step_ms} ms step." if args.step_ms else
                "; pass --step-ms for the share of a training step."))
    # Roofline of the cost level (the matcher and Hungarian rows are host-bound): read the sampled points, class
    # logits, labels, allowed pairs and counts, write the [B,Q,G] costs; two P-long dot products per pair and
    # ~12 FLOPs per point of a query (sigmoid, softplus from one exp).
    cost_work = Work(nbytes(*cost_args) + 4 * batch * num_queries * num_gt,
                     other_flops=4 * batch * num_queries * num_gt * num_points + 12 * batch * num_queries * num_points)
    report(rows, device, args.out, "matching", notes, lambda row: cost_work if row["level"] == "cost" else None)
    return rows


if __name__ == "__main__":
    main()
