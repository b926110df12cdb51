"""How the analyses evaluate a run: its inference settings, as trained."""

from coavs.analysis.common import inference_settings
from coavs.training.config import TrainConfig


def test_inference_settings_keep_the_runs_overall_reading_and_mode():
    product = TrainConfig.from_dict({"debias": {"strategy": "fixed", "scheme": "overall",
                                                "overall_reading": "product"}})
    settings = inference_settings(product)
    assert settings["mode"] == "debias" and settings["scheme"] == "overall"
    assert settings["overall_reading"] == "product"  # dropped before: the analyses read the score map instead
    assert inference_settings(product, "vanilla")["mode"] == "vanilla"
    assert inference_settings(TrainConfig.from_dict({"debias": {"strategy": "ensemble"}}))["mode"] == "vanilla"
