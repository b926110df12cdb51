"""``coavs demo`` (``make demo``, ``python -m coavs.demo``): the visual prior and debias, end to end on a CPU.

1. ``coavs synth``: a Co-AVS set with a **strong visual prior**: in training a visible object is almost always
   sounding (silent with probability 0.03), in val/test half of the featured objects are visible but silent;
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
    return SynthConfig(num_clips=160, frames_per_clip=3, image_size=64,
                       classes=("violin", "dog", "car", "bird", "drum"), num_semantics=2, silent_prob=0.03,
                       eval_silent_prob=0.5, split_fractions=(0.7, 0.15, 0.15), seed=0)


QUICK_OVERRIDES = ["data.image_size=32", "data.batch_size=2", "model.hidden_dim=32", "model.num_layers=1",
                   "model.ffn_dim=64", "model.backbone_widths=[8,16,16,16]", "loss.num_points=64",
                   "stages=[{name: main, epochs: 1}]", "run.log_every=5"]


def demo_config(name: str, data_root: Path, cache: Path, quick: bool):
    from coavs.training.trainer import TrainConfig

    path = CONFIG_DIR / f"demo_{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(2, "demo config not found (the demo runs from a source checkout)", str(path))
    overrides = [f"data.root={data_root}", f"data.cache_dir={cache}"] + (QUICK_OVERRIDES if quick else [])
    return TrainConfig.from_file(path, overrides)


def run(out=None, quick: bool = False, keep: bool = False, progress: bool = True) -> int:
    """Runs the demo in ``out`` (default: a temporary folder, removed unless ``keep``); prints the table."""
    from coavs.data.synth import generate
    from coavs.eval.runner import evaluate, format_table
    from coavs.training.trainer import load_model, open_split, train

    started = time.perf_counter()
    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="coavs-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    timings = {}
    try:
        data = work / "data"
        step = time.perf_counter()
        summary = generate(data, synth_config(quick), overwrite=True, progress=False)
        stats = summary["stats"]
        timings["synth"] = time.perf_counter() - step
        print(f"[demo] Co-AVS set: {', '.join(f'{s} {stats[s]['clips']}' for s in ('train', 'val', 'test'))} clips; "
              f"visible-but-silent rate train {stats['train']['silent_rate']}, test {stats['test']['silent_rate']} "
              f"({timings['synth']:.0f} s)", flush=True)

        runs = {}
        for name in MODELS:
            config = demo_config(name, data, work / "cache", quick)
            config.run.progress = progress
            run_dir = work / "runs" / name
            if run_dir.exists():
                shutil.rmtree(run_dir)
            step = time.perf_counter()
            result = train(config, run_dir)
            timings[f"train_{name}"] = time.perf_counter() - step
            runs[name] = run_dir
            print(f"[demo] trained {name}: {result['step']} steps in {timings[f'train_{name}']:.0f} s "
                  f"(last epoch's loss {result['train_loss']:.3f})", flush=True)

        rows = {}
        step = time.perf_counter()
        for name, run_dir in runs.items():
            model, config = load_model(run_dir)
            test = open_split(config, "test")
            debias = config.debias_config()
            result = evaluate(model, test, batch_size=8, modes=("vanilla", "debias"), bias=True,
                              biased=debias.biased_audio, alpha=debias.alpha, scheme=debias.scheme)
            label = "vanilla-trained" if name == "vanilla" else "debias-trained"
            rows[f"{label}, plain inference"] = result["vanilla"]
            rows[f"{label}, debiased inference"] = result["debias"]
        timings["eval"] = time.perf_counter() - step
        frames = next(iter(rows.values()))["frames"]
        table = format_table(rows, title=f"Co-AVS test split ({frames} frames; about half of the visible objects "
                                         "are silent). mIoU/F: higher is better; FPR = share of pixels called "
                                         "sounding under silence / white noise / another clip's audio: lower is "
                                         "better.")
        timings["total"] = time.perf_counter() - started
        (work / "results.json").write_text(json.dumps({"rows": rows, "timings_s": timings}, indent=2))
        (work / "results.md").write_text(table + "\n")
        print()
        print(table)
        print()
        print("[demo] " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
              + (f"; everything is in {work}" if out or keep else ""))
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
    return run(args.out, args.quick, args.keep, progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
