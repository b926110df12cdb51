import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import coavs.ops as ops
from coavs.training.matcher import ConstrainedHungarianMatcher, allowed_pairs, constrained_assignment
from coavs.training.point_sampling import point_sample, random_points
from tests.support.helpers import backends_for
from tests.support.matching import mask2former_cost



def make_case(batch, num_markers, dilation, num_queries, max_gt, num_classes=4, size=8, seed=0, unconstrained=0.2):
    """Predictions, targets and the assignment of a random batch; markers of ground truths are mostly present."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, num_markers, generator=gen)
    assigned = ops.assign_queries(scores, torch.randn(batch, 3, generator=gen), torch.randn(num_queries, 3,
                                                                                             generator=gen), dilation)
    pred_logits = torch.randn(batch, num_queries, num_classes + 1, generator=gen) * 2
    pred_masks = torch.randn(batch, num_queries, size, size, generator=gen) * 3
    targets = []
    for b in range(batch):
        n = int(torch.randint(0, max_gt + 1, (1,), generator=gen))
        present = assigned.active[b].nonzero().flatten()
        present_markers = assigned.query_marker[present].unique()
        pick = present_markers[torch.randint(0, len(present_markers), (n,), generator=gen)]
        markers = torch.where(torch.rand(n, generator=gen) < unconstrained, -1, pick)
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=gen),
                        "masks": torch.rand(n, size, size, generator=gen) > 0.5,
                        "markers": markers})
    return pred_logits, pred_masks, targets, assigned


def brute_force(cost: np.ndarray) -> tuple[int, float]:
    """(most ground truths matchable, least total cost among those) by enumerating every assignment."""
    num_queries, num_gt = cost.shape
    best = (0, 0.0)
    for choice in itertools.product(range(-1, num_queries), repeat=num_gt):
        used = [q for q in choice if q >= 0]
        if len(used) != len(set(used)):
            continue
        if any(q >= 0 and not np.isfinite(cost[q, g]) for g, q in enumerate(choice)):
            continue
        total = sum(cost[q, g] for g, q in enumerate(choice) if q >= 0)
        if len(used) > best[0] or (len(used) == best[0] and total < best[1]):
            best = (len(used), total)
    return best


def check_constraint(result, targets, assigned):
    for b, ((rows, cols), left) in enumerate(zip(result.indices, result.unmatched)):
        assert rows.dtype == cols.dtype == torch.int64
        assert len(set(rows.tolist())) == len(rows), "a query takes at most one ground truth"
        assert sorted(cols.tolist() + left.tolist()) == list(range(len(targets[b]["labels"])))
        for q, g in zip(rows.tolist(), cols.tolist()):
            marker = int(targets[b]["markers"][g])
            assert assigned.active[b, q], "ground truth matched to a dormant query"
            assert marker == -1 or int(assigned.query_marker[q]) == marker, "ground truth outside its marker's queries"


def test_brute_force_optimality_on_small_cases():
    matcher = ConstrainedHungarianMatcher(num_points=48)
    checked = 0
    for seed in range(12):
        pred_logits, pred_masks, targets, assigned = make_case(3, 3, 2, 7, 3, seed=seed)
        # Make a marker over-subscribed now and then: 3 ground truths for its 2 queries.
        if seed % 3 == 0 and len(targets[0]["labels"]) == 3:
            targets[0]["markers"][:] = targets[0]["markers"].max()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = matcher.match(pred_logits, pred_masks, targets, assigned.query_marker, assigned.active)
        check_constraint(result, targets, assigned)
        for b, (rows, cols) in enumerate(result.indices):
            cost = result.cost[b, :, :len(targets[b]["labels"])].double().numpy()
            count, total = brute_force(cost)
            assert len(rows) == count, f"seed {seed} sample {b}: not a maximum constrained matching"
            assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(total, abs=1e-9)
            checked += 1
    assert checked == 36


def test_cost_is_finite_exactly_on_allowed_pairs():
    pred_logits, pred_masks, targets, assigned = make_case(4, 5, 3, 17, 5, seed=3)
    result = ConstrainedHungarianMatcher(num_points=32).match(pred_logits, pred_masks, targets, assigned.query_marker,
                                                              assigned.active)
    for b, t in enumerate(targets):
        for g, marker in enumerate(t["markers"].tolist()):
            owns = assigned.query_marker == marker if marker >= 0 else torch.ones(17, dtype=torch.bool)
            assert torch.equal(torch.isfinite(result.cost[b, :, g]), assigned.active[b] & owns)
        assert torch.isinf(result.cost[b, :, len(t["labels"]):]).all(), "padding columns are +inf"


@pytest.mark.parametrize("seed", range(6))
def test_no_ground_truth_lands_outside_its_marker(seed):
    pred_logits, pred_masks, targets, assigned = make_case(6, 5, 4, 23, 9, seed=seed, unconstrained=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = ConstrainedHungarianMatcher(num_points=40).match(pred_logits, pred_masks, targets,
                                                                  assigned.query_marker, assigned.active)
    check_constraint(result, targets, assigned)


def test_unconstrained_and_all_active_equals_mask2former():
    gen = torch.Generator().manual_seed(1)
    pred_logits = torch.randn(3, 9, 5, generator=gen)
    pred_masks = torch.randn(3, 9, 12, 12, generator=gen)
    targets = [{"labels": torch.randint(0, 4, (n,), generator=gen), "masks": torch.rand(n, 12, 12, generator=gen) > 0.4}
               for n in (4, 0, 9)]
    coords = random_points(3, 60, generator=gen)
    indices = ConstrainedHungarianMatcher(num_points=60)(pred_logits, pred_masks, targets, torch.full((9,), -1),
                                                         torch.ones(3, 9, dtype=torch.bool), point_coords=coords)
    for b, t in enumerate(targets):
        out = point_sample(pred_masks[b:b + 1], coords[b:b + 1])[0]
        tgt = point_sample(t["masks"][None].float(), coords[b:b + 1])[0]
        rows, cols = linear_sum_assignment(mask2former_cost(out, tgt, pred_logits[b], t["labels"]).numpy())
        assert indices[b][0].tolist() == rows.tolist() and indices[b][1].tolist() == cols.tolist()


@pytest.mark.parametrize("backend", backends_for("matching_cost", "cpu"))
def test_every_cost_backend_gives_the_same_matching(backend):
    pred_logits, pred_masks, targets, assigned = make_case(4, 4, 3, 14, 5, seed=7)
    coords = random_points(4, 64, generator=torch.Generator().manual_seed(0))
    matcher = ConstrainedHungarianMatcher(num_points=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with ops.use_backend("reference"):
            expected = matcher(pred_logits, pred_masks, targets, assigned.query_marker, assigned.active, coords)
        with ops.use_backend(backend):
            got = matcher(pred_logits, pred_masks, targets, assigned.query_marker, assigned.active, coords)
    for (r1, c1), (r2, c2) in zip(got, expected):
        assert torch.equal(r1, r2) and torch.equal(c1, c2)


def _two_marker_case():
    """Q = 6, S = 3, d = 2; marker 1 absent in the only sample (queries 2, 3 dormant)."""
    scores = torch.tensor([[0.9, 0.1, 0.8]])
    assigned = ops.assign_queries(scores, torch.zeros(1, 2), torch.zeros(6, 2), dilation=2)
    pred_logits = torch.randn(1, 6, 3)
    pred_masks = torch.randn(1, 6, 4, 4)
    return pred_logits, pred_masks, assigned


def test_absent_marker_is_left_unmatched_with_a_warning():
    pred_logits, pred_masks, assigned = _two_marker_case()
    targets = [{"labels": torch.tensor([0, 1, 1]), "masks": torch.rand(3, 4, 4) > 0.5,
                "markers": torch.tensor([0, 1, 2])}]
    matcher = ConstrainedHungarianMatcher(num_points=16)
    with pytest.warns(UserWarning, match=r"ground truths 1 \(marker 1\) cannot be matched"):
        result = matcher.match(pred_logits, pred_masks, targets, assigned.query_marker, assigned.active)
    rows, cols = result.indices[0]
    assert cols.tolist() == [0, 2] and rows[0] in (0, 1) and rows[1] in (4, 5)
    assert result.unmatched[0].tolist() == [1] and matcher.num_unmatched == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is issued once per matcher; later cases are only counted
        matcher.match(pred_logits, pred_masks, targets, assigned.query_marker, assigned.active)
    assert matcher.num_unmatched == 2


def test_more_ground_truths_than_queries_of_a_marker():
    pred_logits, pred_masks, assigned = _two_marker_case()
    targets = [{"labels": torch.tensor([0, 0, 0]), "masks": torch.rand(3, 4, 4) > 0.5,
                "markers": torch.tensor([0, 0, 0])}]
    with pytest.warns(UserWarning):
        result = ConstrainedHungarianMatcher(num_points=16).match(pred_logits, pred_masks, targets,
                                                                  assigned.query_marker, assigned.active)
    rows, cols = result.indices[0]
    assert rows.tolist() == [0, 1] and len(result.unmatched[0]) == 1
    cost = result.cost[0].double().numpy()
    # The two matched are the cheapest pair of ground truths for queries 0 and 1.
    best = min(cost[0, a] + cost[1, b] for a in range(3) for b in range(3) if a != b)
    assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(best)


def test_raise_rule_and_no_active_queries():
    pred_logits, pred_masks, assigned = _two_marker_case()
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4), "markers": torch.tensor([1])}]
    with pytest.raises(ValueError, match=r"sample 0: ground truths 0 \(marker 1\) cannot be matched"):
        ConstrainedHungarianMatcher(num_points=8, on_unmatchable="raise")(
            pred_logits, pred_masks, targets, assigned.query_marker, assigned.active)
    none_active = torch.zeros(1, 6, dtype=torch.bool)
    targets[0]["markers"] = torch.tensor([-1])
    with pytest.warns(UserWarning):
        result = ConstrainedHungarianMatcher(num_points=8).match(pred_logits, pred_masks, targets,
                                                                 assigned.query_marker, none_active)
    assert result.indices[0][0].numel() == 0 and result.unmatched[0].tolist() == [0]


def test_nan_predictions_are_an_error():
    pred_logits, pred_masks, assigned = _two_marker_case()
    pred_masks[0, 0] = math.nan
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4), "markers": torch.tensor([0])}]
    with pytest.raises(ValueError, match="NaN"):
        ConstrainedHungarianMatcher(num_points=8)(pred_logits, pred_masks, targets, assigned.query_marker,
                                                  assigned.active)


def test_points_are_shared_and_reproducible():
    pred_logits, pred_masks, targets, assigned = make_case(2, 3, 2, 8, 3, seed=5)
    matcher = ConstrainedHungarianMatcher(num_points=20)
    coords = random_points(2, 33)
    result = matcher.match(pred_logits, pred_masks, targets, assigned.query_marker, assigned.active,
                           point_coords=coords)
    assert torch.equal(result.point_coords, coords) and torch.equal(matcher.last_point_coords, coords)
    matcher(pred_logits, pred_masks, targets, assigned.query_marker, assigned.active)
    assert matcher.last_point_coords.shape == (2, 20, 2)  # drawn by the call, kept for the loss
    a = matcher.match(pred_logits, pred_masks, targets, assigned.query_marker, assigned.active,
                      generator=torch.Generator().manual_seed(9))
    b = matcher.match(pred_logits, pred_masks, targets, assigned.query_marker, assigned.active,
                      generator=torch.Generator().manual_seed(9))
    assert a.point_coords.shape == (2, 20, 2) and torch.equal(a.point_coords, b.point_coords)


def test_targets_of_different_sizes_missing_markers_and_empty_samples():
    pred_logits = torch.randn(3, 4, 3)
    pred_masks = torch.randn(3, 4, 6, 6)
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 8, 8)},
               {"labels": torch.tensor([0, 2]), "masks": torch.zeros(2, 16, 12, dtype=torch.bool)},
               {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 16, 12)}]
    indices = ConstrainedHungarianMatcher(num_points=10)(pred_logits, pred_masks, targets, torch.tensor([0, 0, 1, 1]),
                                                         torch.ones(3, 4, dtype=torch.bool))
    assert [len(r) for r, _ in indices] == [1, 2, 0]
    assert indices[2][0].dtype == torch.int64


def test_constrained_assignment_rules():
    inf = math.inf
    cost = np.array([[1.0, inf], [inf, inf], [0.5, inf]])
    rows, cols = constrained_assignment(cost)
    assert rows.tolist() == [2] and cols.tolist() == [0]
    # Matching both ground truths costs 101; dropping one would cost 0 + (nothing): more matches win.
    cost = np.array([[1.0, 0.0], [inf, 100.0]])
    rows, cols = constrained_assignment(cost)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 1)]
    assert constrained_assignment(np.full((2, 2), inf))[0].size == 0


def test_allowed_pairs():
    allowed = allowed_pairs(torch.tensor([0, 0, 1, -1]), torch.tensor([[True, False, True, True]]),
                            torch.tensor([[0, 1, -1]]))
    assert allowed[0].int().tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(targets=a["targets"][:1]), "targets must be a list of 2 dicts"),
        (lambda a: a["targets"][0].update(markers=torch.tensor([5])), r"must be -1 \(unconstrained\) or a marker"),
        (lambda a: a["targets"][0].update(labels=torch.tensor([0.0])), "labels'] must be a long"),
        (lambda a: a["targets"][1].update(labels=torch.tensor([3])),
         r"targets\[1\]\['labels'\]\[0\] = 3 is not a class"),
        (lambda a: a["targets"][0].update(masks=torch.ones(2, 4, 4)), r"masks'] must be \[G=1,H,W\]"),
        (lambda a: a.update(active=a["active"].int()), "active must be a bool"),
        (lambda a: a.update(query_marker=a["query_marker"][:3]), "query_marker must be a long"),
        (lambda a: a.update(pred_masks=a["pred_masks"][:, :3]), r"pred_masks must be \[B,Q,h,w\]"),
        (lambda a: a.update(point_coords=torch.rand(2, 5, 3)), r"point_coords must be \[B,P,2\]"),
    ],
)
def test_bad_input(change, message):
    args = dict(pred_logits=torch.randn(2, 6, 3), pred_masks=torch.randn(2, 6, 4, 4),
                targets=[{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4), "markers": torch.tensor([1])}] * 2,
                query_marker=torch.tensor([0, 0, 1, 1, 2, 2]), active=torch.ones(2, 6, dtype=torch.bool))
    args["targets"] = [dict(t) for t in args["targets"]]
    change(args)
    with pytest.raises(ValueError, match=message):
        ConstrainedHungarianMatcher(num_points=8)(**args)


def test_constructor_checks():
    with pytest.raises(ValueError, match="on_unmatchable"):
        ConstrainedHungarianMatcher(on_unmatchable="relax")
    with pytest.raises(ValueError, match="num_points"):
        ConstrainedHungarianMatcher(num_points=0)


@pytest.mark.gpu
def test_gpu_matcher_at_training_size_matches_cpu():
    pred_logits, pred_masks, targets, assigned = make_case(20, 20, 5, 100, 10, num_classes=71, size=64, seed=2)
    coords = random_points(20, 12544, generator=torch.Generator().manual_seed(0))
    matcher = ConstrainedHungarianMatcher()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cpu = matcher.match(pred_logits, pred_masks, targets, assigned.query_marker, assigned.active, coords)
        cuda_targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
        gpu = matcher.match(pred_logits.cuda(), pred_masks.cuda(), cuda_targets, assigned.query_marker.cuda(),
                            assigned.active.cuda(), coords.cuda())
    torch.testing.assert_close(gpu.cost.cpu(), cpu.cost, atol=1e-3, rtol=1e-4)
    check_constraint(gpu, targets, assigned)
    for (r1, c1), (r2, c2), b in zip(gpu.indices, cpu.indices, range(20)):
        same = torch.equal(r1, r2) and torch.equal(c1, c2)
        # Near-ties may resolve differently in float32; the total cost must then agree.
        cost = cpu.cost[b].double()
        assert same or cost[r1, c1].sum().item() == pytest.approx(cost[r2, c2].sum().item(), abs=1e-3)
