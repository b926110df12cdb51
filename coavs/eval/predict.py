"""``coavs predict``: a trained model on your own frames (a folder of images, or a video file) and audio (a wav, or
the video's own track) → a mask PNG and an overlay PNG per frame.

Frame ``t`` goes with second ``t`` of the audio, as in AVSBench: a folder's images are taken in natural order
(``2.jpg`` before ``10.jpg``); from a video, the frame shown at ``t + 0.5`` s for every whole second. Videos are
read with PyAV (``pip install av``, the ``video`` extra), whose wheels bundle FFmpeg.

Outputs in ``out/``: ``masks/<name>.png`` (semantic models: a palette PNG whose pixel values are class indices,
in the VOC palette as AVSS labels; binary models: 0/255), ``overlays/<name>.png`` (the frame with each class's
colour blended in and a legend-free outline), and ``predictions.json`` (per frame: classes found with their pixel
share, and the sounding share).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from coavs import jsonio
from coavs.data import audio as audio_io
from coavs.data.audio import SAMPLE_RATE
from coavs.data.avsbench import palette
from coavs.data.dataset import read_vggish_features
from coavs.data.markers import load_reference_markers
from coavs.inference.combine import logit_strategy
from coavs.inference.postprocess import postprocess
from coavs.inference.precision import autocast

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def read_frame_folder(folder) -> tuple[list[np.ndarray], list[str]]:
    """RGB frames ``[H,W,3] uint8`` of every image in ``folder`` (natural order) and their names (no suffix)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder of frames (a video goes to --video)")
    if not folder.is_dir():
        raise FileNotFoundError(2, "frame folder not found", str(folder))
    paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
    if not paths:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    frames = []
    for path in paths:
        try:
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except OSError as exc:
            raise ValueError(f"{path}: not a readable image ({exc})") from None
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"the frames in {folder} differ in size: {sorted(s[:2] for s in sizes)}")
    return frames, [p.stem for p in paths]


def _import_av():
    try:
        import av
    except ImportError:
        raise ValueError("reading a video needs PyAV: pip install av  (or: pip install 'coavs[video]')") from None
    return av


def read_video(path, max_seconds: int | None = None) -> tuple[list[np.ndarray], list[str], torch.Tensor | None]:
    """Frames at ``t + 0.5`` s for each whole second ``t``, their names (``0``, ``1``, …), and the audio track as a
    16 kHz mono waveform (None when the file has no audio)."""
    av = _import_av()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "video file not found", str(path))
    frames, audio = [], None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            next_time = 0.5
            for frame in container.decode(stream):
                if frame.time is None or frame.time + 1e-6 < next_time:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                next_time += 1.0
                if max_seconds is not None and len(frames) >= max_seconds:
                    break
        audio = _read_video_audio(av, path)
    except getattr(av, "FFmpegError", OSError) as exc:
        raise ValueError(f"{path}: cannot decode ({exc})") from None
    if not frames:
        raise ValueError(f"{path}: no frame decoded (shorter than half a second?)")
    return frames, [str(i) for i in range(len(frames))], audio


def _read_video_audio(av, path: Path) -> torch.Tensor | None:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return None
    return torch.from_numpy(np.concatenate(chunks).astype(np.float32))


def audio_features(kind: str, num_frames: int, wav=None, waveform: torch.Tensor | None = None, vggish=None):
    """Per-frame audio input of a model: ``logmel [T,1,96,64]``, ``waveform [T,16000]`` or ``vggish [T,128]``,
    from a wav file, a 16 kHz waveform, or (``vggish``) a ``[T,128]`` ``.npy`` file. Short audio is padded with
    silence."""
    if kind != "vggish" and vggish is not None:
        raise ValueError(f"this model takes {kind} audio computed from a wav, not VGGish features (--vggish): "
                         "pass --audio FILE.wav (or --video with a sound track)")
    if kind == "vggish":
        if vggish is None:
            given = " (--audio and --video give waveforms, which it cannot use)" if wav is not None or \
                waveform is not None else ""
            raise ValueError(f"this model takes VGGish features: pass --vggish FILE.npy ([T,128]){given}")
        feats = read_vggish_features(vggish)
        if feats.shape[0] < num_frames:
            feats = np.concatenate([feats, np.repeat(feats[-1:], num_frames - feats.shape[0], axis=0)])
        return torch.from_numpy(feats[:num_frames])
    if wav is not None:
        seconds = audio_io.load_seconds(wav, num_frames)
    elif waveform is not None:
        seconds = audio_io.split_seconds(waveform, num_frames)
    else:
        raise ValueError("no audio: pass --audio FILE.wav (a video's own track is used when it has one)")
    return audio_io.log_mel(seconds) if kind == "logmel" else seconds


