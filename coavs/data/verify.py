"""Check a downloaded (or generated) AVSBench-style dataset before training: metadata rows, clip counts per
split against the official releases, that every frame, mask and wav exists and decodes, mask colours and ids,
mask and frame sizes, and audio length. Problems are collected (not raised) and reported together."""

from __future__ import annotations

import collections
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coavs import jsonio
from coavs.data import audio as audio_io
from coavs.data.avsbench import (AVSS_NUM_CLASSES, OFFICIAL_COUNTS, SPLITS, SYNTH_INFO_FILE, ClipRecord, detect_layout,
                                 label_map_for, read_frame, read_mask, read_records, read_synth_info, resolve_frame)
from coavs.data.errors import DataError
from coavs.progress import progress_bar


@dataclass
class Problem:
    """One finding: ``severity`` is ``"error"`` (training would fail or be wrong) or ``"warning"``."""

    severity: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}" if self.path else f"{self.severity}: {self.message}"


@dataclass
class VerifyReport:
    root: str
    kind: str
    deep: bool
    clips: dict = field(default_factory=dict)  # split -> {subset -> count}
    files_checked: int = 0
    frame_sizes: dict = field(default_factory=dict)  # "WxH" -> frames
    audio_rates: dict = field(default_factory=dict)  # "16000" -> files
    num_classes: int = 0
    synthetic: bool = False
    clips_checked: int = 0  # clips whose files were checked (fewer than clips_listed with a limit)
    clips_listed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def partial(self) -> bool:
        """Whether only some of the listed clips were checked (``limit``)."""
        return self.clips_checked < self.clips_listed

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        out["partial"] = self.partial
        return out

    def format(self, max_problems: int = 50) -> str:
        name = "synthetic Co-AVS (AVSS layout)" if self.synthetic else self.kind.upper()
        lines = [f"{name} dataset at {self.root} ({'decoded every file' if self.deep else 'existence only'})"]
        for split in SPLITS:
            per = self.clips.get(split, {})
            detail = ", ".join(f"{k} {v}" for k, v in sorted(per.items()))
            lines.append(f"  {split:5s}: {sum(per.values()):6d} clips" + (f" ({detail})" if len(per) > 1 else ""))
        lines.append(f"  classes: {self.num_classes} (incl. background); files checked: {self.files_checked}")
        if self.partial:
            lines.append(f"  only the first {self.clips_checked} of {self.clips_listed} clips were checked (--limit)")
        if self.frame_sizes:
            top = sorted(self.frame_sizes.items(), key=lambda kv: -kv[1])[:5]
            lines.append("  frame sizes: " + ", ".join(f"{k} ({v})" for k, v in top)
                         + (" ..." if len(self.frame_sizes) > 5 else ""))
        if self.audio_rates:
            rates = sorted(self.audio_rates.items())
            lines.append("  audio sample rates: " + ", ".join(f"{k} Hz ({v})" for k, v in rates))
        for problem in self.problems[:max_problems]:
            lines.append(f"  {problem}")
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more problems")
        n_err, n_warn = len(self.errors), len(self.problems) - len(self.errors)
        scope = f"the first {self.clips_checked} of {self.clips_listed} clips" if self.partial else ""
        lines.append("OK" + (f" for {scope}" if scope else "") + (f" ({n_warn} warnings)" if n_warn else "")
                     if self.ok else f"FAILED: {n_err} errors, {n_warn} warnings" + (f" in {scope}" if scope else ""))
        return "\n".join(lines)


def _check_clip(record: ClipRecord, num_classes: int, deep: bool) -> tuple[list[Problem], int, collections.Counter,
                                                                            collections.Counter]:
    """Problems of one clip, files checked, frame sizes, audio rates."""
    problems: list[Problem] = []
    sizes: collections.Counter = collections.Counter()
    rates: collections.Counter = collections.Counter()
    checked = 0

    def error(exc: DataError) -> None:
        problems.append(Problem("error", exc.path or "", exc.reason))

    def exists(path: Path, what: str) -> bool:
        """Report a missing or empty file; True when there is something to decode."""
        if not path.exists():
            problems.append(Problem("error", str(path), f"missing {what} (clip {record.uid!r}, {record.source})"))
            return False
        if path.stat().st_size == 0:
            problems.append(Problem("error", str(path), f"empty {what} file (clip {record.uid!r})"))
            return False
        return True

    frame_shapes = []
    for path in record.frame_paths:
        path = resolve_frame(path)
        checked += 1
        if not exists(path, "frame"):
            continue
        if deep:
            try:
                shape = read_frame(path).shape[:2]
                frame_shapes.append(shape)
                sizes[f"{shape[1]}x{shape[0]}"] += 1
            except DataError as exc:
                error(exc)
    if len(set(frame_shapes)) > 1:
        problems.append(Problem("warning", str(record.frame_paths[0].parent),
                                f"frames differ in size {sorted(set(frame_shapes))}"))
    for path in record.mask_paths:
        if path is None:
            continue
        checked += 1
        if not exists(path, "mask"):
            continue
        if deep:
            try:
                mask = read_mask(path, record.mask_format, num_classes)
                if frame_shapes and mask.shape != frame_shapes[0]:
                    problems.append(Problem("warning", str(path), f"mask is {mask.shape[1]}x{mask.shape[0]}, frames "
                                                                  f"{frame_shapes[0][1]}x{frame_shapes[0][0]}"))
            except DataError as exc:
                error(exc)
    checked += 1
    if exists(record.audio_path, "audio") and deep:
        try:
            samples, rate = audio_io.read_wav(record.audio_path)
            rates[str(rate)] += 1
            seconds = samples.shape[0] / rate
            if seconds < record.num_frames - 0.5:
                problems.append(Problem("warning", str(record.audio_path),
                                        f"audio lasts {seconds:.2f} s for {record.num_frames} frames (padded with "
                                        "silence when read)"))
        except DataError as exc:
            error(exc)
    return problems, checked, sizes, rates


