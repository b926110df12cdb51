"""The command-line front of preprocessing: ``coavs features`` and ``coavs markers`` (registered into the
``coavs`` parser by :func:`register`; user mistakes raise :class:`coavs.errors.UserError`, one line and exit 1)."""

from __future__ import annotations

from coavs.devices import resolve_device
from coavs.errors import UserError
from coavs.preprocess.features import extract_vggish_features
from coavs.preprocess.markers import MarkerSettings, compute_markers


def cmd_features(args) -> int:
    summary = extract_vggish_features(args.data, args.vggish, args.pca, args.out, split=args.split,
                                      device=resolve_device(args.device), overwrite=args.overwrite,
                                      progress=not args.quiet)
    kind = "PCA + 8-bit postprocessed" if args.pca else "raw"
    print(f"VGGish ({kind}) features of {summary['clips']} clips: {summary['written']} written, "
          f"{summary['skipped']} already there, in {summary['seconds']:.1f} s -> {summary['out']}")
    print(f"train on them with: --set data.audio=vggish --set data.vggish_dir={summary['out']}")
    return 0


def cmd_markers(args) -> int:
    if args.classifier is None and args.hubert is None:
        raise UserError("give --classifier FOLDER (class markers) and/or --hubert FOLDER (cluster markers)")
    if args.beats is not None:
        raise UserError("--beats: BEATs is not in transformers or any maintained package, and coavs does not copy "
                        "its code; use --classifier with an AudioSet classifier (e.g. AST) instead "
                        "(docs/features_and_markers.md)")
    try:
        settings = MarkerSettings(threshold=args.threshold, clusters=args.clusters, hubert_layer=args.hubert_layer,
                                  window=args.window, seed=args.seed, fit_split=args.fit_split)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    summary = compute_markers(args.data, args.out, classifier=args.classifier, class_map=args.class_map,
                              hubert=args.hubert, settings=settings, split=args.split,
                              device=resolve_device(args.device), batch_size=args.batch_size,
                              overwrite=args.overwrite, progress=not args.quiet)
    print(f"markers of {summary['clips']} clips ({summary['classes']} class markers at >= {args.threshold}, "
          f"{summary['clusters']} cluster markers): {summary['written']} files written in "
          f"{summary['seconds']:.1f} s -> {summary['out']}")
    print(f"train with them: --set data.marker_files={summary['out']}")
    return 0


def register(sub) -> None:
    """Add ``features`` and ``markers`` to the ``coavs`` subcommands."""
    p = sub.add_parser("features", help="write per-clip VGGish embeddings [T,128] (.npy) for data.audio=vggish",
                       description="VGGish as AVSBench computes it (0.96 s log-mel examples, the public PyTorch "
                                   "weights, optional PCA + 8-bit postprocessing), one <uid>.npy per clip. "
                                   "Resumable: a rerun skips finished clips.")
    p.add_argument("data", help="dataset folder (S4, MS3, AVSS or a coavs synth set)")
    p.add_argument("--vggish", required=True, metavar="WEIGHTS", help="vggish-10086976.pth (local file)")
    p.add_argument("--pca", metavar="PCA", help="vggish_pca_params-970ea276.pth: write the postprocessed (PCA + "
                                                "8-bit) embeddings; AVSBench's configs use the raw ones")
    p.add_argument("--out", help="output folder (default: DATA/vggish, or DATA/vggish_pca with --pca)")
    p.add_argument("--split", choices=("train", "val", "test"), help="only this split (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="recompute every clip (also when --out holds files "
                                                            "made with other weights)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("markers", help="write the paper's per-clip marker files (class markers from an audio "
                                       "classifier, cluster markers from HuBERT k-means)",
                       description="Markers as the paper gets them, from pretrained models in local "
                                   "save_pretrained folders (transformers; nothing is downloaded): per second, the "
                                   "dataset classes whose probability is >= the threshold, plus the k-means "
                                   "cluster of the HuBERT features. One <uid>.pth per clip in the reference "
                                   "code's layout, plus markers.json; train with data.marker_files=OUT.")
    p.add_argument("data", help="dataset folder (S4, MS3, AVSS or a coavs synth set)")
    p.add_argument("--out", help="output folder (default: DATA/markers)")
    p.add_argument("--classifier", metavar="FOLDER", help="audio classifier (AutoModelForAudioClassification, "
                                                          "e.g. AST fine-tuned on AudioSet) and its feature "
                                                          "extractor")
    p.add_argument("--class-map", metavar="JSON", help="dataset class -> classifier labels, e.g. {\"dog\": "
                                                       "[\"Bark\", \"Dog\"]} (\"*\": any label); default: "
                                                       "labels named like the class")
    p.add_argument("--threshold", type=float, default=0.4, help="class marker threshold (default 0.4, the paper's)")
    p.add_argument("--window", type=float, default=1.0, help="seconds of audio the classifier hears per frame, "
                                                             "centred on the frame's second (default 1)")
    p.add_argument("--hubert", metavar="FOLDER", help="HuBERT (AutoModel) and its feature extractor")
    p.add_argument("--hubert-layer", type=int, default=7, help="hidden state whose per-second mean is clustered "
                                                               "(default 7, as HuBERT's discrete units; capped "
                                                               "at the model's depth)")
    p.add_argument("--clusters", type=int, default=30, help="k-means clusters (default 30, the paper preset's)")
    p.add_argument("--fit-split", default="train", choices=("train", "val", "test"),
                   help="split whose seconds the k-means is fitted on (default train)")
    p.add_argument("--beats", metavar="FOLDER", help="not supported: BEATs (the paper's classifier) is in no "
                                                     "maintained package; use --classifier (the error says more)")
    p.add_argument("--split", choices=("train", "val", "test"), help="only this split (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="seconds per model call (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="k-means seeding")
    p.add_argument("--overwrite", action="store_true", help="recompute everything")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_markers)


__all__ = ["cmd_features", "cmd_markers", "register"]
