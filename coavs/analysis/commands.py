"""``coavs analyze area|semantics|queries`` and ``coavs ablate``: parsers and command functions, registered by
``coavs.cli.build_parser``. """

from __future__ import annotations

import argparse
from pathlib import Path

from coavs.analysis.ablate import all_variants, default_base_config, run_ablation, select_variants
from coavs.analysis.area import run_area
from coavs.analysis.common import inference_settings, open_eval_dataset
from coavs.analysis.queries import analyze_queries, default_frames, parse_frame_spec
from coavs.analysis.rescale import check_target
from coavs.analysis.semantics import run_semantics
from coavs.analysis.stats import parse_edges
from coavs.data.splits import check_same_classes
from coavs.devices import resolve_device
from coavs.errors import UserError
from coavs.eval.runner import AUDIO_CONDITIONS
from coavs.inference.combine import INFERENCE_MODES
from coavs.training.checkpoint import load_model
from coavs.training.config import TrainConfig, apply_overrides, read_file


def _user_error(message: str):
    return UserError(message)


def _load(args):
    """``(model, config, dataset, settings, out_dir, device)`` of an ``analyze`` command."""
    if args.batch_size < 1:
        raise _user_error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_clips is not None and args.max_clips < 1:
        raise _user_error(f"--max-clips must be >= 1, got {args.max_clips}")
    device = resolve_device(args.device)
    model, config = load_model(args.run, device)
    dataset = open_eval_dataset(config, args.split, args.data)
    if len(dataset) == 0:
        raise _user_error(f"the {args.split} split of {args.data or config.data.root} has no clips")
    check_same_classes(dataset, config.resolved.get("class_names"), model.config.num_classes,
                       args.data or config.data.root)
    settings = inference_settings(config, args.mode)
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / "analysis"
    return model, config, dataset, settings, out, device


def _title(args, config, settings) -> str:
    data = Path(args.data or config.data.root).name
    return f"{data} ({args.split} split), {settings['mode']} prediction"


def cmd_analyze_area(args) -> int:
    try:
        edges = parse_edges(args.bins, "--bins")
        target = check_target(_range(args.target))
    except ValueError as exc:
        raise _user_error(str(exc)) from None
    model, config, dataset, settings, out, device = _load(args)
    result, paths = run_area(model, dataset, out, settings=settings, edges=edges, target=target,
                             rescale=not args.no_rescale, batch_size=args.batch_size, device=device,
                             max_clips=args.max_clips, progress=not args.quiet, title=_title(args, config, settings))
    rows = {(r["condition"], r["bin"]): r for r in result.rows}
    line = [f"{r['bin']}: {100 * r['binary_miou']:.1f} (n={r['frames']})" for (c, _), r in rows.items()
            if c == "original" and r["bin"] != "all"]
    print("mIoU of the sounding pixels per area bin: " + ", ".join(line))
    if ("rescaled", "all") in rows:
        objects = [f["rescaled_object_area"] for f in result.frames if "rescaled_object_area" in f]
        within = sum(target[0] <= a <= target[1] for a in objects)
        reached = (f"; one object: mean {100 * sum(objects) / len(objects):.1f}%, {within} of {len(objects)} frames "
                   f"in range" if objects else "")
        print(f"all frames: {100 * rows[('original', 'all')]['binary_miou']:.1f} as they are, "
              f"{100 * rows[('rescaled', 'all')]['binary_miou']:.1f} with objects rescaled to "
              f"{100 * target[0]:.0f}-{100 * target[1]:.0f}% (achieved: sounding area mean "
              f"{100 * rows[('rescaled', 'all')]['mean_area']:.1f}%{reached})")
    print(f"-> {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_analyze_semantics(args) -> int:
    if not 0.0 <= args.min_instance_fraction < 1.0:
        raise _user_error(f"--min-instance-fraction must be in [0, 1), got {args.min_instance_fraction}")
    model, config, dataset, settings, out, device = _load(args)
    result, paths = run_semantics(model, dataset, out, settings=settings,
                                  min_instance_fraction=args.min_instance_fraction, batch_size=args.batch_size,
                                  device=device, max_clips=args.max_clips, progress=not args.quiet,
                                  title=_title(args, config, settings))
    for by in ("semantics", "instances"):
        rows = [r for r in result.rows if r["by"] == by and r["count"] != "all"]
        print(f"mIoU by {by} per frame: " + ", ".join(f"{r['count']}: {100 * r['binary_miou']:.1f} "
                                                      f"(n={r['frames']})" for r in rows))
    print(f"-> {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_analyze_queries(args) -> int:
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    unknown = [c for c in conditions if c not in AUDIO_CONDITIONS]
    if unknown or not conditions:
        raise _user_error(f"--conditions must name some of {', '.join(AUDIO_CONDITIONS)}, got {args.conditions!r}")
    if args.max_markers < 1:
        raise _user_error(f"--max-markers must be >= 1, got {args.max_markers}")
    model, config, dataset, settings, out, device = _load(args)
    try:
        frames = ([parse_frame_spec(spec, dataset) for spec in args.frame] if args.frame
                  else default_frames(dataset, args.examples))
        result = analyze_queries(model, config.model_config(), dataset, frames, out, settings=settings,
                                 conditions=conditions, device=device, max_markers=args.max_markers)
    except ValueError as exc:
        raise _user_error(str(exc)) from None
    for condition in conditions:
        active = [r for r in result["rows"] if r["condition"] == condition and r["active"]]
        print(f"{condition}: {len(active)} active queries over {len(frames)} frame(s)")
    print(f"-> {', '.join(str(p) for p in [*result['figures'], result['table']])}")
    return 0


def cmd_ablate(args) -> int:
    if args.steps < 1:
        raise _user_error(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise _user_error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.seeds is not None and args.seeds < 1:
        raise _user_error(f"--seeds must be >= 1, got {args.seeds}")
    try:
        variants = select_variants(args.variants)
    except ValueError as exc:
        raise _user_error(str(exc)) from None
    if args.config:
        base = read_file(args.config)
        if args.data:
            base = apply_overrides(base, {"data.root": args.data})
        if args.device != "auto":
            base = apply_overrides(base, {"run.device": args.device})
    else:
        if not args.data:
            raise _user_error("give --data DATASET_FOLDER (or --config BASE.yaml naming data.root)")
        base = default_base_config(args.data, args.device)
    base = apply_overrides(base, list(args.set or []))
    if not str(base.get("data", {}).get("root", "")):
        raise _user_error("the base config names no data.root; pass --data")
    TrainConfig.from_dict(base)  # bad keys fail here, before any training
    result = run_ablation(base, variants, args.out, steps=args.steps, split=args.split, device=args.device,
                          batch_size=args.batch_size, max_clips=args.max_clips, fresh=args.fresh,
                          progress=not args.quiet, seeds=args.seeds)
    print((Path(args.out) / "ablation.md").read_text())
    print(f"{len(variants)} variants, {len(result.runs)} trainings in {result.seconds / 60:.1f} min -> {args.out}")
    return 0


def variant_names() -> str:
    """Every ablation variant, grouped: ``vanilla; scheme/mask|class|...; ...`` (from the variant list itself)."""
    groups: dict[str, list[str]] = {}
    for variant in all_variants():
        group, _, name = variant.name.partition("/")
        groups.setdefault(group, []).append(name)
    return "; ".join(group if names == [""] else f"{group}/{'|'.join(names)}" for group, names in groups.items())


def _range(text: str) -> tuple[float, float]:
    parts = text.split("-")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--target must be a fraction or MIN-MAX (e.g. 0.3-0.4), got {text!r}") from None
    if len(values) not in (1, 2):
        raise ValueError(f"--target must be a fraction or MIN-MAX (e.g. 0.3-0.4), got {text!r}")
    return (values[0], values[-1])


def _analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (its checkpoints/last.pt) or a checkpoint file")
    p.add_argument("--data", help="dataset folder (default: the one the model was trained on); opened with the "
                                  "run's image size and audio features")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--mode", choices=INFERENCE_MODES,
                   help="inference mode (default: debias for a debias-trained run, else vanilla)")
    p.add_argument("--out", help="output folder (default: RUN/analysis)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per batch (default 4)")
    p.add_argument("--max-clips", type=int, default=None, help="only the first N clips")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    """Add ``analyze`` (with ``area``, ``semantics``, ``queries``) and ``ablate`` to the ``coavs`` subparsers."""
    analyze = sub.add_parser("analyze", help="the supplementary's analyses of a trained model: area, semantics, "
                                             "queries (PNG figures + CSV)")
    kinds = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS")
    kinds.required = True

    p = kinds.add_parser("area", help="mIoU against the sounding objects' area, and with objects rescaled to "
                                      "30-40%% of the frame (supplementary A.1)")
    _analysis_options(p)
    p.add_argument("--bins", default="0,0.05,0.1,0.2,0.3,0.4,0.5,0.7,1",
                   help="edges of the area bins, fractions of the frame (default 0,0.05,0.1,0.2,0.3,0.4,0.5,0.7,1)")
    p.add_argument("--target", default="0.3-0.4", help="area the rescaling aims at, MIN-MAX (default 0.3-0.4)")
    p.add_argument("--no-rescale", action="store_true", help="skip the rescaling intervention (one pass, not two)")
    p.set_defaults(func=cmd_analyze_area)

    p = kinds.add_parser("semantics", help="mIoU against sounding semantics and instances per frame "
                                           "(supplementary A.2)")
    _analysis_options(p)
    p.add_argument("--min-instance-fraction", type=float, default=0.0005,
                   help="connected components smaller than this fraction of the frame are not instances")
    p.set_defaults(func=cmd_analyze_semantics)

    p = kinds.add_parser("queries", help="masks of the active queries grouped by marker, with the clip's audio "
                                         "and under silence (supplementary C.1)")
    _analysis_options(p)
    p.add_argument("--frame", action="append", metavar="CLIP[:T]",
                   help="a frame: clip uid or index in the split, and frame number (repeatable; default: frame "
                        "0 of the first --examples clips)")
    p.add_argument("--examples", type=int, default=4, help="clips shown without --frame (default 4)")
    p.add_argument("--conditions", default="normal,silence",
                   help="audio conditions, comma-separated: normal, silence, noise, misaligned")
    p.add_argument("--max-markers", type=int, default=12, help="present markers shown per condition (default 12)")
    p.set_defaults(func=cmd_analyze_queries)

    p = sub.add_parser("ablate", help="train the small model under each debias variant and write one Markdown "
                                      "table (supplementary D.1-D.3, dilation)",
                       description=f"Variants (comma-separated names or groups with --variants): {variant_names()}. "
                                   "Variants with the same training share one run; finished runs in OUT/runs are "
                                   "reused. --seeds N: mean ± std over seeds 0..N-1.")
    p.add_argument("--data", help="dataset folder (default base config: the small preset on it)")
    p.add_argument("--config", help="base training config instead of the default (YAML/JSON); its stages are "
                                    "replaced by one stage of --steps steps")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config value (repeatable)")
    p.add_argument("--variants", default="all", help="variants or groups to run (default: all)")
    p.add_argument("--steps", type=int, default=600, help="training steps per run (default 600)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="evaluation split")
    p.add_argument("--out", required=True, help="output folder (ablation.md, ablation.csv, ablation.png, runs/)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per evaluation batch (default 4)")
    p.add_argument("--max-clips", type=int, default=None, help="evaluate only the first N clips")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (training and evaluation)")
    p.add_argument("--fresh", action="store_true", help="retrain runs that already finished in OUT/runs")
    p.add_argument("--seeds", type=int, default=None,
                   help="train every run with seeds 0..N-1 and report mean ± std (default: the base's seed once)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ablate)