def class_colours(num_classes: int) -> np.ndarray:
    return palette(max(num_classes, 2))


def overlay(frame: np.ndarray, labels: np.ndarray, colours: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """``frame [H,W,3]`` with the colour of each non-background label blended in, and label borders drawn."""
    out = frame.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - opacity) * out[fg] + opacity * colours[labels[fg]].astype(np.float32)
    border = np.zeros_like(fg)
    border[:-1] |= labels[:-1] != labels[1:]
    border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    out[border] = 255.0
    return out.clip(0, 255).astype(np.uint8)


def clip_markers(config, path, num_frames: int, num_markers: int) -> torch.Tensor | None:
    """The marker scores ``[T,S]`` of a model trained with ``data.marker_files``, from one per-clip marker file
    (``coavs markers`` writes them; the last row repeats for a short file); None for a model with its own
    markers. Raises ValueError when such a model gets no file."""
    if path is None:
        if config.data.marker_files:
            raise ValueError("this model takes its markers from marker files (data.marker_files): pass --markers "
                             "FILE.pth, the clip's marker file (coavs markers writes one per clip)")
        return None
    rows = load_reference_markers(path, num_markers)
    if rows.shape[0] < num_frames:
        rows = torch.cat([rows, rows[-1:].expand(num_frames - rows.shape[0], -1)])
    return rows[:num_frames]


def predict_clip(model, config, frames: list[np.ndarray], audio: torch.Tensor, *, mode: str = "vanilla",
                 device="cpu", batch_size: int = 8, gate=None, markers: torch.Tensor | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``[T,H,W] int64`` and sounding scores ``[T,H,W] float32`` at the frames' own size, predicted as the
    run's config says (debias settings, ``overall_reading``) and, with ``gate`` (the run's calibrated
    :class:`coavs.inference.gate.Gate`), gated as ``coavs eval`` gates; ``markers`` ``[T,S]``: marker scores to use
    instead of the model's perception (:func:`clip_markers`)."""
    debias = config.debias_config()
    binary = bool(config.resolved.get("binary", False))
    height, width = frames[0].shape[:2]
    size = config.data.image_size
    labels, scores = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            chunk = frames[start:start + batch_size]
            images = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float().div_(255.0)
            if size is not None:
                hw = (size, size) if isinstance(size, int) else tuple(size)
                images = torch.nn.functional.interpolate(images, size=hw, mode="bilinear", align_corners=False,
                                                         antialias=True)
            images = images.to(device)
            sound = audio[start:start + batch_size].to(device)
            with autocast(torch.device(device), config.run.precision):
                outputs = model(images, sound, biased=debias.biased_audio if mode != "vanilla" else None,
                                marker_scores=None if markers is None else markers[start:start + batch_size].to(device),
                                clip_index=torch.zeros(images.shape[0], dtype=torch.long))  # one clip
            lab, fg = postprocess(outputs, (height, width), mode, binary, debias.alpha, debias.scheme,
                                  logit_strategy(debias.strategy), debias.overall_reading, gate)
            labels.append(lab.cpu())
            scores.append(fg.float().cpu())
    return torch.cat(labels).numpy(), torch.cat(scores).numpy()


def write_predictions(out, frames, names, labels, scores, class_names, binary: bool) -> dict:
    """Mask and overlay PNGs and ``predictions.json`` under ``out``; returns the JSON summary."""
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    colours = class_colours(len(class_names))
    records = []
    for frame, name, lab, score in zip(frames, names, labels, scores):
        if binary:
            Image.fromarray((lab > 0).astype(np.uint8) * 255).save(out / "masks" / f"{name}.png")
        else:
            mask = Image.fromarray(lab.astype(np.uint8), mode="P")
            mask.putpalette(class_colours(256).reshape(-1).tolist())
            mask.save(out / "masks" / f"{name}.png")
        Image.fromarray(overlay(frame, lab, colours)).save(out / "overlays" / f"{name}.png")
        present = {int(c): float((lab == c).mean()) for c in np.unique(lab) if c != 0}
        records.append({"frame": name, "sounding_fraction": float((lab > 0).mean()),
                        "mean_sounding_score": float(score.mean()),
                        "classes": {class_names[c] if c < len(class_names) else str(c): round(share, 4)
                                    for c, share in sorted(present.items())}})
    summary = {"frames": records, "class_names": list(class_names)}
    jsonio.write_json(out / "predictions.json", summary)
    return summary
