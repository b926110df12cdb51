"""Input-pipeline benchmark: synthetic-set generation speed, and clips/s of the DataLoader reading the set with
and without the on-disk decode cache, with 0 and N workers. The baseline is decoding in the main process.

    python -m benchmarks.bench_data [--quick] [--workers N] [--size 224] [--clips 200]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import base_parser, report
from coavs.data.dataset import open_dataset
from coavs.data.loader import DataTimer, default_workers, make_loader
from coavs.data.synth import SynthConfig, generate


def _epoch(dataset, workers: int, batch_size: int) -> dict:
    loader = make_loader(dataset, batch_size, shuffle=True, num_workers=workers, persistent_workers=False)
    timer = DataTimer(loader, skip_first=1)  # the first batch pays for worker start-up
    for batch in timer:
        batch["frames"].sum()  # touch the batch, as a step would
    return timer.summary()


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=max(1, default_workers()), help="loader/generator processes")
    parser.add_argument("--size", type=int, default=None, help="frame side (default 224; 64 with --quick)")
    parser.add_argument("--clips", type=int, default=None, help="clips (default 200; 24 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    size = args.size or (64 if args.quick else 224)
    clips = args.clips or (24 if args.quick else 200)
    config = SynthConfig(num_clips=clips, frames_per_clip=5, image_size=size, split_fractions=(1, 0, 0))
    scratch = Path(tempfile.mkdtemp(prefix="coavs-bench-data-"))
    rows = []
    try:
        for workers in sorted({1, args.workers}):
            start = time.perf_counter()
            generate(scratch / f"set{workers}", config, workers=workers)
            seconds = time.perf_counter() - start
            rows.append({"what": f"coavs synth ({workers} proc)", "clips": clips, "size": size,
                         "seconds": seconds, "clips_per_s": clips / seconds})
        root = scratch / f"set{args.workers}"
        baseline = None
        for cached in (False, True):
            for workers in sorted({0, args.workers}):
                dataset = open_dataset(root, "train", cache_dir=scratch / f"cache{workers}" if cached else None)
                dataset.decode_audio(dataset.records[0])  # imports and builds the mel filterbank once
                if cached:
                    _epoch(dataset, workers, args.batch_size)  # first pass fills the cache
                stats = _epoch(dataset, workers, args.batch_size)
                baseline = baseline or stats["clips_per_s"]
                rows.append({"what": f"loader {'cached (mmap)' if cached else 'decode'}, {workers} workers",
                             "clips": stats["clips"], "size": size, "seconds": stats["seconds"],
                             "clips_per_s": stats["clips_per_s"], "x_vs_decode_0w": stats["clips_per_s"] / baseline})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(rows, torch.device("cpu"), args.out, "data_pipeline",
           f"{clips} clips x 5 frames of {size}x{size}, log-mel audio, batch {args.batch_size}; "
           "clips/s over one epoch, first batch excluded (worker start-up).")


if __name__ == "__main__":
    main()
