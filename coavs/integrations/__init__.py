"""Bridges from other libraries' models to coavs ops.

``coavs.integrations.transformers``: :func:`~coavs.integrations.transformers.accelerate` swaps the masked
cross-attention of a Hugging Face ``transformers`` Mask2Former model for ``coavs.ops.masked_cross_attention``
(``pip install 'coavs[hf]'``).
"""
