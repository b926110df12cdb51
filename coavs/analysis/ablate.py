"""The supplementary's ablations (D.1–D.3, plus the dilation of B.1) as one command: train the same base
configuration under each variant, evaluate each the same way, write one Markdown table.

Every variant changes one thing of the base run (debias ``fixed``, biased branch ``mute``, scheme ``auto`` — the
dataset's: ``mask`` for binary S4/MS3 (supplementary B.2), ``separate`` otherwise —, the base config's dilation, 2
in the ``small`` preset):

======================  =====================================================  ===================================
variant                 training                                               inference
======================  =====================================================  ===================================
vanilla                 no biased branch                                       vanilla
scheme/mask, /class,    debias on mask logits / class logits / both separately  debias, same scheme
/separate               (D.3)
scheme/overall,         debias of the per-pixel scores Σ softmax(c)·σ(m) /     the same reading
/overall_product        of the literal product Σ_q m·c of Eq. (1) (D.3),
                        trained with a per-pixel loss on them
biased/mute, /noise,    biased-branch audio (D.2; random_semantic: the audio   debias
/ddpm, /random_semantic of another frame whose markers differ)
strategy/fixed,         debias strategy (D.1)                                  debias with α fixed / α scaled by
/uncertainty,                                                                  the biased branch's confidence
/bias_only
strategy/ensemble       D.1's logits ensemble: L(b) + λ·L(v + sg(b)), a        vanilla (the branch trained in
                        product of experts with the biased branch              ensemble with the prior)
dilation/1, /2, /5      queries per marker d (B.1)                             debias
biased_queries/shared   the biased branch reuses the vanilla markers (the      debias
                        pre-D.2 behaviour; the base perceives its own)
negatives/none, /fixed, negative-audio training (the demo's recipe: ratio      vanilla (none) / debias
/uncertainty,           0.2; silence and noise train only the audio
/bias_only              classifier, misaligned audio with an empty target
                        and swapped audio with the playing source's pixels
                        the segmentation) with no debias or each strategy
negatives/unswapped     the recipe without swapped audio (ratio 0.15)          vanilla
negatives/segmentation  every kind through the segmentation loss (ratio 0.25)  vanilla
gate/probe              as vanilla (no retraining)                             vanilla + the ``any`` gate on a
                                                                               sounding probe fitted on train
gate/any, gate/class    as negatives/none                                      vanilla + the classifier gate,
                                                                               τ calibrated on the val split
======================  =====================================================  ===================================

``--seeds N`` (``seeds=``) trains every run with seeds 0 … N−1 and reports the mean ± std over seeds of every
metric (the counterfactual IoU included).

Variants whose training configs are identical share one training run (the base scheme — ``scheme/separate`` on
semantic data, ``scheme/mask`` on binary data —, ``biased/mute``, ``strategy/fixed`` and the base dilation are one
run). Runs live in
``<out>/runs/<name>/`` and are reused when their config matches and they finished (``--fresh`` retrains).

Columns: mIoU and F (the dataset's community metric: AVSS-style for Co-AVS/AVSS, S4/MS3-style for binary sets),
the false-positive rates under silence, white noise and misaligned audio (:func:`coavs.eval.runner.evaluate`),
and the median training step time (wall clock between steps, data loading included, first steps skipped).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coavs import jsonio
from coavs.analysis import plots
from coavs.analysis.common import open_eval_dataset
from coavs.analysis.tables import fmt, markdown_table, write_csv
from coavs.data.avsbench import detect_layout
from coavs.data.errors import DataError
from coavs.data.splits import BINARY_KINDS
from coavs.devices import resolve_device
from coavs.errors import UserError
from coavs.eval.gate import build_gate
from coavs.eval.runner import evaluate
from coavs.inference.combine import logit_strategy, resolve_scheme
from coavs.training.checkpoint import load_model
from coavs.training.config import ConfigError, TrainConfig
from coavs.training.trainer import train

SCHEMES = ("mask", "class", "separate", "overall")
BIASED = ("mute", "noise", "ddpm", "random_semantic")
STRATEGIES = ("fixed", "uncertainty", "bias_only", "ensemble")
DILATIONS = (1, 2, 5)
NEGATIVE_STRATEGIES = ("none", "fixed", "uncertainty", "bias_only")
GATES = ("any", "class")
# the demo's recipe: silence and noise train only the audio classifier, misaligned and swapped audio the segmentation
NEGATIVES = {"ratio": 0.2, "kinds": ["silence", "noise", "misaligned", "swapped"], "audio_only": ["silence", "noise"],
             "mode": "add"}
# the recipe before swapped (counterfactual) audio
UNSWAPPED_NEGATIVES = {"ratio": 0.15, "kinds": ["silence", "noise", "misaligned"], "audio_only": ["silence", "noise"],
                       "mode": "add"}
SEGMENTATION_NEGATIVES = {"ratio": 0.25, "kinds": ["silence", "noise", "misaligned"], "mode": "add"}
RUN_RECORD = "ablation_run.json"  # in each run folder: the config key, finished, step time
METRICS = ("miou", "fscore", "fpr_silence", "fpr_noise", "fpr_misaligned", "fp_swapped", "counterfactual_iou")
WARMUP_STEPS = 3  # steps left out of the step time (first-call overheads), when the run is long enough

BASE_DEBIAS = {"strategy": "fixed", "biased_audio": "mute", "scheme": "auto"}  # auto: B.2 from the dataset


@dataclass(frozen=True)
class Variant:
    """One row of the table: how it trains (``debias``: the config's debias section; ``model``: overrides of
    the base model) and how it is evaluated (``mode``, ``scheme``, ``strategy`` of
    :func:`coavs.eval.runner.evaluate`)."""

    name: str
    group: str
    debias: dict
    model: dict = field(default_factory=dict)
    mode: str = "debias"
    scheme: str = "auto"  # auto: the run's resolved scheme (mask for binary datasets, separate otherwise)
    strategy: str = "fixed"
    note: str = ""
    negatives: dict = field(default_factory=dict)  # the training config's negatives section ({}: off)
    gate: str = "none"  # inference gate: any | class | probe (any on a sounding probe), τ from the val split
    overall_reading: str = "score"


def all_variants() -> list[Variant]:
    """Every variant, in table order."""
    out = [Variant("vanilla", "baseline", {"strategy": "none"}, mode="vanilla", note="no biased branch")]
    for scheme in SCHEMES:
        out.append(Variant(f"scheme/{scheme}", "debias scheme (D.3)", {**BASE_DEBIAS, "scheme": scheme},
                           scheme=scheme, note="per-pixel scores" if scheme == "overall" else ""))
    out.append(Variant("scheme/overall_product", "debias scheme (D.3)",
                       {**BASE_DEBIAS, "scheme": "overall", "overall_reading": "product"}, scheme="overall",
                       overall_reading="product", note="literal mask × class logits"))
    for kind in BIASED:
        out.append(Variant(f"biased/{kind}", "biased-branch audio (D.2)", {**BASE_DEBIAS, "biased_audio": kind}))
    for strategy in STRATEGIES:
        out.append(Variant(f"strategy/{strategy}", "strategy (D.1)", {**BASE_DEBIAS, "strategy": strategy},
                           mode="vanilla" if strategy == "ensemble" else "debias", strategy=logit_strategy(strategy),
                           note="product of experts; vanilla branch at inference" if strategy == "ensemble" else ""))
    for d in DILATIONS:
        out.append(Variant(f"dilation/{d}", "dilation (B.1)", dict(BASE_DEBIAS), model={"dilation": d}))
    out.append(Variant("biased_queries/shared", "biased-branch queries (D.2)", dict(BASE_DEBIAS),
                       model={"biased_queries": "shared"}, note="vanilla markers reused"))
    for strategy in NEGATIVE_STRATEGIES:
        debias = {"strategy": "none"} if strategy == "none" else {**BASE_DEBIAS, "strategy": strategy}
        out.append(Variant(f"negatives/{strategy}", "negative audio", debias, negatives=dict(NEGATIVES),
                           mode="vanilla" if strategy == "none" else "debias",
                           strategy=logit_strategy(strategy)))
    out.append(Variant("negatives/unswapped", "negative audio", {"strategy": "none"},
                       negatives=dict(UNSWAPPED_NEGATIVES), mode="vanilla", note="without swapped audio"))
    out.append(Variant("negatives/segmentation", "negative audio", {"strategy": "none"},
                       negatives=dict(SEGMENTATION_NEGATIVES), mode="vanilla",
                       note="every kind through the segmentation loss"))
    out.append(Variant("gate/probe", "negative audio", {"strategy": "none"}, mode="vanilla", gate="probe",
                       note="vanilla run; sounding probe on train, τ on val"))
    for gate in GATES:
        out.append(Variant(f"gate/{gate}", "negative audio", {"strategy": "none"}, negatives=dict(NEGATIVES),
                           mode="vanilla", gate=gate, note="τ from the val split"))
    return out


VARIANT_NAMES = tuple(v.name for v in all_variants())


def select_variants(spec: str | None) -> list[Variant]:
    """Variants named in ``spec`` (comma-separated names, or group prefixes such as ``scheme`` or ``biased``);
    all when None or ``all``."""
    variants = all_variants()
    if spec is None or spec.strip() in ("", "all"):
        return variants
    chosen = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        matches = [v for v in variants if v.name == part or v.name.split("/")[0] == part]
        if not matches:
            raise ValueError(f"unknown variant {part!r}; known: {', '.join(VARIANT_NAMES)} (or a group: vanilla, "
                             "scheme, biased, strategy, dilation, biased_queries, negatives, gate)")
        chosen += [v for v in matches if v not in chosen]
    return chosen


def default_base_config(data_root: str, device: str = "auto") -> dict:
    """The base run of the ablation, the demo's CPU model and data (``configs/demo_vanilla.yaml``) trained with
    debias from the first step (not the demo's vanilla-then-fine-tune recipe): the ``small`` preset with 3 k-means
    clusters on log-mel audio, 64×64 frames, 4 clips × 2 annotated frames per step, AdamW at 1e-3 with 10 warm-up
    steps, poly decay and gradient clipping; debias ``fixed`` with muted audio, λ = 10; one thread on a CPU (small
    models train faster so)."""
    return {
        "data": {"root": str(data_root), "image_size": 64, "audio": "logmel", "batch_size": 4,
                 "frames_per_clip": 2, "cache_dir": "auto"},
        "model": {"preset": "small", "audio_input": "logmel", "num_clusters": 3},
        "loss": {"num_points": 1024},
        "optim": {"lr": 1e-3, "weight_decay": 0.05, "warmup_steps": 10, "schedule": "poly", "grad_clip": 1.0},
        "debias": {"strategy": "fixed", "biased_audio": "mute", "weight": 10.0, "alpha": 1.0},
        "run": {"device": device, "seed": 0, "log_every": 10, "threads": 1 if resolve_device(device) == "cpu" else None},
    }


def training_config(base: dict, variant: Variant, steps: int, progress: bool, seed: int | None = None) -> dict:
    """The variant's full training config (a dict for ``TrainConfig.from_dict``): ``base`` with the variant's
    debias section (keeping the base's ``weight``, ``alpha`` and ``aux``) and model overrides, and the base's
    stages replaced by one stage capped at ``steps`` steps (every variant sees the same data for as long), no
    evaluation during training."""
    config = copy.deepcopy(base)
    kept = {k: v for k, v in config.get("debias", {}).items() if k in ("weight", "alpha", "aux")}
    if variant.negatives:
        config["negatives"] = dict(variant.negatives)
    config["debias"] = {**kept, **variant.debias} if variant.debias.get("strategy") != "none" else dict(variant.debias)
    config["model"] = {**config.get("model", {}), **variant.model}
    config["stages"] = [{"name": "main", "epochs": 100000}]
    config["eval"] = {**config.get("eval", {}), "split": ""}
    config["run"] = {**config.get("run", {}), "max_steps": int(steps), "progress": bool(progress),
                     "checkpoint_every": 0}
    if seed is not None:
        config["run"]["seed"] = int(seed)
    return config


def _key(config: dict) -> str:
    """A short, stable name of a training config (ignoring progress display)."""
    stripped = copy.deepcopy(config)
    stripped.get("run", {}).pop("progress", None)
    text = json.dumps(stripped, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass
class TrainingRun:
    """One training shared by one or more variants."""

    key: str
    config: dict
    variants: list[Variant]
    run_dir: Path
    seed: int = 0
    step_ms: float = math.nan
    seconds: float = math.nan
    reused: bool = False


def plan_trainings(base: dict, variants: list[Variant], steps: int, out_dir: Path,
                   progress: bool = False, seeds=None) -> list[TrainingRun]:
    """Group ``variants`` by identical training config (per seed of ``seeds``; None: the base's seed, as
    before); one :class:`TrainingRun` each, in first-use order."""
    resolved = TrainConfig.from_dict(base).model_config().to_dict()
    binary = _binary_data(base)
    runs: dict[str, TrainingRun] = {}
    for seed in (list(seeds) if seeds is not None else [None]):
        for variant in variants:
            # a model override equal to the base's resolved value (e.g. the preset's dilation) is no change
            same = {k: v for k, v in variant.model.items() if resolved.get(k) != v}
            config = training_config(base, dataclasses.replace(variant, model=same), steps, progress, seed)
            if config["debias"].get("scheme") == "auto":  # B.2: the dataset's scheme, so equal trainings are shared
                config["debias"]["scheme"] = resolve_scheme("auto", binary)
            key = _key(config)
            if key not in runs:
                name = variant.name.replace("/", "-")
                run_dir = _existing_run_dir(out_dir, key) or out_dir / "runs" / f"{name}-{key}"
                runs[key] = TrainingRun(key, config, [], run_dir, seed=int(config["run"].get("seed", 0)))
            runs[key].variants.append(variant)
    return list(runs.values())


def _binary_data(base: dict) -> bool:
    """Whether the base config's dataset is binary (S4/MS3); False when its folder cannot be read yet."""
    data = base.get("data", {})
    kind = data.get("kind", "auto")
    if kind in ("auto", None):
        try:
            kind = detect_layout(data.get("root", ""))
        except (DataError, OSError, ValueError):
            return False
    return kind in BINARY_KINDS


def _existing_run_dir(out_dir: Path, key: str) -> Path | None:
    """The folder under ``<out>/runs`` that already holds the training of ``key`` (named after whichever variant
    first needed it, perhaps in an earlier call with other variants), finished ones first; None when there is none."""
    found = [path for path in sorted((Path(out_dir) / "runs").glob(f"*-{key}"))
             if (path / RUN_RECORD).is_file()]
    finished = [path for path in found if _stored_info(path).get("finished")]
    return (finished or found or [None])[0]


def _stored_info(run_dir: Path) -> dict:
    """A run folder's ``ablation_run.json`` ({} when it is missing, unreadable or malformed)."""
    try:
        return _read_record(run_dir / RUN_RECORD)
    except UserError:
        return {}


def _read_record(path: Path) -> dict:
    """The run record ``path`` (written by :func:`train_one`); a malformed one is a UserError naming it."""
    return jsonio.read_json_object(path, "ablation run record", fields={"key": str, "finished": bool},
                                   optional={"step_ms": (float, type(None)), "seconds": (float, type(None))})


def _nan_if_none(value) -> float:
    """A number read back from JSON, where an undefined one (NaN) is written as null."""
    return math.nan if value is None else float(value)


def train_one(run: TrainingRun, fresh: bool = False) -> None:
    """Train ``run``, recording the step time. A finished identical run is reused, an interrupted one resumed
    (unless ``fresh``). Ctrl-C or SIGTERM saves the run's checkpoint and raises KeyboardInterrupt."""
    info = run.run_dir / RUN_RECORD
    stored = _read_record(info) if not fresh and info.is_file() else None
    ours = stored is not None and stored["key"] == run.key
    if ours and stored["finished"]:
        run.step_ms, run.seconds = _nan_if_none(stored.get("step_ms")), _nan_if_none(stored.get("seconds"))
        run.reused = True
        return
    resume = ours and (run.run_dir / "checkpoints" / "last.pt").is_file()
    if run.run_dir.exists() and not resume:
        shutil.rmtree(run.run_dir)
    stamps: list[float] = []
    start = time.perf_counter()
    config = TrainConfig.from_dict(run.config)
    record = lambda step, terms: stamps.append(time.perf_counter())  # noqa: E731
    try:
        summary = train(config, run.run_dir, resume=resume, on_step=record)
    except ConfigError:
        if not resume:
            raise
        shutil.rmtree(run.run_dir)  # the stored run does not match after all: start over
        summary = train(config, run.run_dir, on_step=record)
    run.seconds = time.perf_counter() - start
    # gaps between the ends of consecutive steps: the first step (set-up, first calls) is never in one; the
    # next WARMUP_STEPS - 1 are dropped too when enough remain
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(gaps) > 2 * WARMUP_STEPS:
        gaps = gaps[WARMUP_STEPS - 1:]
    run.step_ms = 1e3 * statistics.median(gaps) if gaps else math.nan
    jsonio.write_json(info, {"key": run.key, "finished": bool(summary.get("finished")), "steps": summary.get("step"),
                             "step_ms": run.step_ms, "seconds": run.seconds, "variants": [v.name for v in run.variants]})
    if summary.get("stopped") in ("SIGINT", "SIGTERM"):
        raise KeyboardInterrupt(f"stopped during {run.run_dir.name}; run the same command again to resume")


def evaluate_variant(run: TrainingRun, variant: Variant, split: str, device: str, batch_size: int,
                     max_clips: int | None, dataset_cache: dict) -> dict:
    """The variant's metrics on ``split``: ``miou``, ``fscore``, ``fpr_silence``, ``fpr_noise``,
    ``fpr_misaligned`` (and ``frames``)."""
    model, config = load_model(run.run_dir, device=resolve_device(device))
    data_key = json.dumps(dataclasses.asdict(config.data), sort_keys=True) + split
    if data_key not in dataset_cache:
        dataset_cache[data_key] = open_eval_dataset(config, split)
    debias = config.debias_config()
    gate = None
    if variant.gate != "none":
        gate_key = data_key + "|val"
        if gate_key not in dataset_cache:
            dataset_cache[gate_key] = open_eval_dataset(config, "val")
        probe = variant.gate == "probe"  # the any gate on a sounding probe fitted on the training split
        gate, _ = build_gate(model, dataset_cache[gate_key], "any" if probe else variant.gate,
                             training=open_eval_dataset(config, "train") if probe else None,
                             device=resolve_device(device))
    scheme = resolve_scheme(variant.scheme, bool(config.resolved.get("binary", False)))
    rows = evaluate(model, dataset_cache[data_key], batch_size=batch_size, device=resolve_device(device),
                    modes=(variant.mode,), bias=True, biased=debias.biased_audio, alpha=debias.alpha,
                    scheme=scheme, strategy=variant.strategy, max_clips=max_clips,
                    overall_reading=variant.overall_reading, gate=gate)
    return rows[variant.mode]


@dataclass
class AblationResult:
    rows: list[dict]
    runs: list[TrainingRun]
    seconds: float
    steps: int
    split: str
    seeds: int = 1


def run_ablation(base: dict, variants: list[Variant], out_dir, *, steps: int = 600, split: str = "test",
                 device: str = "auto", batch_size: int = 4, max_clips: int | None = None, fresh: bool = False,
                 progress: bool = True, log=print, seeds: int | None = None) -> AblationResult:
    """Train and evaluate every variant; write ``ablation.md``, ``ablation.csv`` and ``ablation.png`` in
    ``out_dir``. ``log``: where one line per finished training goes. ``seeds``: train every run with seeds
    0 … N−1; each row then holds the mean over seeds and ``<metric>_std`` (None: one run with the base's seed)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if not variants:
        raise ValueError("no variant to run")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = plan_trainings(base, variants, steps, out_dir, progress, range(seeds) if seeds is not None else None)
    per_seed: dict[str, list[dict]] = {}
    datasets: dict = {}
    for i, run in enumerate(runs, 1):
        names = ", ".join(v.name for v in run.variants)
        train_one(run, fresh)
        log(f"[{i}/{len(runs)}] {names} (seed {run.seed}): {'reused' if run.reused else 'trained'} {steps} steps, "
            f"{run.step_ms:.0f} ms/step -> {run.run_dir}")
        for variant in run.variants:
            metrics = evaluate_variant(run, variant, split, device, batch_size, max_clips, datasets)
            per_seed.setdefault(variant.name, []).append(
                {"seed": run.seed, **{k: metrics.get(k) for k in (*METRICS, "frames")}, "step_ms": run.step_ms,
                 "run": str(run.run_dir)})
    rows = []
    for v in variants:
        row = {"variant": v.name, "group": v.group, "note": v.note, "mode": v.mode, "scheme": v.scheme,
               "strategy": v.strategy, "gate": v.gate}
        row.update(aggregate_seeds(per_seed[v.name]))
        rows.append(row)
    result = AblationResult(rows, runs, time.perf_counter() - start, steps, split, seeds or 1)
    write_ablation_outputs(result, out_dir, base)
    return result


def aggregate_seeds(rows: list[dict]) -> dict:
    """Per-seed rows → the mean of every metric (NaNs left out), ``<metric>_std`` (sample std; 0 for one seed),
    ``seeds`` and ``runs`` (the run folders); ``frames`` and ``step_ms`` as the first row's / the median."""
    out = {"seeds": len(rows), "frames": rows[0].get("frames"),
           "step_ms": statistics.median([r["step_ms"] for r in rows]), "run": ";".join(r["run"] for r in rows)}
    for key in METRICS:
        values = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
        out[key] = statistics.fmean(values) if values else math.nan
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


# ------------------------------------------------------------------------------------------------- output
COLUMNS = [("miou", "mIoU ↑"), ("fscore", "F ↑"), ("fpr_silence", "FPR silence ↓"),
           ("fpr_noise", "FPR noise ↓"), ("fpr_misaligned", "FPR misaligned ↓"), ("fp_swapped", "FP swapped ↓"),
           ("counterfactual_iou", "CF IoU ↑")]


def ablation_markdown(result: AblationResult, base: dict) -> str:
    """The Markdown table (metrics in %, step time in ms) with a short header saying what was run."""
    header = ["variant", *(label for _, label in COLUMNS), "step (ms)", "note"]
    body = []
    for row in result.rows:
        cells = [fmt(row[key]) + (f" ± {fmt(row[key + '_std'])}" if result.seeds > 1 else "") for key, _ in COLUMNS]
        body.append([row["variant"], *cells, fmt(row["step_ms"], 0, percent=False), row["note"]])
    data = base.get("data", {})
    model = base.get("model", {})
    frames = result.rows[0].get("frames") if result.rows else None
    lines = [
        "# Ablation", "",
        f"Each run: {result.steps} training steps, {result.seeds} seed(s)"
        f"{' (mean ± std over seeds)' if result.seeds > 1 else ''} of the `{model.get('preset', 'custom')}` "
        "model on "
        f"`{data.get('root', '?')}` (batch {data.get('batch_size', '?')} clips); evaluated on the "
        f"{result.split} split ({frames} annotated frames). Metrics in %; FPR = share of pixels called sounding "
        "when the audio is silence / white noise / another clip's (lower is better). Step time: median wall "
        "clock per training step. Trainings: "
        f"{sum(not r.reused for r in result.runs)} run, {sum(r.reused for r in result.runs)} reused; "
        f"total {result.seconds / 60:.1f} min.", "",
        markdown_table(header, body, ["l"] + ["r"] * (len(header) - 2) + ["l"]),
    ]
    return "\n".join(lines)


def write_ablation_outputs(result: AblationResult, out_dir, base: dict) -> dict[str, Path]:
    out_dir = Path(out_dir)
    md = out_dir / "ablation.md"
    md.write_text(ablation_markdown(result, base))
    return {"markdown": md, "table": write_csv(result.rows, out_dir / "ablation.csv"),
            "figure": plot_ablation(result, out_dir / "ablation.png")}


def _number(value) -> float:
    """A metric for a bar: 0 where it is missing or NaN (the table says "-")."""
    return 0.0 if value is None or value != value else float(value)


def plot_ablation(result: AblationResult, path) -> Path:
    """Horizontal bars per variant: mIoU (left), the three FPRs and the swapped false positives (right)."""
    rows = result.rows
    y = np.arange(len(rows))
    fig, axes = plots.figure(9.0, 0.32 * len(rows) + 1.4, 1, 2, sharey=True, layout="constrained")
    left, right = axes[0]
    left.barh(y, [100 * (r["miou"] or 0) for r in rows], color=plots.MAIN_COLOUR, label="mIoU")
    left.barh(y, [100 * (r["fscore"] or 0) for r in rows], height=0.3, color="tab:cyan", label="F")
    left.set_xlabel("mIoU / F (%) — higher is better")
    left.set_yticks(y, [r["variant"] for r in rows])
    left.invert_yaxis()
    left.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    left.grid(axis="x", alpha=0.3)
    for i in range(1, len(rows)):  # a line between groups of variants
        if rows[i]["group"] != rows[i - 1]["group"]:
            for ax in (left, right):
                ax.axhline(i - 0.5, color="black", linewidth=0.6, alpha=0.5)
    width = 0.2
    for k, (key, name, colour) in enumerate((("fpr_silence", "silence", "tab:gray"),
                                              ("fpr_noise", "noise", "tab:orange"),
                                              ("fpr_misaligned", "misaligned", "tab:red"),
                                              ("fp_swapped", "swapped (silent object)", "tab:purple"))):
        right.barh(y + (k - 1.5) * width, [100 * _number(r.get(key)) for r in rows], height=width, color=colour,
                   label=name)
    right.set_xlabel("false positives (% of pixels; swapped: of the silent object) — lower is better")
    right.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    right.grid(axis="x", alpha=0.3)
    fig.suptitle(f"ablation: {result.steps} steps per run, {result.split} split")
    return plots.save(fig, path)
