"""The audio format every layer agrees on (VGGish's): 16 kHz mono, one-second 96x64 log-mel patches of
``log(mel + LOG_OFFSET)``. The readers (:mod:`coavs.data.audio`) and the models' own log-mel front end
(:mod:`coavs.models.audio`) both take these numbers from here; this module imports nothing from coavs."""

SAMPLE_RATE = 16000
MEL_FRAMES = 96  # frames per one-second patch (10 ms hop)
MEL_BANDS = 64
LOG_OFFSET = 0.01

__all__ = ["LOG_OFFSET", "MEL_BANDS", "MEL_FRAMES", "SAMPLE_RATE"]
