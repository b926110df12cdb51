"""``coavs demo`` (``make demo``, ``python -m coavs.demo``): the visual prior and debias, end to end on a CPU.

1. ``coavs synth``: a Co-AVS set with a **strong visual prior**: in training a visible object is almost always
   sounding (silent with probability 0.05), in val/test each featured object is silent with probability 0.5
   (at least one sounds per clip, so about a third end up silent);
2. trains ``configs/demo_vanilla.yaml`` and ``configs/demo_debias.yaml`` (same model, data, steps and seed; the
   second adds the muted biased branch and the debiased loss);
3. evaluates both on the test split, each with plain and debiased inference, and prints one table: mIoU, F, and
   the false-positive rates (share of pixels called sounding) under silence, white noise and misaligned audio.

The numbers are whatever training gives; ``--out`` keeps the data, run folders and ``results.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
MODELS = ("vanilla", "debias")


def synth_config(quick: bool):
    from coavs.data.synth import SynthConfig

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
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _last_step(run_dir: Path) -> tuple[int, int | None]:
    """(last logged step, total steps) of a run in progress, from its log.jsonl."""
    path = run_dir / "log.jsonl"
    step, total = 0, None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line being written
                continue
            total = record.get("total_steps", total)
            step = record.get("step", step)
    return step, total


def train_side_by_side(jobs: dict[str, tuple[Path, list[str]]], work: Path, progress: bool) -> dict[str, float]:
    """Trains every ``name: (config file, overrides)`` as its own ``coavs train`` process on one thread, all at
    once when the CPU has a core per job (else one after the other); returns the seconds each took."""
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    at_once = len(jobs) if _cores() >= len(jobs) else 1
    pending, running, seconds = list(jobs), {}, {}
    bars = {}
    if progress:
        from tqdm import tqdm

        bars = {name: tqdm(total=1, desc=f"train {name}", unit="step", position=i, leave=True, dynamic_ncols=True)
                for i, name in enumerate(jobs)}
    try:
        while pending or running:
            while pending and len(running) < at_once:
                name = pending.pop(0)
                path, overrides = jobs[name]
                command = [sys.executable, "-m", "coavs", "train", str(path), "--out", str(work / "runs" / name),
                           "--no-progress"] + [arg for o in overrides for arg in ("--set", o)]
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


def run(out=None, quick: bool = False, keep: bool = False, progress: bool = True) -> int:
    """Runs the demo in ``out`` (default: a temporary folder, removed unless ``keep``); prints the table."""
    import torch

    from coavs.data.synth import generate
    from coavs.eval.runner import evaluate, format_table
    from coavs.training.trainer import load_model, open_split

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

        jobs = {}
        for name in MODELS:
            path = CONFIG_DIR / f"demo_{name}.yaml"
            if not path.is_file():
                raise FileNotFoundError(2, "demo config not found (the demo runs from a source checkout)", str(path))
            jobs[name] = (path, demo_overrides(data, work / "cache", quick))
        step = time.perf_counter()
        took = train_side_by_side(jobs, work, progress)
        timings["train"] = time.perf_counter() - step
        print(f"[demo] trained {' and '.join(f'{n} ({s:.0f} s)' for n, s in took.items())}", flush=True)

        rows = {}
        step = time.perf_counter()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for name in MODELS:
                model, config = load_model(work / "runs" / name)
                debias = config.debias_config()
                result = evaluate(model, open_split(config, "test"), batch_size=8, modes=("vanilla", "debias"),
                                  bias=True, biased=debias.biased_audio, alpha=debias.alpha, scheme=debias.scheme)
                trained = "vanilla-trained" if name == "vanilla" else "debias-trained"
                rows[f"{trained}, plain inference"] = result["vanilla"]
                rows[f"{trained}, debiased inference"] = result["debias"]
        finally:
            torch.set_num_threads(threads)
        timings["eval"] = time.perf_counter() - step
        frames = next(iter(rows.values()))["frames"]
        title = (f"Co-AVS test split, {frames} frames; {stats['test']['silent_rate']:.0%} of the featured objects "
                 "are visible but silent (train: "
                 f"{stats['train']['silent_rate']:.0%}). "
                 "mIoU, F: higher is better. FPR: share of pixels called sounding under silence / white noise / "
                 "another clip's audio: lower is better.")
        table = format_table(rows, title=title)
        timings["total"] = time.perf_counter() - started
        (work / "results.json").write_text(json.dumps({"rows": rows, "timings_s": timings}, indent=2))
        (work / "results.md").write_text(table + "\n")
        print()
        print(table)
        print()
        print("[demo] " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
              + (f"; runs, data and results are in {work}" if out or keep else ""))
        return 0
    finally:
        if out is None and not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coavs.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="work folder to keep (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds; the numbers mean nothing)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    return run(args.out, args.quick, args.keep, progress=not args.no_progress and sys.stderr.isatty())


if __name__ == "__main__":
    sys.exit(main())
