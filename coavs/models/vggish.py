"""VGGish as AVSBench computes it: the exact log-mel front end, the network, and the optional PCA + 8-bit
postprocessing, loading the public PyTorch files (``vggish-10086976.pth``, ``vggish_pca_params-970ea276.pth``)
by their parameter names.

Front end (the original TensorFlow ``vggish_input`` / ``mel_features``, which the PyTorch ports keep):

- 16 kHz mono samples in [-1, 1] (16-bit PCM divided by 32768);
- frames of 400 samples (25 ms) every 160 samples (10 ms), no padding, so ``1 + (N − 400) // 160`` frames;
- a *periodic* Hann window, the magnitude of a 512-point real FFT (257 bins);
- 64 triangular mel bands between 125 and 7500 Hz, **linear in the HTK mel scale** ``1127·ln(1 + f/700)`` (not in
  hertz, as torchaudio's filterbank is), the DC bin weighted 0;
- ``log(mel + 0.01)``;
- non-overlapping examples of 96 frames (0.96 s): ``1 + (F − 96) // 96`` examples ``[T,1,96,64]``. Example ``t``
  starts at 0.96·t s, so it drifts 40 ms per second from video frame ``t``, exactly as AVSBench's features do.

Network: VGG-style ``features`` (conv3x3 64 → pool → 128 → pool → 256, 256 → pool → 512, 512 → pool, ReLU
after every conv) and ``embeddings`` (12288 → 4096 → 4096 → 128, ReLU after each, the last one included); the
feature map is flattened channels-last, as TensorFlow did. Postprocessing (AudioSet's released embeddings): PCA
with whitening ``E·(x − μ)``, clip to [−2, 2], map to [0, 255] and round (half to even, as ``torch.round`` in the
PyTorch port AVSBench uses; TensorFlow's original truncates with ``astype(uint8)``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from coavs.audio_spec import LOG_OFFSET, MEL_BANDS, MEL_FRAMES, SAMPLE_RATE

try:
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:  # NumPy 1
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct

EMBEDDING_DIM = 128
WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms
FFT_SIZE = 512  # the next power of two of the window
MEL_LOW_HZ = 125.0
MEL_HIGH_HZ = 7500.0
EXAMPLE_SAMPLES = WINDOW_SAMPLES + (MEL_FRAMES - 1) * HOP_SAMPLES  # 15600: the audio one example needs
QUANTIZE_RANGE = (-2.0, 2.0)

# (out channels | "pool") of the convolutional part, in order; module indices follow from it (ReLU after convs).
_FEATURE_LAYOUT = (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool")


# ------------------------------------------------------------------------------------------------ front end
def htk_mel(hz):
    """Frequencies in hertz → the HTK mel scale ``1127·ln(1 + f/700)``."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_matrix(num_bins: int = FFT_SIZE // 2 + 1, num_bands: int = MEL_BANDS, rate: int = SAMPLE_RATE,
               low_hz: float = MEL_LOW_HZ, high_hz: float = MEL_HIGH_HZ) -> Tensor:
    """``[num_bins, num_bands]`` float64: spectrum bins (``linspace(0, rate/2, num_bins)``) → mel bands. Band ``i``
    is a triangle, linear in mel, rising from edge ``i`` to its centre ``i + 1`` and falling to edge ``i + 2`` of
    ``num_bands + 2`` edges evenly spaced in mel over ``[low_hz, high_hz]``. The DC bin gets weight 0."""
    if not 0.0 <= low_hz < high_hz <= rate / 2:
        raise ValueError(f"mel bands need 0 <= low_hz < high_hz <= rate/2, got {low_hz}, {high_hz}, rate {rate}")
    bins = htk_mel(np.linspace(0.0, rate / 2, num_bins))[:, None]
    edges = np.linspace(htk_mel(low_hz), htk_mel(high_hz), num_bands + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0] = 0.0
    return torch.from_numpy(weights)


_MEL = mel_matrix()


