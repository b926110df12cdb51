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
  m.def(
      "assign_queries(Tensor scores, Tensor audio, Tensor query_feat, int dilation, float threshold,"
      " float dormant_gate, bool soft) -> (Tensor, Tensor, Tensor)");
  m.def(
      "assign_queries_backward(Tensor grad_queries, Tensor grad_gate, Tensor audio, Tensor gate, Tensor active,"
      " int num_markers, int dilation, bool soft) -> (Tensor, Tensor, Tensor)");
  m.def(
      "matching_cost(Tensor mask_logits, Tensor target_masks, Tensor class_logits, Tensor target_labels,"
      " Tensor allowed, Tensor num_targets, float cost_class, float cost_mask, float cost_dice) -> Tensor");
  m.def(
      "semantic_inference(Tensor mask, Tensor mask_biased, Tensor probs, Tensor probs_biased, Tensor gate,"
      " Tensor foreground, int height, int width, float alpha, bool uncertainty, bool mask_debias, bool overall,"
      " int reduce) -> Tensor");
  m.def(
      "masked_cross_attention(Tensor q, Tensor k, Tensor v, Tensor mask_bits, Tensor block_occupancy,"
      " Tensor active, float scale) -> (Tensor, Tensor)");
  m.def(
      "masked_cross_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
      " Tensor mask_bits, Tensor block_occupancy, Tensor active, float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(coavs_C, CPU, m) {
  m.impl("debias_logits", &coavs::debias_logits_cpu);
  m.impl("debias_logits_backward", &coavs::debias_logits_backward_cpu);
  m.impl("assign_queries", &coavs::assign_queries_cpu);
  m.impl("assign_queries_backward", &coavs::assign_queries_backward_cpu);
  m.impl("matching_cost", &coavs::matching_cost_cpu);
  m.impl("semantic_inference", &coavs::semantic_inference_cpu);
  m.impl("masked_cross_attention", &coavs::masked_cross_attention_cpu);
  m.impl("masked_cross_attention_backward", &coavs::masked_cross_attention_backward_cpu);
}

#ifdef COAVS_WITH_CUDA
TORCH_LIBRARY_IMPL(coavs_C, CUDA, m) {
  m.impl("debias_logits", &coavs::debias_logits_cuda);
  m.impl("debias_logits_backward", &coavs::debias_logits_backward_cuda);
  m.impl("assign_queries", &coavs::assign_queries_cuda);
  m.impl("assign_queries_backward", &coavs::assign_queries_backward_cuda);
}
#endif
