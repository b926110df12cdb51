"""Triton kernels, one module per op: ``coavs.kernels.<op>`` (a leaf: nothing here imports coavs).

The sources live in the repository's top-level ``kernels/`` folder, which on purpose has no ``__init__.py``:
a regular package named ``kernels`` at the checkout's root would shadow Hugging Face's ``kernels``
distribution (which transformers imports) for every Python started in the checkout. Without one it is at most
a namespace portion, which never wins over an installed package. A wheel installs the modules beside this file
(setup.py's build step copies them here); in a checkout, editable install or ``PYTHONPATH``, the package's
path points at the top-level folder.
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CHECKOUT_KERNELS = _HERE.parents[1] / "kernels"

if not (_HERE / "debias_logits.py").exists() and (_CHECKOUT_KERNELS / "debias_logits.py").exists():
    __path__ = [str(_CHECKOUT_KERNELS)]
