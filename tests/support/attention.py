"""Masked cross-attention checks shared by the example and property tests: the error rule (flash-attention's:
twice the same-precision eager error plus a floor), and reference values with gradients."""

from __future__ import annotations

import torch

from coavs.ops import reference

# floor of the allowed error, relative to the largest reference value (see assert_attention_close)
ERROR_FLOOR = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def reference_with_grads(q, k, v, visible, active, scale, grad, dtype):
    """Reference output and (dq, dk, dv) by autograd, evaluated in ``dtype`` arithmetic from the same inputs."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = reference.masked_cross_attention(*leaves, visible, active, scale)
    grads = torch.autograd.grad(out, leaves, grad.to(dtype))
    return out.detach(), grads


def same_precision_eager(q, k, v, visible, active, scale, grad):
    """Mask2Former's eager computation in the inputs' own precision (matmuls and softmax in fp16/bf16): the error
    an ordinary low-precision model already lives with."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    scores = torch.matmul(leaves[0], leaves[1].transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    out = torch.matmul(torch.softmax(scores, -1), leaves[2])
    out = torch.where(active[:, None, :, None], out, out.new_zeros(()))
    return out.detach(), torch.autograd.grad(out, leaves, grad)


def assert_attention_close(actual, exact, eager=None, what=""):
    """``|actual − exact| <= 2·|eager − exact| + floor·max(1, |exact|)`` (flash-attention's rule), ``exact`` in
    float64; ``eager`` is the same-precision PyTorch result (None: the floor alone)."""
    assert actual.shape == exact.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(exact.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = max(1.0, exact.abs().max().item()) if exact.numel() else 1.0
    allowed = ERROR_FLOOR[actual.dtype] * scale
    if eager is not None and exact.numel():
        allowed += 2 * (eager.double() - exact).abs().max().item()
    error = (actual.double() - exact).abs().max().item() if exact.numel() else 0.0
    assert error <= allowed, f"{what}: max error {error:.3g} > allowed {allowed:.3g}"
