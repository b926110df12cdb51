"""Benchmark of ``coavs.integrations.transformers.accelerate`` on a Hugging Face ``transformers`` Mask2Former.

    python -m benchmarks.bench_hf_mask2former [--quick] [--threads 1] [--device cuda]

Two providers on the same inputs and weights, timed interleaved on CPU (one call of each in turn, medians over
the rounds), so a busy machine slows them alike:
  hf     transformers' own ``nn.MultiheadAttention`` with the boolean ``[B·h,Q,N]`` mask (``need_weights`` left
         at its default, as transformers calls it)
  coavs  the same module after ``accelerate`` (``coavs.ops.masked_cross_attention``)
Parts:
  attention  one decoder layer's masked cross-attention module, COCO-like sizes: Q=100, D=256, 8 heads, B=1,
             keys of one level of a 512×512 or 800×800 image (1/32, 1/16, 1/8); masks as a trained
             Mask2Former's look (one smooth blob per query, ``visible`` = mean fraction of keys a query sees)
  decoder    the whole transformer module (9 masked-attention layers, round robin over the three levels, mask
             predictor at 1/4, self-attention, FFN) on random features, randomly initialised (its masks are
             noisy and about half visible, unlike a trained model's)
Each row: median and 20/80% quantiles (ms), ``speedup`` = hf / coavs, and ``max_abs_diff`` of the outputs.
Needs transformers (``pip install 'coavs[hf]'``). Results: ``benchmarks/results/<device>/hf_mask2former.*``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from benchmarks.bench_attention import blob_logits
from benchmarks.common import Ratio, base_parser, measure, print_table, report
from coavs.ops import reference

QUERIES, HIDDEN, HEADS, BATCH = 100, 256, 8, 1
LEVELS = (32, 16, 8)  # strides of the three key levels


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark needs transformers: pip install 'coavs[hf]'") from None
    from coavs.integrations import transformers as integration

    return integration


def hf_mask(batch: int, size: tuple[int, int], generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """transformers' attention mask ``[B·h, Q, H·W]`` (True = masked) from blob-shaped mask logits, with the
    decoder's rule applied (a query that sees nothing sees all), and the mean visible fraction."""
    visible = reference.attention_visibility(blob_logits(batch, QUERIES, generator), size)
    return (~visible).repeat_interleave(HEADS, dim=0), visible.float().mean().item()


def _step(fn, inputs: list[torch.Tensor], backward: bool):
    if not backward:
        def run():
            with torch.no_grad():
                return fn(*inputs)
        return run
    leaves = [t.detach().requires_grad_() for t in inputs]

    def run():
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
        for t in leaves:
            t.grad = None
    return run


def _rows(base: dict, steps: dict, outputs: dict, device: torch.device) -> list[dict]:
    diff = (outputs["coavs"].float() - outputs["hf"].float()).abs().max().item()
    rows = measure(steps, device, fields=base, ratios=[Ratio("speedup", "hf", rows=("coavs",))], warmup=2,
                   min_time_s=0.5, min_rounds=3, max_rounds=100, memory=False)
    for row in rows:
        if row["provider"] == "coavs":
            row["max_abs_diff"] = diff
    return rows


def bench_attention(integration, image: int, stride: int, device: torch.device, modes) -> list[dict]:
    generator = torch.Generator().manual_seed(image + stride)
    size = (image // stride, image // stride)
    keys = size[0] * size[1]
    torch.manual_seed(0)
    hf = nn.MultiheadAttention(HIDDEN, HEADS).to(device).eval()
    ours = copy.deepcopy(hf)
    ours.__class__ = integration.MaskedCrossAttention  # what accelerate() does to each decoder layer
    mask, visible = hf_mask(BATCH, size, generator)
    mask = mask.to(device)
    query = torch.randn(QUERIES, BATCH, HIDDEN, generator=generator).to(device)
    memory = torch.randn(keys, BATCH, HIDDEN, generator=generator).to(device)
    pos = torch.randn(keys, BATCH, HIDDEN, generator=generator).to(device)
    calls = {name: (lambda q, m, module=module: module(q, m + pos, m, attn_mask=mask, key_padding_mask=None)[0])
             for name, module in (("hf", hf), ("coavs", ours))}
    with torch.no_grad():
        outputs = {name: fn(query, memory) for name, fn in calls.items()}
    rows = []
    for mode in modes:
        steps = {name: _step(fn, [query, memory], mode == "fwd+bwd") for name, fn in calls.items()}
        base = {"part": "attention", "image": image, "level": f"1/{stride}", "N": keys,
                "visible": round(visible, 3), "mode": mode}
        rows += _rows(base, steps, outputs, device)
    return rows


def bench_decoder(integration, image: int, device: torch.device, modes) -> list[dict]:
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerTransformerModule

    config = Mask2FormerConfig(hidden_dim=HIDDEN, num_queries=QUERIES, decoder_layers=10, num_attention_heads=HEADS,
                               dim_feedforward=2048, mask_feature_size=HIDDEN, feature_size=HIDDEN)
    torch.manual_seed(0)
    hf = Mask2FormerTransformerModule(in_features=HIDDEN, config=config).to(device).eval()
    ours = integration.accelerate(copy.deepcopy(hf))
    generator = torch.Generator().manual_seed(image)
    features = [torch.randn(BATCH, HIDDEN, image // s, image // s, generator=generator).to(device) for s in LEVELS]
    mask_features = torch.randn(BATCH, HIDDEN, image // 4, image // 4, generator=generator).to(device)
    seen = []
    hook = hf.decoder.mask_predictor.register_forward_hook(
        lambda module, args, out: seen.append((~out[1]).float().mean().item()))

    def call(module):
        def run(*inputs):
            out = module(list(inputs[:3]), inputs[3])
            return torch.stack([m for m in out.masks_queries_logits])
        return run

    calls = {"hf": call(hf), "coavs": call(ours)}
    inputs = features + [mask_features]
    with torch.no_grad():
        outputs = {name: fn(*inputs) for name, fn in calls.items()}
    hook.remove()
    rows = []
    for mode in modes:
        steps = {name: _step(fn, inputs, mode == "fwd+bwd") for name, fn in calls.items()}
        base = {"part": "decoder", "image": image, "level": "all", "N": sum((image // s) ** 2 for s in LEVELS),
                "visible": round(sum(seen) / len(seen), 3), "mode": mode}
        rows += _rows(base, steps, outputs, device)
    return rows


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--images", default=None, help="comma-separated image sizes (default 512,800)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    integration = _require_transformers()
    device = torch.device(args.device)
    images = [int(s) for s in args.images.split(",")] if args.images else ([256] if args.quick else [512, 800])
    modes = ("fwd", "fwd+bwd")
    rows: list[dict] = []
    for image in images:
        for stride in LEVELS:
            rows += bench_attention(integration, image, stride, device, modes)
            print_table(rows[-2 * len(modes):])
    for image in images:
        rows += bench_decoder(integration, image, device, ("fwd",) if image > 512 else modes)
        print_table(rows[-4:])
    notes = (f"Q={QUERIES}, D={HIDDEN}, {HEADS} heads, B={BATCH}, float32; speedup = hf time / coavs time; "
             "max_abs_diff: largest difference of the outputs (attention) or of every layer's mask logits (decoder); "
             "in the decoder a key whose mask logit rounds across sigmoid = 0.5 differently in the two runs flips "
             "its mask bit and the later layers differ by ~1e-3 (seen at 800: one key of one query).")
    report(rows, device, args.out, "hf_mask2former", notes)
    return rows


if __name__ == "__main__":
    main()
