// Every schema of the coavs_C library, each next to its implementations.
// The public ops (namespace coavs, Python side) call these kernels; see coavs/ops/.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

// `import coavs._C` loads this library, which runs the registrations below.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "coavs native kernels (registered as torch.ops.coavs_C)", -1, nullptr};
  return PyModule_Create(&module);
}

static bool has_cuda() {
#ifdef COAVS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(coavs_C, m) {
  m.def("has_cuda() -> bool", &has_cuda);
  m.def(
      "debias_logits(Tensor mask, Tensor cls, Tensor mask_biased, Tensor cls_biased, float alpha, bool uncertainty)"
      " -> (Tensor, Tensor)");
  m.def(
      "debias_logits_backward(Tensor grad_mask, Tensor grad_cls, Tensor mask_biased, Tensor cls_biased, float alpha,"
      " bool uncertainty) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(coavs_C, CPU, m) {
  m.impl("debias_logits", &coavs::debias_logits_cpu);
  m.impl("debias_logits_backward", &coavs::debias_logits_backward_cpu);
}

#ifdef COAVS_WITH_CUDA
TORCH_LIBRARY_IMPL(coavs_C, CUDA, m) {
  m.impl("debias_logits", &coavs::debias_logits_cuda);
  m.impl("debias_logits_backward", &coavs::debias_logits_backward_cuda);
}
#endif
