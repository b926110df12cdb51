"""The same AVS model prompted by text instead of sound: a tiny referring-segmentation task (the paper's D.1).

Each synthetic frame holds three shapes: the referred one (colour c, shape s), a distractor with the same shape
in another colour and one with the same colour and another shape. The sentence ("the red square", "segment the
square that is red", ...) names c and s. The label map marks the referred object with its shape class (1 … 3).

The prompt source is the only change to the model: a bag-of-words encoder replaces the audio encoder, the
classifier markers now predict the shape from the words (no k-means markers: text has no descriptor), and the
biased branch (``mute``: no words) debiases exactly as for sound.

    python examples/text_prompted.py [--steps 300] [--debias fixed|uncertainty|bias_only|none]

It prints the IoU of the referred object with the right sentence and with a sentence naming another object
in the same frame (the prompt, not the picture, must decide what is segmented).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from coavs.models import AVSModel, BagOfWordsEncoder, ModelConfig
from coavs.ops import semantic_inference
from coavs.training.debias import DebiasConfig, DebiasObjective, combine
from coavs.training.losses import SetCriterion, audio_classification_loss, targets_from_labels

COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.1, 0.2, 0.9), "yellow": (0.9, 0.9, 0.1)}
SHAPES = ("square", "circle", "triangle")  # class index = position + 1
TEMPLATES = ("the {c} {s}", "segment the {s} that is {c}", "{c} {s}", "where is the {c} {s}")
VOCABULARY = sorted(set(COLOURS) | set(SHAPES) | {"the", "segment", "that", "is", "where"})


def _shape_mask(shape: str, size: int, cy: int, cx: int, r: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dy, dx = (y - cy).abs(), (x - cx).abs()
    if shape == "square":
        return (dy <= r) & (dx <= r)
    if shape == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    return (y - cy <= r) & (y - cy >= -r) & (2 * dx <= (y - cy + r))  # triangle pointing up


def make_batch(n: int, size: int = 48, rng: random.Random | None = None):
    """→ frames ``[n,3,size,size]``, sentences (n strings), labels ``[n,size,size]``, and for each frame a
    sentence naming one of its distractors instead (for the swapped-prompt check)."""
    rng = rng or random.Random(0)
    frames = torch.full((n, 3, size, size), 0.45)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    sentences, swapped = [], []
    r = size // 8
    centres = [(size // 4, size // 4), (size // 4, 3 * size // 4), (3 * size // 4, size // 2)]
    for i in range(n):
        colour = rng.choice(list(COLOURS))
        shape = rng.choice(SHAPES)
        other_colour = rng.choice([c for c in COLOURS if c != colour])
        other_shape = rng.choice([s for s in SHAPES if s != shape])
        objects = [(colour, shape, True), (other_colour, shape, False), (colour, other_shape, False)]
        rng.shuffle(centres)
        for (c, s, referred), (cy, cx) in zip(objects, centres):
            mask = _shape_mask(s, size, cy + rng.randint(-2, 2), cx + rng.randint(-2, 2), r)
            frames[i][:, mask] = torch.tensor(COLOURS[c])[:, None]
            if referred:
                labels[i][mask] = SHAPES.index(s) + 1
        template = rng.choice(TEMPLATES)
        sentences.append(template.format(c=colour, s=shape))
        swap_colour, swap_shape, _ = objects[rng.choice([1, 2])]
        swapped.append(template.format(c=swap_colour, s=swap_shape))
    return frames, sentences, labels, swapped


def build_model(dim: int = 64, layers: int = 3) -> AVSModel:
    config = ModelConfig.small(num_classes=len(SHAPES) + 1, num_audio_classes=len(SHAPES), num_clusters=0,
                               dilation=2, hidden_dim=dim, num_layers=layers, ffn_dim=2 * dim,
                               backbone_widths=(16, 32, 32, 64))
    return AVSModel(config, prompt_encoder=BagOfWordsEncoder(VOCABULARY, dim))


def train(steps: int = 300, batch: int = 8, debias: str = "fixed", seed: int = 0, log_every: int = 50,
          lr: float = 2e-3, dim: int = 64, layers: int = 3):
    """Train from scratch on fresh synthetic batches → (model, objective, losses)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = build_model(dim, layers)
    encoder = model.prompt_encoder
    criterion = SetCriterion(model.config.num_classes, num_points=256)
    config = DebiasConfig(enabled=debias != "none", strategy=debias if debias != "none" else "fixed",
                          biased_audio="mute", weight=1.0)
    objective = DebiasObjective(criterion, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        frames, sentences, labels, _ = make_batch(batch, rng=rng)
        ft = targets_from_labels(labels, model.config.num_classes, model.class_to_marker())
        presence = ft.presence[:, 1:]
        out = model(frames, encoder.encode(sentences), biased=objective.biased_audio, class_presence=presence)
        loss = objective(out, ft.targets, ft.annotated).total
        loss = loss + audio_classification_loss(out["audio_logits"], presence, ft.annotated)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss.item():7.3f}  ({time.perf_counter() - start:5.1f} s)")
    return model, objective, losses


@torch.no_grad()
def evaluate(model: AVSModel, n: int = 64, seed: int = 123, mode: str = "vanilla") -> dict:
    """IoU of the referred object (foreground = any shape class) with the right and with a swapped sentence."""
    model.eval()
    frames, sentences, labels, swapped = make_batch(n, rng=random.Random(seed))
    target = labels > 0
    result = {}
    for name, text in (("right_sentence", sentences), ("swapped_sentence", swapped)):
        out = model(frames, model.prompt_encoder.encode(text), biased=None if mode == "vanilla" else "mute")
        masks, logits = combine(out, mode)
        pred = semantic_inference(masks, logits, tuple(labels.shape[-2:]), gate=out["gate"]) > 0
        inter = (pred & target).flatten(1).sum(1).float()
        union = (pred | target).flatten(1).sum(1).float().clamp_min(1)
        result[name] = (inter / union).mean().item()
    model.train()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--debias", default="fixed", choices=("none", "fixed", "uncertainty", "bias_only"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, _, _ = train(args.steps, args.batch, args.debias, args.seed)
    for mode in ("vanilla",) if args.debias == "none" else ("vanilla", "debias"):
        scores = evaluate(model, mode=mode)
        print(f"{mode:8s}  IoU of the referred object: {scores['right_sentence']:.3f}   "
              f"with a sentence naming a distractor: {scores['swapped_sentence']:.3f}")


if __name__ == "__main__":
    main()
