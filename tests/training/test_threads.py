"""run.threads: an int is used, null keeps PyTorch's default, auto picks one thread for small CPU runs."""

import pytest

from coavs.training.runtime import AUTO_THREADS_MAX_PARAMS, AUTO_THREADS_MAX_PIXELS, resolve_threads
from coavs.training.trainer import ConfigError, TrainConfig


def test_auto_is_one_thread_for_a_small_cpu_run_and_the_default_otherwise():
    small_batch = 8 * 96 * 96
    assert resolve_threads("auto", "cpu", 700_000, small_batch) == 1
    assert resolve_threads("auto", "cpu", AUTO_THREADS_MAX_PARAMS, small_batch) is None
    assert resolve_threads("auto", "cpu", 700_000, AUTO_THREADS_MAX_PIXELS) is None
    assert resolve_threads("auto", "cuda", 700_000, small_batch) is None


def test_an_explicit_count_or_null_is_kept():
    assert resolve_threads(3, "cpu", 1, 1) == 3
    assert resolve_threads(None, "cpu", 1, 1) is None
    with pytest.raises(ValueError, match="run.threads"):
        resolve_threads("many", "cpu", 1, 1)


def test_config_accepts_auto_and_names_a_bad_value():
    assert TrainConfig().run.threads == "auto"
    config = TrainConfig.from_dict({"run": {"threads": "auto"}})
    assert config.run.threads == "auto"
    for bad in (0, "many"):
        with pytest.raises(ConfigError, match="run.threads"):
            TrainConfig.from_dict({"run": {"threads": bad}}).validate()
