"""Training-step time of AVSModel: vanilla vs with the debias branch (same batch, same run).

    python -m benchmarks.bench_train_step [--quick] [--device cuda] [--amp] [--biased mute]

Providers (one full step each: forward, matching, loss, backward, optimizer step):
- ``vanilla``: the set loss only;
- ``debias``: vanilla + biased branch batched into one decoder pass (backbone and pixel decoder once),
  ``L(v) + 10·L(debias_logits(v, b))``;
- ``debias_two_pass``: the same loss with the biased branch as a second full forward (backbone twice), the
  way the reference code runs it (~1.5× time there) — the baseline for the batched design.
Reported: median ms and the ratio to ``vanilla`` (target for ``debias``: ≤ 1.15× on GPU). On CPU the providers
alternate round by round, and the process CPU time (``cpu_ms``) is reported beside the wall time: on a shared
machine it is the steadier number.
"""

from __future__ import annotations

import contextlib

import torch

from benchmarks.common import Ratio, base_parser, measure, report
from coavs.models import AVSModel, ModelConfig, fit_kmeans
from coavs.training.debias import DebiasConfig, DebiasObjective
from coavs.training.losses import SetCriterion, audio_classification_loss, targets_from_labels


def make_batch(n: int, size: int, num_classes: int, device, seed: int = 0):
    """Frames with a few labelled rectangles, VGGish-like audio; labels use classes 0 … K-1."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, 3, size, size, generator=gen)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(2):
            h, w = torch.randint(size // 6, size // 2, (2,), generator=gen).tolist()
            y = torch.randint(0, size - h, (1,), generator=gen).item()
            x = torch.randint(0, size - w, (1,), generator=gen).item()
            labels[i, y:y + h, x:x + w] = torch.randint(1, num_classes, (1,), generator=gen).item()
    audio = torch.randn(n, 128, generator=gen)
    return frames.to(device), audio.to(device), labels.to(device)


def configs(device: torch.device, quick: bool) -> list[tuple[str, ModelConfig, int, int, int]]:
    """(name, config, frames per batch, image side, points per mask)."""
    if quick:
        return [("cpu-small", ModelConfig.small(num_layers=2), 4, 64, 256)]
    if device.type == "cpu":
        return [("cpu-small", ModelConfig.small(), 8, 96, 1024)]
    return [
        # Paper-sized decoder (D=256, Q=100, 9 layers, AVSS K=71) on the default from-scratch CNN.
        ("paper-decoder-smallcnn", ModelConfig.paper(), 10, 384, 12544),
        ("paper-decoder-smallcnn-224", ModelConfig.paper(), 16, 224, 12544),
    ]


class ZeroPrompt(torch.nn.Module):
    """Wraps the prompt encoder so that the second pass of ``debias_two_pass`` sees muted audio."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.descriptor = encoder.descriptor

    def forward(self, audio):
        return torch.zeros_like(self.encoder(audio))


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--biased", default="mute", help="biased audio kind for the debias providers")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 gives steady numbers on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for name, config, n, size, points in configs(device, args.quick):
        torch.manual_seed(0)
        model = AVSModel(config).to(device).train()
        frames, audio, labels = make_batch(n, size, config.num_classes, device)
        model.perception.set_clusters(fit_kmeans(audio.cpu(), config.num_clusters, iters=10))
        ft = targets_from_labels(labels, config.num_classes, model.class_to_marker())
        presence = ft.presence[:, 1:]
        criterion = SetCriterion(config.num_classes, num_points=points)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else contextlib.nullcontext
        zero_prompt = ZeroPrompt(model.prompt_encoder)

        def step(provider: str):
            objective = DebiasObjective(criterion, DebiasConfig(enabled=provider != "vanilla",
                                                                biased_audio=args.biased))
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                if provider == "debias_two_pass":
                    out = model(frames, audio, class_presence=presence)
                    real = model.prompt_encoder
                    model.prompt_encoder = zero_prompt
                    try:
                        biased = model(frames, audio, marker_scores=out["marker_scores"])
                    finally:
                        model.prompt_encoder = real
                    out["biased"] = {k: biased[k] for k in ("pred_logits", "pred_masks", "aux_outputs")}
                else:
                    out = model(frames, audio, biased=objective.biased_audio, class_presence=presence)
                loss = objective(out, ft.targets, ft.annotated).total
                loss = loss + audio_classification_loss(out["audio_logits"], presence, ft.annotated)
            loss.backward()
            optimizer.step()

        providers = {p: (lambda p=p: step(p)) for p in ("vanilla", "debias", "debias_two_pass")}
        rounds = 3 if args.quick else 7
        fields = {"config": name, "frames": n, "size": size, "Q": config.queries, "layers": config.num_layers,
                  "amp": args.amp}
        rows += measure(providers, device, fields=fields, warmup=1, min_time_s=0, min_rounds=rounds,
                        max_rounds=rounds, cpu_time=True,
                        ratios=[Ratio("ratio_vs_vanilla", "vanilla", inverse=True),
                                Ratio("cpu_ratio_vs_vanilla", "vanilla", inverse=True, of="cpu_ms")])
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    notes = (f"One training step (forward, matching, loss, backward, AdamW) with biased audio '{args.biased}'. "
             "ratio_vs_vanilla: debias target <= 1.15 on GPU; debias_two_pass = the reference code's way.")
    report(rows, device, args.out, "train_step" + ("_amp" if args.amp else ""), notes)
    return rows


if __name__ == "__main__":
    main()
