"""``coavs demo`` (``make demo``, ``python -m coavs.demo``): the visual prior and debias, end to end on a CPU.

1. ``coavs synth``: a Co-AVS set with a **strong visual prior**: in training a visible object is almost always
   sounding (silent with probability 0.05), in val/test each featured object is silent with probability 0.5
   (at least one sounds per clip, so about a third end up silent);
2. trains one model per row from its ``configs/demo_<name>.yaml`` (same model, data and seed): ``vanilla``;
   ``debias`` — the paper's recipe: the vanilla run fine-tuned with the debias strategy (muted biased branch,
   debiased loss) at a tenth of the learning rate (``coavs train configs/demo_debias.yaml --init-from`` the vanilla
   run; ``configs/demo_debias_stages.yaml`` is the same recipe as one two-stage config); ``negatives``
   (negative-audio training: silence and noise teach the audio classifier that nothing sounds, another clip's
   audio with an empty target and counterfactual audio — one of a frame's sources alone, with only its pixels as
   the target — teach the segmentation; plus the classifier's gate, calibrated on the val split); ``combined``
   (the negatives run fine-tuned with the paper's debias). Two models train at a time, one process and one
   thread each; a fine-tuning starts when the run it starts from is done;
3. evaluates each on the test split as it is meant to be used and prints one table: mIoU, F, the
   false-positive rates (share of pixels called sounding) under silence, white noise and misaligned audio, the
   swapped false positives (the share of a visible but silent object's pixels called sounding while another
   visible object sounds alone — the visual-prior condition) and the counterfactual IoU (two sources visible, one
   played alone: IoU with the one playing).

``--seeds N`` repeats every training with seeds 0 … N−1 and reports mean ± std (docs/analysis.md holds the 3-seed
table and the timings). The numbers are whatever training gives; ``--out`` keeps the data, run folders,
``results.{json,md}`` (the JSON also holds every seed's row and the gated models' numbers without their gate) and
``results.png`` (the table as bars).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from coavs import jsonio
from coavs.arguments import ArgumentParser, check_arguments
from coavs.analysis.plots import figure, save
from coavs.data.splits import open_split
from coavs.data.synth import SynthConfig, generate
from coavs.errors import EXIT_USER_ERROR, UserError, one_line
from coavs.eval.gate import load_gate
from coavs.eval.runner import evaluate
from coavs.training.checkpoint import load_model

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
MODELS = ("vanilla", "debias", "negatives", "combined")
ROW_NAMES = {"vanilla": "vanilla", "debias": "paper debias (fine-tuned from vanilla)",
             "negatives": "negative + swapped audio + gate",
             "combined": "negative + swapped audio + gate, then paper debias"}
INIT_FROM = {"debias": "vanilla", "combined": "negatives"}  # fine-tunings start from these rows' runs
METRICS = ("miou", "fscore", "fpr_silence", "fpr_noise", "fpr_misaligned", "fp_swapped", "counterfactual_iou")


def synth_config(quick: bool):
    if quick:
        return SynthConfig(num_clips=24, frames_per_clip=2, image_size=32, classes=("violin", "dog", "car"),
                           silent_prob=0.03, eval_silent_prob=0.5, split_fractions=(0.5, 0.25, 0.25), seed=0)
    return SynthConfig(num_clips=190, frames_per_clip=3, image_size=64,
                       classes=("violin", "dog", "car", "bird", "drum"), num_semantics=2, silent_prob=0.05,
                       eval_silent_prob=0.5, split_fractions=(0.6, 0.1, 0.3), seed=0)


QUICK_OVERRIDES = ["data.image_size=32", "data.batch_size=2", "model.hidden_dim=32", "model.num_layers=1",
                   "model.ffn_dim=64", "model.backbone_widths=[8,16,16,16]", "loss.num_points=64",
                   "stages=[{name: main, epochs: 1}]", "run.log_every=5"]


def demo_overrides(data_root: Path, cache: Path, quick: bool) -> list[str]:
    return [f"data.root={data_root}", f"data.cache_dir={cache}"] + (QUICK_OVERRIDES if quick else [])


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _last_step(run_dir: Path) -> tuple[int, int | None]:
    """(last logged step, total steps) of a run in progress, from its log.jsonl."""
    path = run_dir / "log.jsonl"
    step, total = 0, None
    if path.is_file():
        for record in jsonio.read_jsonl(path, "training log", partial_end=True):
            total = record.get("total_steps", total)
            step = record.get("step", step)
    return step, total


def train_side_by_side(jobs: dict[str, tuple], work: Path, progress: bool) -> dict[str, float]:
    """Trains every ``name: (config file, overrides[, init_from job])`` as its own ``coavs train`` process on one
    thread, as many at once as the CPU has cores (a job with ``init_from`` waits for that job, then starts from
    its run: ``--init-from``); returns the seconds each took."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    at_once = max(1, min(len(jobs), _cores()))
    pending, running, seconds = list(jobs), {}, {}
    bars = {}
    if progress:
        bars = {name: tqdm(total=1, desc=f"train {name}", unit="step", position=i, leave=True, dynamic_ncols=True)
                for i, name in enumerate(jobs)}
    try:
        while pending or running:
            for name in list(pending):
                if len(running) >= at_once:
                    break
                path, overrides, *rest = jobs[name]
                source = rest[0] if rest else None
                if source is not None and source not in seconds:
                    continue  # its starting run is not trained yet
                pending.remove(name)
                command = [sys.executable, "-m", "coavs", "train", str(path), "--out", str(work / "runs" / name),
                           "--no-progress"] + [arg for o in overrides for arg in ("--set", o)]
                if source is not None:
                    command += ["--init-from", str(work / "runs" / source)]
                log = open(work / f"train_{name}.log", "w")
                running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log,
                                 time.perf_counter())
            time.sleep(0.5)
            for name, (process, log, began) in list(running.items()):
                if name in bars:
                    step, total = _last_step(work / "runs" / name)
                    if total:
                        bars[name].total = total
                    bars[name].n = step
                    bars[name].refresh()
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                seconds[name] = time.perf_counter() - began
                if process.returncode != 0:
                    tail = (work / f"train_{name}.log").read_text().strip().splitlines()[-5:]
                    raise RuntimeError(f"training {name} failed (exit {process.returncode}): " + " | ".join(tail))
    finally:
        for process, log, _ in running.values():
            process.terminate()  # the trainer saves a checkpoint and exits
            process.wait()
            log.close()
        for bar in bars.values():
            bar.close()
    return seconds


