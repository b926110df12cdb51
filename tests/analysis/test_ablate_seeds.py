"""``coavs ablate --seeds N``: one training per (variant config, seed), rows aggregated as mean ± std."""

from __future__ import annotations

import math

import pytest

from coavs.analysis.ablate import METRICS, aggregate_seeds, default_base_config, plan_trainings, select_variants


def test_every_seed_trains_its_own_run_and_shared_trainings_stay_shared(tmp_path):
    base = default_base_config(str(tmp_path / "data"), device="cpu")
    variants = select_variants("vanilla,strategy/fixed,strategy/ensemble,negatives/none,gate/class")
    runs = plan_trainings(base, variants, 5, tmp_path, seeds=range(3))
    assert len(runs) == 3 * 4  # vanilla; fixed; ensemble; negatives/none = gate/class — per seed
    assert sorted({r.seed for r in runs}) == [0, 1, 2]
    for run in runs:
        assert run.config["run"]["seed"] == run.seed
        names = {v.name for v in run.variants}
        if "gate/class" in names:
            assert names == {"negatives/none", "gate/class"} and run.config["negatives"]["ratio"] == 0.2
    assert len(plan_trainings(base, variants, 5, tmp_path)) == 4  # no seeds: the base's seed once, as before


def test_aggregate_seeds_is_mean_and_sample_std():
    rows = [{"seed": s, "frames": 10, "step_ms": ms, "run": f"r{s}", **{k: v for k in METRICS}}
            for s, (v, ms) in enumerate([(0.2, 10.0), (0.4, 30.0), (0.6, 20.0)])]
    rows[1]["counterfactual_iou"] = math.nan  # a NaN (no two-source frame) is left out, not averaged in
    out = aggregate_seeds(rows)
    assert out["seeds"] == 3 and out["step_ms"] == 20.0
    assert out["miou"] == pytest.approx(0.4) and out["miou_std"] == pytest.approx(0.2)
    assert out["counterfactual_iou"] == pytest.approx(0.4) and out["counterfactual_iou_std"] == pytest.approx(
        math.sqrt(0.08))
    assert aggregate_seeds(rows[:1])["miou_std"] == 0.0


def test_binary_data_ablates_b2s_mask_scheme(tmp_path, monkeypatch):
    """Supplementary B.2: on S4/MS3 the base debias is mask-only; the ablation used to hard-code ``separate``."""
    from coavs.analysis import ablate
    from tests.support.datasets import make_s4

    root = make_s4(tmp_path / "s4")
    base = default_base_config(str(root), device="cpu")
    variants = select_variants("vanilla,strategy/fixed,scheme/mask,scheme/separate")
    runs = {v.name: r for r in plan_trainings(base, variants, 5, tmp_path) for v in r.variants}
    assert runs["strategy/fixed"].config["debias"]["scheme"] == "mask"
    assert runs["strategy/fixed"] is runs["scheme/mask"]  # the base trains once
    assert runs["scheme/separate"].config["debias"]["scheme"] == "separate"  # an explicit scheme stays explicit
    semantic = plan_trainings(default_base_config(str(tmp_path / "none"), device="cpu"), variants, 5, tmp_path)
    assert {v.name for r in semantic for v in r.variants if r.config["debias"].get("scheme") == "separate"} == {
        "strategy/fixed", "scheme/separate"}
    # evaluation reads the run's resolved scheme
    seen = {}

    class Config:
        data = type("D", (), {"__dataclass_fields__": {}})()
        resolved = {"binary": True}

        def debias_config(self):
            from coavs.inference.settings import DebiasConfig
            return DebiasConfig().resolved(True)

    monkeypatch.setattr(ablate, "load_model", lambda *a, **k: (None, Config()))
    monkeypatch.setattr(ablate.dataclasses, "asdict", lambda data: {})
    monkeypatch.setattr(ablate, "open_eval_dataset", lambda config, split: "dataset")
    monkeypatch.setattr(ablate, "evaluate", lambda model, dataset, **kw: seen.update(kw) or {kw["modes"][0]: {}})
    variant = next(v for v in variants if v.name == "strategy/fixed")
    ablate.evaluate_variant(runs["strategy/fixed"], variant, "test", "cpu", 2, None, {})
    assert seen["scheme"] == "mask"