def _check_clips(args):
    records, num_classes, deep = args
    return [_check_clip(r, num_classes, deep) for r in records]


def verify_dataset(root: str | os.PathLike, kind: str = "auto", *, deep: bool = True, workers: int = 1,
           limit: int | None = None, progress: bool = False) -> VerifyReport:
    """Check the dataset at ``root``. ``deep``: decode every file (else check existence only); ``limit``: check
    at most this many clips (the metadata is always read whole); ``workers``: processes for decoding.

    Raises :class:`DataError` only when the layout cannot be read at all (no metadata file, bad header), and
    ValueError for a ``limit`` below 1."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an int >= 1 or None (every clip), got {limit!r}")
    root = Path(root)
    kind = detect_layout(root) if kind == "auto" else kind
    report = VerifyReport(root=str(root), kind=kind, deep=deep)
    row_problems: list[DataError] = []
    _, records = read_records(root, kind, problems=row_problems)
    for exc in row_problems:
        report.problems.append(Problem("error", exc.path or "", exc.reason))
    try:
        label_map = label_map_for(root, kind)
    except DataError as exc:
        report.problems.append(Problem("error", exc.path or "", exc.reason))
        return report
    report.num_classes = label_map.num_classes
    synth = read_synth_info(root) if kind == "avss" else None
    if kind == "avss" and synth is None and label_map.num_classes != AVSS_NUM_CLASSES:
        report.problems.append(Problem("warning", str(root / "label2idx.json"),
                                       f"{label_map.num_classes} classes; the AVSS release has {AVSS_NUM_CLASSES}"))
    if synth is not None:
        report.synthetic = True
        missing = sorted({r.uid for r in records} - set(synth["clips"]))
        if missing:
            report.problems.append(Problem("error", str(root / SYNTH_INFO_FILE),
                                           f"no entry for {len(missing)} clip(s), e.g. {missing[0]!r}"))

    counts: dict = collections.defaultdict(collections.Counter)
    seen: dict = {}
    for record in records:
        counts[record.split][record.subset] += 1
        key = (record.subset, record.uid)
        if key in seen:
            report.problems.append(Problem("error", record.source, f"clip {record.uid!r} is listed twice "
                                                                   f"(also {seen[key]})"))
        seen[key] = record.source
    report.clips = {s: dict(counts[s]) for s in SPLITS if counts[s]}
    if kind in OFFICIAL_COUNTS:
        for split, expected in OFFICIAL_COUNTS[kind].items():
            got = sum(counts[split].values())
            if got != expected:
                report.problems.append(Problem("warning", "", f"{split}: {got} clips; the official {kind.upper()} "
                                                              f"release has {expected}"))
    if not records:
        report.problems.append(Problem("error", "", "the metadata lists no clips"))

    checked = records if limit is None else records[:limit]
    report.clips_checked, report.clips_listed = len(checked), len(records)
    chunk = 16
    jobs = [(checked[i:i + chunk], label_map.num_classes, deep) for i in range(0, len(checked), chunk)]
    with progress_bar(len(checked), desc="coavs verify", unit="clip", disable=not progress) as bar:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = []
                for out in pool.map(_check_clips, jobs):
                    results.append(out)
                    bar.update(len(out))
        else:
            results = []
            for job in jobs:
                results.append(_check_clips(job))
                bar.update(len(job[0]))
    sizes: collections.Counter = collections.Counter()
    rates: collections.Counter = collections.Counter()
    for out in results:
        for problems, n_files, clip_sizes, clip_rates in out:
            report.problems.extend(problems)
            report.files_checked += n_files
            sizes.update(clip_sizes)
            rates.update(clip_rates)
    report.frame_sizes = dict(sizes)
    report.audio_rates = dict(rates)
    return report


def report_json(report: VerifyReport) -> str:
    return jsonio.dumps(report.to_dict(), indent=2)
