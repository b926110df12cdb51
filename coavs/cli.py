"""The ``coavs`` command line. Each subcommand is a function ``cmd_<name>(args)`` plus its parser setup.

User mistakes (bad paths, bad values, unreadable files) end with one clear line on stderr and exit code 1, not a
traceback: every layer raises :class:`coavs.errors.UserError` (or a subclass) and :func:`main` alone prints it.
Mistakes in the arguments themselves follow the same rule (:mod:`coavs.arguments`: one parser class, and checks by
option name that every command inherits).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coavs import demo, info
from coavs import jsonio
from coavs.arguments import ArgumentParser, check_arguments
from coavs.analysis.commands import register as register_analysis
from coavs.data.errors import DataError
from coavs.data.splits import check_same_classes, open_split
from coavs.data.synth import CLASS_NAMES, SynthConfig, generate
from coavs.data.verify import report_json, verify_dataset
from coavs.devices import resolve_device
from coavs.errors import EXIT_USER_ERROR, UserError, one_line  # UserError re-exported: coavs.cli.UserError
from coavs.eval import predict
from coavs.eval.gate import build_gate, load_gate, save_gate
from coavs.eval.runner import evaluate, evaluation_notes, format_table
from coavs.inference.combine import INFERENCE_MODES, check_mode, logit_strategy
from coavs.preprocess.commands import register as register_preprocess
from coavs.training.checkpoint import load_model
from coavs.training.config import TrainConfig
from coavs.training.markers import fit_markers
from coavs.training.trainer import train


def cmd_info(args) -> int:
    data = info.collect()
    print(jsonio.dumps(data, indent=2, default=str) if args.json else info.format_report(data))
    return 0


def cmd_fit_markers(args) -> int:
    if args.clusters < 1:
        raise UserError(f"--clusters must be >= 1, got {args.clusters}")
    if args.data is None and args.vggish is None:
        raise UserError("give --data DATASET_FOLDER (log-mel descriptors) and/or --vggish FEATURE_FOLDER")
    try:
        path, fit, count, clips = fit_markers(args.out, args.clusters, data=args.data, vggish=args.vggish,
                                              split=args.split, iters=args.iters, seed=args.seed,
                                              progress=not args.quiet)
    except (DataError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"{args.clusters} clusters fitted on {count} descriptors from {clips} clips "
          f"(mean squared distance {fit.inertia:.3f} in standardised units) -> {path}")
    return 0


def _parse_range(text: str, name: str, kind=int):
    """``"2"`` -> 2, ``"1-3"`` -> (1, 3) (``kind`` int or float)."""
    try:
        parts = [kind(p) for p in text.split("-")] if text.count("-") <= 1 and not text.startswith("-") else []
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise UserError(f"{name} must be a number or a range MIN-MAX, got {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def cmd_synth(args) -> int:
    classes = CLASS_NAMES if args.classes is None else tuple(c.strip() for c in args.classes.split(",") if c.strip())
    try:
        config = SynthConfig(
            num_clips=args.clips, frames_per_clip=args.frames, image_size=args.size, classes=classes,
            num_semantics=_parse_range(args.semantics, "--semantics"),
            instances_per_semantic=_parse_range(args.instances, "--instances"),
            object_area=_parse_range(args.area, "--area", float),
            num_distractors=_parse_range(args.distractors, "--distractors"),
            silent_prob=args.silent_prob, eval_silent_prob=args.eval_silent_prob,
            train_annotation=args.train_annotation, sample_rate=args.sample_rate, frame_format=args.frame_format,
            seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    start = time.perf_counter()
    try:
        summary = generate(args.out, config, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    except FileExistsError as exc:
        raise UserError(str(exc)) from None
    stats = summary["stats"]
    counts = ", ".join(f"{split} {stats[split]['clips']}" for split in ("train", "val", "test"))
    silent = ", ".join(f"{split} {stats[split]['silent_rate']}" for split in ("train", "val", "test")
                       if stats[split]["silent_rate"] is not None)
    h, w = config.frame_hw
    print(f"{config.num_clips} clips ({counts}), {len(config.classes)} classes, {config.frames_per_clip} frames of "
          f"{w}x{h}, in {time.perf_counter() - start:.1f} s -> {summary['root']}")
    print(f"visible-but-silent rate per split: {silent}")
    return 0


def cmd_verify(args) -> int:
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    try:
        report = verify_dataset(args.root, args.kind, deep=not args.quick, workers=args.workers, limit=args.limit,
                                progress=not args.quiet and not args.json)
    except (DataError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(report_json(report) if args.json else report.format(max_problems=args.max_problems))
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------ train / eval / predict / bench
def cmd_train(args) -> int:
    overrides = list(args.set or [])
    if args.no_progress:
        overrides.append("run.progress=false")
    if args.init_from is not None:
        if args.resume:
            raise UserError("--init-from starts a new run from another run's weights; a resumed run has its own")
        overrides.append(f"run.init_from={jsonio.dumps(str(Path(args.init_from).absolute()))}")
    if args.config is None:
        if not args.resume:
            raise UserError("give a CONFIG file (YAML or JSON), or --resume to continue the run in --out")
        config = TrainConfig.from_file(Path(args.out) / "config.json", overrides)
    else:
        config = TrainConfig.from_file(args.config, overrides)
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be >= 1, got {args.max_steps}")
    summary = train(config, args.out, resume=args.resume, max_steps=args.max_steps)
    if os.environ.get("RANK", "0") != "0":
        return 0
    if summary["finished"]:
        line = f"trained {summary['step']} steps in {summary['seconds']:.1f} s -> {summary['run_dir']}"
        if summary.get("train_loss") is not None:
            line += f" (last epoch's loss {summary['train_loss']:.4f})"
        print(line)
        if summary.get("eval"):
            print(format_table(summary["eval"], title=f"{config.eval.split} split"))
    else:
        print(f"stopped ({summary['stopped']}) at step {summary['step']} of {summary['total_steps']}; "
              f"continue with: coavs train --resume --out {summary['run_dir']}")
    return 0


def _eval_settings(args, config):
    debias = config.debias_config()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else config.eval_modes()
    for mode in modes:
        try:
            check_mode(mode)
        except ValueError as exc:
            raise UserError(f"--modes: {exc}") from None
    strategy = args.strategy or logit_strategy(debias.strategy)
    gate = None if getattr(args, "no_gate", False) else load_gate(args.run)  # the run's calibrated gate.json
    return dict(modes=modes, biased=args.biased or debias.biased_audio,
                alpha=debias.alpha if args.alpha is None else args.alpha, scheme=args.scheme or debias.scheme,
                strategy=strategy, overall_reading=getattr(args, "overall_reading", None) or debias.overall_reading,
                gate=gate)


def cmd_eval(args) -> int:
    device = resolve_device(args.device)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, config = load_model(args.run, device)
    protocol = args.protocol or config.eval.protocol
    batch_size = args.batch_size or (config.eval.batch_size if protocol == "per_batch" else 8)
    if args.data:
        config.data.root, config.data.kind = args.data, "auto"
    settings = _eval_settings(args, config)
    dataset = open_split(config, args.split)
    if len(dataset) == 0:
        raise UserError(f"the {args.split} split of {config.data.root} has no clips")
    check_same_classes(dataset, config.resolved.get("class_names"), model.config.num_classes, config.data.root)
    rows = evaluate(model, dataset, batch_size=batch_size, device=device, bias=not args.no_bias,
                    max_clips=args.max_clips, seed=args.seed, precision=config.run.precision,
                    progress=not args.quiet and not args.json, protocol=protocol, **settings)
    if args.out:
        jsonio.write_json(args.out, rows)
    notes = evaluation_notes(dataset, rows[settings["modes"][0]])  # what this dataset could not measure
    if args.json:
        print(jsonio.dumps(rows, indent=2))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        title = (f"{args.split} split of {config.data.root}: {rows[settings['modes'][0]]['frames']} frames; "
                 "mIoU/F higher is better, FPR (sounding pixels under negative audio) and FP swapped (the silent "
                 "object's pixels called sounding while another visible object sounds) lower is better")
        print(format_table(rows, title=title))
        for note in notes:
            print(f"note: {note}")
    return 0


def cmd_gate(args) -> int:
    if not 0.0 < args.keep <= 1.0:
        raise UserError(f"--keep must be in (0, 1], got {args.keep}")
    if args.probe and args.mode != "any":
        raise UserError("--probe gates whole frames: use it with --mode any")
    device = resolve_device(args.device)
    model, config = load_model(args.run, device)
    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent.parent
    calibration = open_split(config, args.split)
    if len(calibration) == 0:
        raise UserError(f"the {args.split} split of {config.data.root} has no clips to calibrate the gate on")
    try:
        gate, stats = build_gate(model, calibration, args.mode, args.keep,
                                 training=open_split(config, "train") if args.probe else None, device=device,
                                 max_clips=args.max_clips, seed=args.seed, precision=config.run.precision)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if "probe" in stats:
        fit = stats["probe"]
        print(f"sounding probe: {fit['positives']} sounding frames against {fit['negatives']} silence/noise ones "
              f"of the train split, accuracy {fit['accuracy']:.3f}")
    path = save_gate(run_dir, gate, stats, args.split)
    print(f"gate {gate.mode}{' + probe' if gate.probe is not None else ''}: tau {gate.threshold:.4f} keeps "
          f"{stats['positive_kept']:.1%} of the {args.split} split's sounding cases and gates "
          f"{stats['negative_gated']:.1%} of their silence/noise versions -> {path} (coavs eval applies it)")
    return 0


def cmd_predict(args) -> int:
    if (args.frames is None) == (args.video is None):
        raise UserError("give exactly one of --frames FOLDER and --video FILE")
    device = resolve_device(args.device)
    model, config = load_model(args.run, device)
    try:
        if args.frames is not None:
            frames, names = predict.read_frame_folder(args.frames)
            track = None
        else:
            frames, names, track = predict.read_video(args.video)
        audio = predict.audio_features(config.data.audio, len(frames), wav=args.audio,
                                       waveform=None if args.audio else track, vggish=args.vggish)
        markers = predict.clip_markers(config, args.markers, len(frames), model.config.num_markers)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    mode = args.mode or config.inference_mode()
    gate = None if args.no_gate else load_gate(args.run)  # the run's calibrated gate.json, as coavs eval
    labels, scores = predict.predict_clip(model, config, frames, audio, mode=mode, device=device, gate=gate,
                                          markers=markers)
    class_names = config.resolved.get("class_names") or [str(i) for i in range(model.config.num_classes)]
    summary = predict.write_predictions(args.out, frames, names, labels, scores, class_names,
                                        bool(config.resolved.get("binary", False)))
    shares = [f["sounding_fraction"] for f in summary["frames"]]
    print(f"{len(frames)} frames ({mode}): sounding pixels {100 * min(shares):.1f}-{100 * max(shares):.1f}% per "
          f"frame -> {args.out}/masks, {args.out}/overlays, {args.out}/predictions.json")
    return 0


def find_benchmarks(repo: str | None = None):
    """The repository root holding ``benchmarks/common.py``: ``repo``, the working directory, or the checkout
    this package was installed from (editable installs); None when there is none."""
    candidates = [Path(repo)] if repo else [Path.cwd(), Path(__file__).resolve().parent.parent]
    for root in candidates:
        if (root / "benchmarks" / "common.py").is_file():
            return root.resolve()
    return None


def writable_folder(path, option: str) -> Path:
    """``path`` resolved, created if missing, and proven writable (a file is created and removed in it); a
    :class:`UserError` naming ``option`` otherwise."""
    folder = Path(path).resolve()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".coavs-write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return folder


def cmd_bench(args) -> int:
    root = find_benchmarks(args.repo)
    if root is None:
        where = args.repo or "the working directory or next to the installed package"
        raise UserError(f"no benchmarks/ folder in {where}: `coavs bench` runs the benchmark modules of a source "
                        "checkout; run it from the repository root or pass --repo PATH")
    available = sorted(p.stem[len("bench_"):] for p in (root / "benchmarks").glob("bench_*.py"))
    if args.list:
        print("\n".join(available))
        return 0
    chosen = args.names or available
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise UserError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available)}")
    out = writable_folder(args.out, "--out")  # before minutes of benchmarking, not after
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    failed = []
    for name in chosen:
        command = [sys.executable, "-m", f"benchmarks.bench_{name}"] + (["--quick"] if args.quick else [])
        if args.device:
            command += ["--device", args.device]
        command += ["--out", str(out)]  # never into the source checkout by default
        print(f"== {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, cwd=root, env=env).returncode != 0:
            failed.append(name)
    if failed:
        print(f"coavs bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    return demo.run_from_arguments(args)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="coavs",
        description="Audio-visual segmentation that resists audio priming bias and visual prior: data, training, "
                    "evaluation, analyses and kernel benchmarks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="versions, devices and the backends each op can use")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("fit-markers", help="fit the k-means audio markers on a training set (saved to a file)")
    p.add_argument("--data", help="dataset folder (AVSBench layout or a `coavs synth` set); descriptors from its wavs")
    p.add_argument("--vggish", help="folder of AVSBench VGGish feature files <uid>.npy (for audio_input=vggish)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--clusters", type=int, required=True, help="number of clusters (ModelConfig.num_clusters)")
    p.add_argument("--iters", type=int, default=100, help="k-means iterations at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="marker file to write (load with AVSModel.load_markers)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit_markers)

    p = sub.add_parser("synth", help="write a synthetic Co-AVS dataset (AVSS layout)")
    p.add_argument("out", help="folder to create")
    p.add_argument("--clips", type=int, default=200, help="clips over all splits (default 200)")
    p.add_argument("--frames", type=int, default=5, help="frames (= seconds of audio) per clip (default 5)")
    p.add_argument("--size", type=int, default=96, help="frame side in pixels (default 96)")
    p.add_argument("--classes", help="comma-separated subset of the synthetic classes (default: all 10)")
    p.add_argument("--semantics", default="2", help="featured classes per clip, N or MIN-MAX (default 2)")
    p.add_argument("--instances", default="1", help="objects per featured class, N or MIN-MAX (default 1)")
    p.add_argument("--area", default="0.3-0.4", help="frame fraction the featured objects cover (default 0.3-0.4)")
    p.add_argument("--distractors", default="0", help="extra always-silent classes per clip, N or MIN-MAX")
    p.add_argument("--silent-prob", type=float, default=0.1,
                   help="visual prior: chance a featured class is visible but silent (train; default 0.1)")
    p.add_argument("--eval-silent-prob", type=float, default=None, help="the same for val/test (default: as train)")
    p.add_argument("--train-annotation", choices=("all", "first"), default="all",
                   help="annotate all train frames, or only frame 0 (like AVSBench v1s)")
    p.add_argument("--sample-rate", type=int, default=16000, help="of audio.wav (default 16000)")
    p.add_argument("--frame-format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes (the output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("verify", help="check a dataset folder (S4, MS3, AVSS or synthetic) before training")
    p.add_argument("root", help="folder holding s4_meta_data.csv, ms3_meta_data.csv or metadata.csv")
    p.add_argument("--kind", choices=("auto", "s4", "ms3", "avss"), default="auto")
    p.add_argument("--quick", action="store_true", help="check that files exist, without decoding them")
    p.add_argument("--limit", type=int, default=None, help="check only the first N clips")
    p.add_argument("--workers", type=int, default=1, help="processes for decoding")
    p.add_argument("--max-problems", type=int, default=50, help="problems to list (default 50)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("train", help="train a model from a YAML/JSON config into a run folder (torchrun for DDP)",
                       description="Train from a config file (see coavs/training/config.py for the sections). The "
                                   "run folder gets config.json, train.log, log.jsonl, metrics.jsonl and "
                                   "checkpoints/last.pt. SIGTERM or Ctrl-C saves a checkpoint and stops; --resume "
                                   "continues exactly. Many processes: torchrun --nproc_per_node N -m coavs train ...")
    p.add_argument("config", nargs="?", help="config file (.yaml/.yml/.json); optional with --resume")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.root=data/coavs --set run.seed=1 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from the model weights of this run folder or checkpoint (fresh optimizer and "
                        "schedule), e.g. a debias fine-tuning of a vanilla run")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this step (checkpoint saved; resumable; the schedule is unchanged)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    def eval_options(p):
        p.add_argument("--modes", help=f"inference modes, comma-separated: {', '.join(INFERENCE_MODES)} "
                                       "(default: vanilla, plus debias for a debias-trained model)")
        p.add_argument("--biased", choices=("mute", "noise", "ddpm", "random_semantic"),
                       help="audio of the biased branch for debias (default: the training config's)")
        p.add_argument("--alpha", type=float, help="debias strength (default: the training config's)")
        p.add_argument("--scheme", choices=("separate", "mask", "class", "overall"), help="debias scheme")
        p.add_argument("--strategy", choices=("fixed", "uncertainty"), help="debias strength strategy")
        p.add_argument("--overall-reading", choices=("score", "product"),
                       help="scheme overall: per-pixel scores or the literal mask x class logits (D.3)")
        p.add_argument("--no-gate", action="store_true", help="ignore the run's calibrated gate (gate.json)")

    p = sub.add_parser("eval", help="metrics table of a trained model: mIoU, F and false-positive rates under "
                                    "silence / noise / misaligned audio")
    p.add_argument("run", help="run folder (its checkpoints/last.pt) or a checkpoint file")
    p.add_argument("--data", help="dataset folder (default: the one the model was trained on)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    eval_options(p)
    p.add_argument("--no-bias", action="store_true", help="skip the bias metrics (one model pass instead of four)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="clips per batch (default 8; under --protocol per_batch the run's eval.batch_size)")
    p.add_argument("--protocol", choices=("per_dataset", "per_batch"), default=None,
                   help="S4/MS3 averaging: per_dataset (every frame alike) or per_batch (AVSBench's test.py and the "
                        "paper's code; default: the run's eval.protocol)")
    p.add_argument("--max-clips", type=int, default=None, help="evaluate only the first N clips")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="for noise audio and misaligned donors")
    p.add_argument("--out", help="also write the results as JSON to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("gate", help="calibrate a trained run's \"nothing sounds\" gate (optionally with a sounding "
                                    "probe) and save it as RUN/gate.json; no retraining")
    p.add_argument("run", help="run folder of coavs train")
    p.add_argument("--mode", default="any", choices=("any", "class"),
                   help="any: empty a frame where nothing sounds; class: drop the classes not heard (default any)")
    p.add_argument("--probe", action="store_true",
                   help="fit a sounding probe on the frozen audio embedding (train split) and gate on it")
    p.add_argument("--keep", type=float, default=0.98, help="share of sounding cases the threshold keeps")
    p.add_argument("--split", default="val", choices=("train", "val"), help="where tau is calibrated (never test)")
    p.add_argument("--max-clips", type=int, default=None, help="use only the first N clips of each split")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="for the noise audio and the probe's initialisation")
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("predict", help="masks and overlay PNGs for your own frames (or a video) and audio")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--frames", help="folder of frames (frame t goes with second t of the audio; natural order)")
    p.add_argument("--video", help="video file (needs PyAV: pip install av); its own audio unless --audio")
    p.add_argument("--audio", help="wav file")
    p.add_argument("--vggish", help="VGGish features [T,128] .npy, for models trained on VGGish")
    p.add_argument("--markers", help="the clip's marker file (.pth), for models trained with data.marker_files")
    p.add_argument("--mode", choices=INFERENCE_MODES,
                   help="default: debias for a debias-trained model, else vanilla")
    p.add_argument("--out", required=True, help="output folder (masks/, overlays/, predictions.json)")
    p.add_argument("--no-gate", action="store_true", help="ignore the run's calibrated gate (gate.json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("bench", help="run the kernel and training benchmarks (benchmarks/bench_*.py of a checkout)")
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all; see --list)")
    p.add_argument("--quick", action="store_true", help="small shapes, seconds each (smoke run)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--device", help="passed to each benchmark (default: theirs)")
    p.add_argument("--out", default=".", help="results folder passed to each benchmark (default: the current "
                                              "folder; each writes <out>/<device>/<name>.json and .md)")
    p.add_argument("--repo", help="repository root holding benchmarks/ (default: found automatically)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="make a Co-AVS set with a strong visual prior, train vanilla and debias models "
                                    "on CPU, and print their metrics table (a few minutes)")
    demo.add_arguments(p)  # the same options as python -m coavs.demo
    p.set_defaults(func=cmd_demo)

    register_analysis(sub)  # coavs analyze area|semantics|queries, coavs ablate
    register_preprocess(sub)  # coavs features (VGGish), coavs markers (the paper's marker files)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) exits; argparse's mistakes were printed as one line (coavs.arguments)
        if exc.code in (0, None):
            raise
        return EXIT_USER_ERROR
    try:
        check_arguments(args)
        return int(args.func(args) or 0)
    except UserError as exc:  # DataError and ConfigError included
        message = one_line(exc)
    except FileNotFoundError as exc:
        message = f"file not found: {exc.filename if exc.filename else one_line(exc)}"
    except OSError as exc:  # the file system refused (permissions, read-only, not a folder, disk full)
        reason = exc.strerror or type(exc).__name__
        message = f"{exc.filename}: {reason}" if exc.filename else one_line(exc) or reason
    except KeyboardInterrupt:
        print(f"coavs {args.command}: interrupted", file=sys.stderr)
        return 130
    print(f"coavs {args.command}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR
