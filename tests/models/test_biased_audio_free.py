"""The biased branch is audio-free (supplementary D.2), proven for every bias-only audio variant:

1. exactly: what the branch receives (its prompted queries, active set and gates) is bit-identical whatever the
   clip's own audio is, in training and in evaluation, for both audio-free marker rules (``all``, ``own``);
2. on a trained model: a probe fitted on what the branch receives predicts the clip's class at chance, while
   the same probe on the vanilla branch's queries predicts it almost always (and, for ``random_semantic``, the
   probe does read the *other* clip's class, so it would see a class if one were there);
3. the rule: with ``all`` (the default) every marker-owned query is active with gate 1 in every frame.

The ``shared`` ablation is the counter-example: it reuses the clip's markers, and the test shows it.
"""

from __future__ import annotations

import pytest
import torch

from coavs.data.splits import open_split
from coavs.data.synth import SynthConfig, generate
from coavs.models import AVSModel, ModelConfig, fit_kmeans
from coavs.models.biased import BIASED_AUDIO
from coavs.training.checkpoint import load_model
from coavs.training.config import TrainConfig
from coavs.training.trainer import train
from tests.support.synthetic import make_batch
from tests.support.tiny_run import tiny_config

TINY = dict(hidden_dim=32, num_layers=2, ffn_dim=64, num_heads=4, backbone_widths=(8, 8, 16, 16),
            audio_channels=(4, 8))


def _model(queries: str, audio_input: str = "logmel") -> AVSModel:
    config = ModelConfig.small(**TINY, biased_queries=queries, audio_input=audio_input)
    model = AVSModel(config)
    model.perception.set_clusters(fit_kmeans(torch.randn(40, model.prompt_encoder.descriptor_dim), 3, iters=5))
    return model


def _received(model: AVSModel, kind: str, audio: torch.Tensor, clips: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    assigned = model.biased_assignment(kind, audio, clip_index=clips)
    return assigned.queries, assigned.active, assigned.gate


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("queries", ["all", "own"])
@pytest.mark.parametrize("audio_input", ["logmel", "waveform", "vggish"])
@pytest.mark.parametrize("kind", BIASED_AUDIO)
def test_what_the_biased_branch_receives_does_not_depend_on_the_clips_audio(kind, audio_input, queries, training):
    model = _model(queries, audio_input).train(training)
    _, audio, _ = make_batch(6, size=32, audio=audio_input)
    clips = torch.tensor([0, 0, 1, 1, 2, 2])
    changed = audio.clone()
    changed[2:4] = audio[2:4] * 5 + 1  # clip 1 sounds different (louder, shifted)
    before = _received(model, kind, audio, clips)
    after = _received(model, kind, changed, clips)
    rows = slice(2, 4) if kind == "random_semantic" else slice(None)  # random_semantic: others read clip 1
    for a, b in zip(before, after):
        assert torch.equal(a[rows], b[rows])
    if kind == "random_semantic":  # its rows hear other clips: never their own
        assert not torch.equal(before[0], _received(model, kind, audio, torch.zeros(6, dtype=torch.long))[0])


def test_the_shared_ablation_is_not_audio_free():
    model = _model("shared").eval()
    _, audio, _ = make_batch(4, size=32, audio="logmel")
    s = model.config.num_markers
    a, b = torch.zeros(4, s), torch.zeros(4, s)
    a[:, 0], b[:, 1] = 1.0, 1.0  # the markers two different clips' audio could give
    first = model.biased_assignment("mute", audio, marker_scores=a)
    second = model.biased_assignment("mute", audio, marker_scores=b)
    assert not torch.equal(first.active, second.active)


# --------------------------------------------------------------------------------- a probe on a trained model
CLASSES = ("violin", "dog", "car", "bird")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A tiny model trained for a few seconds on clips that each sound one class (4 classes), and the clips."""
    root = tmp_path_factory.mktemp("probe") / "set"
    generate(root, SynthConfig(num_clips=120, frames_per_clip=1, image_size=32, classes=CLASSES, num_semantics=1,
                               silent_prob=0.0, split_fractions=(0.5, 0.1, 0.4), seed=21))
    run = root.parent / "run"
    config = TrainConfig.from_dict(tiny_config(root, root.parent / "cache", run={"max_steps": 30, "seed": 2},
                                               loss={"num_points": 64, "audio_class_weight": 5.0}))
    train(config, run)
    model, config = load_model(run)
    return model, open_split(config, "train"), open_split(config, "test")


def _features(model, dataset, kind: str | None, seed: int = 0):
    """What the (biased, or vanilla for ``kind`` None) branch receives for every clip, flattened
    ``[clips, Q·D + 2Q]``, the clip's class and, for random_semantic, the class of the clip it heard."""
    audio = torch.cat([dataset.load_audio(i)[:1] for i in range(len(dataset))])
    classes = torch.tensor([next(iter(dataset.sounding_classes(i))) for i in range(len(dataset))])
    clips = torch.arange(len(dataset))
    model.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        if kind is None:
            embedding = model.prompt_encoder(audio)
            assigned = model.assign(model.perceive(embedding, audio).scores, embedding)
            heard = classes
        else:
            assigned = model.biased_assignment(kind, audio, clip_index=clips)
            heard = classes.roll(-1)  # evaluation: the next clip's audio
    x = torch.cat([assigned.queries.flatten(1), assigned.active.float(), assigned.gate.float()], dim=1)
    return x, classes, heard


def _probe_accuracy(x_train, y_train, x_test, y_test, steps: int = 200) -> float:
    """Multinomial logistic regression (standardised inputs, L2) fitted on train, accuracy on test."""
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    a, b = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(0)
    w = torch.zeros(a.shape[1], len(CLASSES) + 1, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w, y_train) + 1e-3 * w.square().sum()
        loss.backward()
        optimizer.step()
    return float(((b @ w).argmax(1) == y_test).float().mean())


@pytest.mark.parametrize("kind", BIASED_AUDIO)
def test_a_probe_on_the_biased_branch_predicts_the_clips_class_at_chance(trained, kind):
    model, train_set, test_set = trained
    assert model.config.biased_queries == "all"
    x_train, y_train, heard_train = _features(model, train_set, kind, seed=1)
    x_test, y_test, heard_test = _features(model, test_set, kind, seed=2)
    majority = float(torch.bincount(y_test).max()) / len(y_test)
    accuracy = _probe_accuracy(x_train, y_train, x_test, y_test)
    assert accuracy <= majority + 0.15, (kind, accuracy, majority)
    # the positive control: the same probe reads the class off the vanilla branch's queries
    v_train, _, _ = _features(model, train_set, None)
    v_test, _, _ = _features(model, test_set, None)
    assert _probe_accuracy(v_train, y_train, v_test, y_test) >= 0.8
    if kind == "random_semantic":  # the class it carries is the other clip's, and the probe can read that one
        assert _probe_accuracy(x_train, heard_train, x_test, heard_test) >= 0.8
    else:  # the rule: every marker-owned query active with gate 1, in every clip
        owned = model.config.num_markers * model.config.dilation
        q = model.config.queries
        active = x_test[:, -2 * q:-q]
        assert (active[:, :owned] == 1).all()
