"""Bias metrics on real layouts: AVSS names each clip's sounding classes through its labels, so the counterfactual
score, the swapped false positives and a class-checked misaligned FPR work there; S4 checks misaligned audio by
sound category; MS3 cannot, and ``coavs eval`` says in one line what a dataset could not measure."""

from __future__ import annotations

import shutil

import pytest

from coavs.cli import main
from coavs.data.dataset import AVSSDataset, CoAVSDataset, open_dataset
from coavs.data.synth import SynthConfig, generate
from coavs.eval.runner import evaluate, evaluation_notes
from coavs.models import AVSModel, ModelConfig
from coavs.training.trainer import TrainConfig, train
from tests.support.analysis_run import tiny_base_config
from tests.support.datasets import make_ms3, make_s4

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden_dim=32, num_layers=2, ffn_dim=64, num_heads=4, backbone_widths=(8, 8, 16, 16),
            audio_channels=(4, 8), num_clusters=0, audio_input="logmel")


@pytest.fixture(scope="module")
def avss(tmp_path_factory):
    """A Co-AVS set and the same files as plain AVSS (without coavs_synth.json): only its labels say what sounds."""
    root = tmp_path_factory.mktemp("support")
    generate(root / "coavs", SynthConfig(num_clips=24, frames_per_clip=5, image_size=32, label="v1m",
                                         classes=("violin", "dog", "car"), silent_prob=0.3, eval_silent_prob=0.4,
                                         split_fractions=(0.4, 0.2, 0.4), seed=4))  # v1m: 5 annotated frames
    shutil.copytree(root / "coavs", root / "avss")
    (root / "avss" / "coavs_synth.json").unlink()
    return root / "coavs", root / "avss"


def test_avss_sounding_classes_come_from_its_labels(avss):
    coavs, plain = avss
    truth, data = open_dataset(coavs, "test"), open_dataset(plain, "test")
    assert isinstance(truth, CoAVSDataset) and type(data) is AVSSDataset
    for i in range(len(data)):
        labels = data[i]["labels"]
        shown = {int(v) for v in labels.unique().tolist() if v not in (0, 255)}
        assert data.sounding_classes(i) == shown and shown <= truth.sounding_classes(i)
        try:
            donor = data.misaligned_index(i)
        except ValueError:
            continue
        assert not data.sounding_classes(donor) & shown  # class-checked against what sounds in the clip


def test_counterfactual_swapped_and_checked_misaligned_metrics_work_on_avss(avss):
    _, plain = avss
    dataset = open_dataset(plain, "test")
    model = AVSModel(ModelConfig.small(**TINY, num_classes=dataset.num_classes, num_audio_classes=3)).eval()
    row = evaluate(model, dataset, batch_size=4)["vanilla"]
    assert row["counterfactual_frames"] > 0  # two-source frames, each source heard alone in another clip
    for key in ("counterfactual_iou", "fp_swapped", "fpr_misaligned"):
        assert 0.0 <= row[key] <= 1.0
    notes = evaluation_notes(dataset, row)
    assert len(notes) >= 1 and any("labelled (sounding) classes" in n for n in notes)
    assert not any("not measured" in n for n in notes)


def test_eval_says_in_one_line_what_s4_and_ms3_cannot_measure(tmp_path, capsys):
    s4, ms3 = make_s4(tmp_path / "s4"), make_ms3(tmp_path / "ms3")
    for name, root in (("s4", s4), ("ms3", ms3)):
        config = tiny_base_config(root, tmp_path / "cache")
        config["model"]["num_clusters"] = 0
        config["data"]["batch_size"] = 1
        train(TrainConfig.from_dict(config), tmp_path / name)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "s4"), "--quiet"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert any("FPR misaligned: over 0 of" in n for n in notes)  # one clip per split: no other category to play
    assert any("counterfactual IoU, FP swapped: not measured — S4's binary masks" in n for n in notes)
    assert main(["eval", str(tmp_path / "ms3"), "--split", "train", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "note: FPR misaligned: not measured — MS3 does not say which classes a clip sounds" in out
    assert "FPR misaligned" not in out.split("note:")[0]  # no column for it
    assert main(["eval", str(tmp_path / "ms3"), "--split", "train", "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    assert "fpr_misaligned" not in captured.out and "note: FPR misaligned: not measured" in captured.err
