"""`coavs fit-markers`: from a dataset's wavs or from VGGish feature files, into a model."""

import numpy as np
import pytest
import torch

from coavs.cli import main
from coavs.models import AVSModel, ModelConfig, load_kmeans


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    from coavs.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("markers") / "synth"
    generate(root, SynthConfig(num_clips=8, frames_per_clip=2, image_size=32, seed=1,
                               split_fractions=(0.75, 0.125, 0.125)))
    return root


def test_fit_markers_on_dataset_audio_loads_into_a_logmel_model(tiny_synth, tmp_path, capsys):
    out = tmp_path / "markers.pt"
    assert main(["fit-markers", "--data", str(tiny_synth), "--clusters", "3", "--out", str(out), "--quiet"]) == 0
    assert "3 clusters fitted on 12 descriptors from 6 clips" in capsys.readouterr().out
    fit, kind = load_kmeans(out)
    assert kind == "logmel_stats" and fit.centroids.shape == (3, 128)
    model = AVSModel(ModelConfig.small(audio_input="waveform", num_clusters=3))
    model.load_markers(out)
    assert model.perception.fitted


def test_fit_markers_on_vggish_files(tmp_path):
    folder = tmp_path / "vggish"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(folder / f"clip{i}.npy", rng.standard_normal((5, 128)).astype(np.float32))
    out = tmp_path / "m.pt"
    assert main(["fit-markers", "--vggish", str(folder), "--clusters", "2", "--out", str(out), "--quiet"]) == 0
    fit, kind = load_kmeans(out)
    assert kind == "vggish" and fit.centroids.shape == (2, 128)
    model = AVSModel(ModelConfig.small(num_clusters=2))
    model.load_markers(out)
    ids = model.perception.cluster_ids(torch.from_numpy(np.load(folder / "clip0.npy")))
    assert ids.shape == (5,)


def test_fit_markers_user_errors(tmp_path, capsys):
    out = str(tmp_path / "m.pt")
    assert main(["fit-markers", "--clusters", "3", "--out", out]) == 1
    assert "give --data" in capsys.readouterr().err
    assert main(["fit-markers", "--vggish", str(tmp_path), "--clusters", "3", "--out", out]) == 1
    assert "no .npy VGGish feature files" in capsys.readouterr().err
    np.save(tmp_path / "a.npy", np.zeros((2, 128), np.float32))
    assert main(["fit-markers", "--vggish", str(tmp_path), "--clusters", "3", "--out", out]) == 1
    assert "at least num_clusters = 3 samples" in capsys.readouterr().err
    assert main(["fit-markers", "--data", str(tmp_path / "nope"), "--clusters", "3", "--out", out]) == 1
    assert main(["fit-markers", "--vggish", str(tmp_path), "--clusters", "0", "--out", out]) == 1
