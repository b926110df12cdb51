"""coavs: audio-visual segmentation that resists audio priming bias and visual prior.

Subpackages: ``coavs.ops`` (fused ops with reference, C++, CUDA and Triton backends), ``coavs.kernels``
(Triton kernels).
"""

import torch  # noqa: F401  (loaded first: coavs._C links against torch's shared libraries)

__version__ = "0.1.0"
