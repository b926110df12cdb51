"""How close ``coavs features``' resampling (torchaudio, resampy's ``kaiser_best`` filter parameters) comes to
resampy itself, which the original VGGish pipeline resamples with: per signal, the 16 kHz samples, the VGGish
log-mel (all bands, and the bands below 7 kHz) and the embeddings of a random-weight VGGish (raw and PCA +
8-bit). Needs ``resampy`` (not a coavs dependency: it pulls numba); run in a separate environment:

    python -m venv --system-site-packages /tmp/rs && /tmp/rs/bin/pip install resampy
    PYTHONPATH=. /tmp/rs/bin/python -m benchmarks.resample_check --out benchmarks/results/resample_check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from coavs.models.vggish import examples, load_vggish, log_mel
from coavs.preprocess.common import resample_like_resampy

LOW_BANDS = 60  # mel bands 0..59 lie below ~7 kHz


def signals(seconds: float = 5.0, seed: int = 0) -> dict:
    """Tones with slow amplitude modulation plus gated white-noise bursts (broadband up to each rate's Nyquist),
    and the same tones alone, at common source rates."""
    rng = np.random.default_rng(seed)
    out = {}
    for rate in (44100, 48000, 22050, 8000):
        t = np.arange(int(rate * seconds)) / rate
        tones = sum(0.1 * np.sin(2 * np.pi * f * t) * (1 + np.sin(np.pi * k * t)) for k, f in
                    enumerate((220, 440, 660, 1320, 3000)))
        bursts = rng.standard_normal(t.size) * 0.05 * (np.sin(2 * np.pi * 2 * t) > 0)
        out[f"tones+noise@{rate}"] = ((tones + bursts) * 0.5, rate)
        out[f"tones@{rate}"] = (tones * 0.5, rate)
    return out


def main() -> None:
    import resampy

    from tests.support.pretrained import write_vggish_files

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_vggish(*write_vggish_files(Path(tmp)))
    rows = []
    for name, (wave, rate) in signals().items():
        ref = torch.from_numpy(resampy.resample(wave, rate, 16000, filter="kaiser_best"))
        ours = resample_like_resampy(wave, rate).double()
        n = min(len(ref), len(ours))
        diff = ref[:n] - ours[:n]
        lm = (log_mel(ref) - log_mel(ours[:len(ref)])).abs()
        raw_ref, raw_ours = model.embed(ref, postprocess=False), model.embed(ours, postprocess=False)
        q_ref, q_ours = model.postprocessor(raw_ref), model.postprocessor(raw_ours)
        rows.append({
            "signal": name, "samples": [len(ref), len(ours)], "max_abs_sample": float(diff.abs().max()),
            "snr_db": float(10 * torch.log10(ref[:n].pow(2).sum() / diff.pow(2).sum())),
            "logmel_max_abs_all_bands": float(lm.max()), "logmel_max_abs_below_7khz": float(lm[:, :LOW_BANDS].max()),
            "examples": int(examples(ref).shape[0]),
            "embedding_rel_l2": float((raw_ref - raw_ours).norm() / raw_ref.norm()),
            "quantized_values_changed": float((q_ref != q_ours).float().mean()),
            "quantized_max_step": float((q_ref - q_ours).abs().max()),
        })
        print(json.dumps(rows[-1]))
    if args.out:
        Path(args.out).write_text(json.dumps({"resampy": resampy.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