def log_mel(wave: Tensor) -> Tensor:
    """16 kHz samples ``[N]`` → VGGish log-mel frames ``[F,64]`` float64 (``F = 1 + (N − 400) // 160``), computed in
    float64 as the NumPy original does. Raises ValueError below one frame (400 samples)."""
    wave = torch.as_tensor(wave).to(torch.float64).flatten()
    if wave.numel() < WINDOW_SAMPLES:
        raise ValueError(f"VGGish needs at least {WINDOW_SAMPLES} samples, got {wave.numel()}")
    frames = wave.unfold(0, WINDOW_SAMPLES, HOP_SAMPLES)  # [F,400]
    window = torch.hann_window(WINDOW_SAMPLES, periodic=True, dtype=torch.float64)
    magnitude = torch.fft.rfft(frames * window, n=FFT_SIZE).abs()  # [F,257]
    return torch.log(magnitude @ _MEL + LOG_OFFSET)


def examples(wave: Tensor) -> Tensor:
    """16 kHz samples ``[N]`` → VGGish input examples ``[T,1,96,64]`` float32 (``T`` complete 0.96 s examples; 0
    when the audio is shorter than 0.975 s)."""
    wave = torch.as_tensor(wave).flatten()
    if wave.numel() < EXAMPLE_SAMPLES:
        return torch.zeros(0, 1, MEL_FRAMES, MEL_BANDS)
    frames = log_mel(wave)
    count = 1 + (frames.shape[0] - MEL_FRAMES) // MEL_FRAMES
    return frames[:count * MEL_FRAMES].reshape(count, 1, MEL_FRAMES, MEL_BANDS).float()


# ------------------------------------------------------------------------------------------------ network
class VGGish(nn.Module):
    """Examples ``[T,1,96,64]`` → embeddings ``[T,128]`` (after the last ReLU: AVSBench's features, before any
    postprocessing). ``postprocessor`` (set by :func:`load_vggish` with a PCA file) applies PCA + quantization in
    :meth:`embed`. The state-dict names are the public file's: ``features.{0,3,6,8,11,13}``,
    ``embeddings.{0,2,4}``."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 1
        for spec in _FEATURE_LAYOUT:
            if spec == "pool":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, spec, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = spec
        self.features = nn.Sequential(*layers)
        height, width = MEL_FRAMES // 16, MEL_BANDS // 16  # four 2x2 poolings: 96x64 → 6x4
        self.embeddings = nn.Sequential(
            nn.Linear(channels * height * width, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM), nn.ReLU(inplace=True))
        self.postprocessor: PCAQuantizer | None = None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, MEL_FRAMES, MEL_BANDS):
            raise ValueError(f"VGGish takes examples [T,1,{MEL_FRAMES},{MEL_BANDS}], got {tuple(x.shape)}")
        x = self.features(x)
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))  # channels-last flattening, as TensorFlow

    @torch.no_grad()
    def embed(self, wave: Tensor, batch_size: int = 64, postprocess: bool | None = None) -> Tensor:
        """16 kHz samples ``[N]`` → ``[T,128]`` float32 on the CPU: the raw embeddings, or with ``postprocess`` (by
        default: whenever a PCA file was loaded) the PCA + 8-bit values in 0…255."""
        device = next(self.parameters()).device
        inputs = examples(wave)
        rows = [self(inputs[i:i + batch_size].to(device)).float() for i in range(0, inputs.shape[0], batch_size)]
        out = torch.cat(rows) if rows else torch.zeros(0, EMBEDDING_DIM, device=device)
        use_pca = self.postprocessor is not None if postprocess is None else postprocess
        if use_pca:
            if self.postprocessor is None:
                raise ValueError("postprocess=True needs the PCA parameters (load_vggish(..., pca=FILE))")
            out = self.postprocessor(out)
        return out.cpu()


class PCAQuantizer(nn.Module):
    """AudioSet's postprocessing of raw embeddings ``[T,128]``: ``E·(x − μ)`` (PCA with whitening), clipped to
    [−2, 2] and mapped to the 256 levels 0…255 (float values, rounded half to even). Buffers ``pca_eigen_vectors
    [128,128]`` and ``pca_means [128]``."""

    def __init__(self, eigen_vectors: Tensor, means: Tensor):
        super().__init__()
        self.register_buffer("pca_eigen_vectors", eigen_vectors.float())
        self.register_buffer("pca_means", means.float().reshape(-1))

    def pca(self, embeddings: Tensor) -> Tensor:
        """``[T,128]`` → PCA-whitened ``[T,128]`` before clipping and quantization."""
        return torch.mm(self.pca_eigen_vectors, embeddings.t() - self.pca_means[:, None]).t()

    def forward(self, embeddings: Tensor) -> Tensor:
        low, high = QUANTIZE_RANGE
        clipped = self.pca(embeddings).clamp(low, high)
        return torch.round((clipped - low) * (255.0 / (high - low)))


# ------------------------------------------------------------------------------------------------ loading
def _numpy_globals() -> list:
    """What a PCA file pickled with NumPy arrays needs from NumPy (allow-listed for ``weights_only`` loading:
    arrays and dtypes only); the public file was written by NumPy 1, which called the module ``numpy.core``."""
    dtypes = {type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64)}
    return [_numpy_reconstruct, (_numpy_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            *dtypes]


def read_parameters(path: str | os.PathLike, what: str) -> dict:
    """A state-dict-like file (tensors or NumPy arrays by name), read without running code from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, f"{what} file not found", str(path))
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged or foreign files
        raise ValueError(f"{path}: cannot read the {what} file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the {what} file must hold a dict of parameters by name, got {type(data).__name__}")
    return data


