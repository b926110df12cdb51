"""Fixtures for the analysis tests: the tiny set and trained run of tests/support/analysis_run.py."""

from tests.support.analysis_run import tiny_cache, tiny_run, tiny_set  # noqa: F401 (fixtures)
