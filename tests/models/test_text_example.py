"""The text-prompted example (examples/text_prompted.py) runs: same model, bag-of-words prompts (paper D.1)."""

import importlib.util
import random
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "text_prompted.py"


def load_example():
    spec = importlib.util.spec_from_file_location("text_prompted_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_referring_batch_marks_only_the_named_object():
    example = load_example()
    frames, sentences, labels, swapped = example.make_batch(6, size=48, rng=random.Random(1))
    assert frames.shape == (6, 3, 48, 48) and labels.shape == (6, 48, 48)
    for sentence, label, other in zip(sentences, labels, swapped):
        shape = next(s for s in example.SHAPES if s in sentence)
        assert set(label.unique().tolist()) == {0, example.SHAPES.index(shape) + 1}
        assert other != sentence


def test_text_prompted_training_runs_and_evaluates():
    example = load_example()
    model, objective, losses = example.train(steps=2, batch=2, debias="uncertainty", log_every=0, dim=32, layers=1)
    assert objective.biased_audio == "mute" and len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    scores = example.evaluate(model, n=4, mode="debias")
    assert set(scores) == {"right_sentence", "swapped_sentence"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
