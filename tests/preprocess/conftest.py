"""Fixtures of the preprocessing tests: the tiny synthetic Co-AVS set."""

from tests.support.datasets import synth_copy, synth_root  # noqa: F401 (fixtures)
