// The schemas of the coavs_C library, one group per op. The kernels register themselves beside their code:
// TORCH_LIBRARY_IMPL(coavs_C, CPU, m) at the bottom of csrc/cpu/<op>_cpu.cpp and TORCH_LIBRARY_IMPL(coavs_C,
// CUDA, m) at the bottom of csrc/cuda/<op>_cuda.cu. The public ops (namespace coavs, Python side, with fake
// kernels and autograd) call these; see coavs/ops/ and csrc/README.md.
#include <Python.h>
#include <torch/library.h>

// `import coavs._C` loads this library, which runs every registration of the extension (schemas here, kernels
// in the other sources).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "coavs native kernels (registered as torch.ops.coavs_C)", -1, nullptr};
  return PyModule_Create(&module);
}

// Whether the extension was built with its CUDA kernels: a build fact, not a kernel, so it is defined here.
static bool has_cuda() {
#ifdef COAVS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(coavs_C, m) {
  // Build info: has_cuda() is true when the CUDA kernels were compiled in.
  m.def("has_cuda() -> bool", &has_cuda);

  // debias_logits (CPU, CUDA): (1 + a) x - a x_b on mask and class logits, and its backward.
  m.def(
      "debias_logits(Tensor mask, Tensor cls, Tensor mask_biased, Tensor cls_biased, float alpha, bool uncertainty)"
      " -> (Tensor, Tensor)");
  m.def(
      "debias_logits_backward(Tensor grad_mask, Tensor grad_cls, Tensor mask_biased, Tensor cls_biased, float alpha,"
      " bool uncertainty) -> (Tensor, Tensor, Tensor, Tensor)");

  // assign_queries (CPU, CUDA): audio-prompted queries, gates and activity per marker, and the backward.
  m.def(
      "assign_queries(Tensor scores, Tensor audio, Tensor query_feat, int dilation, float threshold,"
      " float dormant_gate, bool soft) -> (Tensor, Tensor, Tensor)");
  m.def(
      "assign_queries_backward(Tensor grad_queries, Tensor grad_gate, Tensor audio, Tensor gate, Tensor active,"
      " int num_markers, int dilation, bool soft) -> (Tensor, Tensor, Tensor)");

  // matching_cost (CPU): Mask2Former's class + mask + dice matching cost [B,Q,G].
  m.def(
      "matching_cost(Tensor mask_logits, Tensor target_masks, Tensor class_logits, Tensor target_labels,"
      " Tensor allowed, Tensor num_targets, float cost_class, float cost_mask, float cost_dice) -> Tensor");

  // semantic_inference (CPU): resize, gate and reduce mask/class predictions to per-pixel labels or scores.
  m.def(
      "semantic_inference(Tensor mask, Tensor mask_biased, Tensor probs, Tensor probs_biased, Tensor gate,"
      " Tensor foreground, int height, int width, float alpha, bool uncertainty, bool mask_debias, bool overall,"
      " int reduce) -> Tensor");

  // masked_attention_plan (CPU): the block-sparse plan of masked_cross_attention (coavs/ops/attention_plan.py).
  m.def(
      "masked_attention_plan(Tensor bits, Tensor active, int height, int width, int rows_per_tile)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // masked_cross_attention (CPU): attention over the keys the plan's block bits let through, and its backward.
  m.def(
      "masked_cross_attention(Tensor q, Tensor k, Tensor v, Tensor block_bits, Tensor row_order, Tensor row_count,"
      " Tensor tile_counts, Tensor tile_blocks, Tensor block_counts, Tensor block_tiles, float scale, int height,"
      " int width, int rows_per_tile) -> (Tensor, Tensor)");
  m.def(
      "masked_cross_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
      " Tensor block_bits, Tensor row_order, Tensor row_count, Tensor tile_counts, Tensor tile_blocks,"
      " Tensor block_counts, Tensor block_tiles, float scale, int height, int width, int rows_per_tile)"
      " -> (Tensor, Tensor, Tensor)");
}