def load_vggish(weights: str | os.PathLike, pca: str | os.PathLike | None = None,
                device: str | torch.device = "cpu") -> VGGish:
    """VGGish in eval mode with the parameters of ``weights`` (``vggish-10086976.pth``: ``features.*`` and
    ``embeddings.*`` by name) and, with ``pca`` (``vggish_pca_params-970ea276.pth``: ``pca_eigen_vectors``
    ``[128,128]`` and ``pca_means`` ``[128]`` or ``[128,1]``, tensors or NumPy arrays), the postprocessor.

    Raises FileNotFoundError for a missing file and ValueError naming the file for anything else."""
    model = VGGish()
    state = read_parameters(weights, "VGGish weights")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}"] if unexpected else [])
        raise ValueError(f"{weights}: not a VGGish state dict ({'; '.join(parts)})")
    for name, tensor in expected.items():
        value = state[name]
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(tensor.shape):
            got = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
            raise ValueError(f"{weights}: parameter {name} must be {tuple(tensor.shape)}, got {got}")
    model.load_state_dict({name: state[name].float() for name in expected})
    if pca is not None:
        params = read_parameters(pca, "VGGish PCA")
        try:
            vectors = torch.as_tensor(np.asarray(params["pca_eigen_vectors"]), dtype=torch.float32)
            means = torch.as_tensor(np.asarray(params["pca_means"]), dtype=torch.float32)
        except KeyError as exc:
            raise ValueError(f"{pca}: not a VGGish PCA file (no {exc.args[0]!r}; expected pca_eigen_vectors and "
                             "pca_means)") from None
        if tuple(vectors.shape) != (EMBEDDING_DIM, EMBEDDING_DIM) or means.numel() != EMBEDDING_DIM:
            raise ValueError(f"{pca}: pca_eigen_vectors must be [128,128] and pca_means 128 values, got "
                             f"{tuple(vectors.shape)} and {tuple(means.shape)}")
        if not (torch.isfinite(vectors).all() and torch.isfinite(means).all()):
            raise ValueError(f"{pca}: the PCA parameters hold NaN or infinite values")
        model.postprocessor = PCAQuantizer(vectors, means)
    return model.to(device).eval()


__all__ = ["EMBEDDING_DIM", "EXAMPLE_SAMPLES", "PCAQuantizer", "VGGish", "examples", "htk_mel", "load_vggish",
           "log_mel", "mel_matrix", "read_parameters"]
