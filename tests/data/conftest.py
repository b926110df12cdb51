"""Fixtures for the data tests: the tiny synthetic set of tests/support/datasets.py."""

from tests.support.datasets import synth_copy, synth_root  # noqa: F401 (fixtures)
