"""``BiasEvaluator.update_negative(frames, audio, classes)`` (issue 25 item 7): the clips' classes as class ids
``[B]``, multi-hot ``[B,C]`` or the label maps ``[B,H,W]`` the rest of the package calls ``labels`` — each gives
the same misaligned donors; ``labels=`` still works with a FutureWarning."""

from __future__ import annotations

import pytest
import torch

from coavs.eval.bias import BiasEvaluator, other_class_donors


def _batch():
    ids = torch.tensor([1, 2, 1, 3])
    maps = torch.zeros(4, 6, 6, dtype=torch.long)
    for i, c in enumerate(ids.tolist()):
        maps[i, 1:4, 1:4] = c
    maps[:, 0, 0] = 255  # not annotated: no class
    multi_hot = torch.nn.functional.one_hot(ids, 4)
    return ids, multi_hot, maps


@pytest.mark.parametrize("form", ["ids", "multi_hot", "maps"])
def test_every_form_of_classes_gives_donors_of_another_class(form):
    ids, multi_hot, maps = _batch()
    classes = {"ids": ids, "multi_hot": multi_hot, "maps": maps}[form]
    for seed in range(5):
        donors = other_class_donors(classes, generator=torch.Generator().manual_seed(seed))
        assert all(ids[d] != ids[i] for i, d in enumerate(donors.tolist()))


def _evaluator(audio_seen: list):
    def predict(frames, audio):
        audio_seen.append(audio.clone())
        return torch.zeros(frames.shape[0], 6, 6)
    return BiasEvaluator(predict, kinds=("misaligned",), generator=torch.Generator().manual_seed(0))


def test_update_negative_takes_label_maps_as_classes():
    ids, _, maps = _batch()
    frames, audio = torch.zeros(4, 3, 6, 6), torch.arange(4.0)[:, None].repeat(1, 16)
    seen_ids, seen_maps = [], []
    _evaluator(seen_ids).update_negative(frames, audio, ids)
    _evaluator(seen_maps).update_negative(frames, audio, classes=maps)
    assert torch.equal(seen_ids[0], seen_maps[0])


def test_labels_is_the_former_name():
    ids, _, _ = _batch()
    frames, audio = torch.zeros(4, 3, 6, 6), torch.arange(4.0)[:, None].repeat(1, 16)
    seen = []
    with pytest.warns(FutureWarning, match="classes"):
        _evaluator(seen).update_negative(frames, audio, labels=ids)
    assert len(seen) == 1
    with pytest.raises(TypeError, match="not both"):
        _evaluator([]).update_negative(frames, audio, ids, labels=ids)


def test_label_maps_out_of_range_are_refused():
    maps = torch.full((2, 4, 4), 300)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        other_class_donors(maps)
