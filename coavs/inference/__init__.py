"""Inference, the layer between the models and evaluation: clip items → frame batches (``batches``), the
combination of the vanilla and biased branches (``combine``: the inference modes ``vanilla | debias``),
post-processing into labels and a sounding score (``postprocess``), the "nothing sounds" gate (``gate``),
numeric precision (``precision``: autocast) and the debias settings (``settings``: :class:`DebiasConfig`).

Evaluation and training both build on it; it imports neither."""