def evaluate_run(run_dir: Path, gated: bool = True) -> dict:
    """The test-split row of a demo run, in the inference it was trained for (debiased for a debias run, with
    its calibrated gate when it has one; ``gated`` False: without the gate)."""
    model, config = load_model(run_dir)
    debias = config.debias_config()
    mode = config.inference_mode()
    gate = load_gate(run_dir) if gated else None
    result = evaluate(model, open_split(config, "test"), batch_size=8, modes=(mode,), bias=True,
                      gate=gate, **debias.inference_settings())
    return result[mode]


def summarize(per_seed: dict[str, list[dict]]) -> dict[str, dict]:
    """``{row: [metrics per seed]}`` → ``{row: {metric: mean, metric_std: std (0 for one seed), seeds: n}}``."""
    out = {}
    for name, rows in per_seed.items():
        summary = {"seeds": len(rows), "frames": rows[0].get("frames")}
        for key in METRICS:
            values = [r[key] for r in rows if r.get(key) is not None and r[key] == r[key]]
            summary[key] = statistics.fmean(values) if values else float("nan")
            summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out[name] = summary
    return out


def format_summary(summary: dict[str, dict], title: str) -> str:
    """A Markdown table of :func:`summarize`'s rows (mean ± std when more than one seed)."""
    labels = ("mIoU", "F", "FPR silence", "FPR noise", "FPR misaligned", "FP swapped", "CF IoU")
    width = max(len(n) for n in summary)
    cells = {}
    for name, row in summary.items():
        cells[name] = [f"{row[k]:.4f}" + (f" ± {row[k + '_std']:.4f}" if row["seeds"] > 1 else "")
                       for k in METRICS]
    widths = [max(len(label), *(len(c[i]) for c in cells.values())) for i, label in enumerate(labels)]
    lines = [title, "", "| " + "model".ljust(width) + " | " + " | ".join(l.rjust(w) for l, w in zip(labels, widths))
             + " |", "|" + "-" * (width + 2) + "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
    for name, row in cells.items():
        lines.append("| " + name.ljust(width) + " | " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)


def plot_summary(summary: dict[str, dict], path) -> Path:
    """Grouped bars of :func:`summarize`'s rows: mIoU, counterfactual IoU and the three false-positive rates, in
    %, the error bar one standard deviation over seeds. Written as PNG to ``path``."""
    keys = ("miou", "counterfactual_iou", "fpr_silence", "fpr_noise", "fpr_misaligned", "fp_swapped")
    labels = ("mIoU ↑", "CF IoU ↑", "FPR\nsilence ↓", "FPR\nnoise ↓", "FPR\nmisaligned ↓", "FP\nswapped ↓")
    fig, axes = figure(8.0, 3.4)
    ax = axes[0, 0]
    width = 0.8 / max(len(summary), 1)
    x = np.arange(len(keys))
    for i, (name, row) in enumerate(summary.items()):
        values = [100 * row[k] for k in keys]
        errors = [100 * row[f"{k}_std"] for k in keys] if row["seeds"] > 1 else None
        ax.bar(x + (i - (len(summary) - 1) / 2) * width, values, width, yerr=errors, capsize=2, label=name)
    seeds = next(iter(summary.values()))["seeds"] if summary else 0
    ax.set_xticks(x, labels)
    ax.set_ylabel("% (test split)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Co-AVS demo, mean of {seeds} seed(s)" + (" ± std" if seeds > 1 else ""))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, frameon=False)
    return save(fig, path)


def run(out=None, quick: bool = False, keep: bool = False, progress: bool = True, seeds: int = 1,
        models=MODELS) -> int:
    """Runs the demo in ``out`` (default: a temporary folder, removed unless ``keep``); prints the table."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    started = time.perf_counter()
    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="coavs-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    timings = {}
    try:
        data = work / "data"
        step = time.perf_counter()
        summary = generate(data, synth_config(quick), overwrite=True, workers=min(2, _cores()), progress=False)
        stats = summary["stats"]
        timings["synth"] = time.perf_counter() - step
        counts = ", ".join(f"{split} {stats[split]['clips']}" for split in ("train", "val", "test"))
        print(f"[demo] Co-AVS set ({counts} clips): visible-but-silent rate {stats['train']['silent_rate']:.2f} in "
              f"train, {stats['test']['silent_rate']:.2f} in test ({timings['synth']:.0f} s)", flush=True)

        models = tuple(dict.fromkeys(m for name in models for m in (INIT_FROM.get(name), name) if m))
        jobs = {}
        for seed in range(seeds):
            for name in models:
                path = CONFIG_DIR / f"demo_{name}.yaml"
                if not path.is_file():
                    raise FileNotFoundError(2, "demo config not found (the demo runs from a source checkout)",
                                            str(path))
                source = f"{INIT_FROM[name]}-s{seed}" if name in INIT_FROM else None
                jobs[f"{name}-s{seed}"] = (path, demo_overrides(data, work / "cache", quick) + [f"run.seed={seed}"],
                                           source)
        step = time.perf_counter()
        took = train_side_by_side(jobs, work, progress)
        timings["train"] = time.perf_counter() - step
        print(f"[demo] trained {', '.join(f'{n} ({s:.0f} s)' for n, s in took.items())}", flush=True)

        per_seed: dict[str, list[dict]] = {ROW_NAMES[name]: [] for name in models}
        ungated: dict[str, list[dict]] = {}
        step = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for job in jobs:
                name = job.rsplit("-s", 1)[0]
                run_dir = work / "runs" / job
                per_seed[ROW_NAMES[name]].append(evaluate_run(run_dir))
                if (run_dir / "gate.json").is_file():
                    ungated.setdefault(f"{ROW_NAMES[name]} (no gate)", []).append(evaluate_run(run_dir, False))
        finally:
            torch.set_num_threads(threads)
        timings["eval"] = time.perf_counter() - step
        rows = summarize(per_seed)
        frames = next(iter(rows.values()))["frames"]
        title = (f"Co-AVS test split, {frames} frames, {seeds} seed(s){' (mean ± std)' if seeds > 1 else ''}; "
                 f"{stats['test']['silent_rate']:.0%} of the featured objects are visible but silent (train: "
                 f"{stats['train']['silent_rate']:.0%}). mIoU, F, CF IoU (counterfactual: one of two sources "
                 "played alone): higher is better. FPR: share of pixels called sounding under silence / white "
                 "noise / another clip's audio; FP swapped: share of a visible but silent object's pixels called "
                 "sounding while another visible object sounds alone: lower is better.")
        table = format_summary(rows, title)
        timings["total"] = time.perf_counter() - started
        jsonio.write_json(work / "results.json",
                          {"rows": rows, "per_seed": per_seed, "without_gate": summarize(ungated) if ungated else {},
                           "timings_s": timings, "train_seconds": took})
        (work / "results.md").write_text(table + "\n")
        plot_summary(rows, work / "results.png")
        print()
        print(table)
        print()
        print("[demo] " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
              + (f"; runs, data and results are in {work}" if out or keep else ""))
        return 0
    finally:
        if out is None and not keep:
            shutil.rmtree(work, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, shared by ``coavs demo`` and ``python -m coavs.demo``."""
    parser.add_argument("--out", help="work folder to keep (default: a temporary folder, removed afterwards)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds; the numbers mean nothing)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines while the models train")
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every model with seeds 0..N-1 and report mean ± std (default 1)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"rows to run (default: {','.join(MODELS)})")


def run_from_arguments(args) -> int:
    """Runs the demo as ``args`` (from :func:`add_arguments`) say; a bad ``--models`` is a :class:`UserError`."""
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise UserError(f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODELS)}")
    return run(args.out, args.quick, args.keep, progress=not args.no_progress and sys.stderr.isatty(),
               seeds=args.seeds, models=models)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m coavs.demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help exits 0; a mistake was printed as one line
        if exc.code in (0, None):
            raise
        return EXIT_USER_ERROR
    try:
        check_arguments(args)
        return run_from_arguments(args)
    except UserError as exc:
        print(f"python -m coavs.demo: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
