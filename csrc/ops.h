// Declarations of every native op in the coavs_C library (schemas live in torch_bindings.cpp).
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

namespace coavs {

// debias_logits: see csrc/common/debias_logits.h for the arithmetic.
std::tuple<at::Tensor, at::Tensor> debias_logits_cpu(const at::Tensor& mask, const at::Tensor& cls,
                                                     const at::Tensor& mask_biased, const at::Tensor& cls_biased,
                                                     double alpha, bool uncertainty);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> debias_logits_backward_cpu(
    const at::Tensor& grad_mask, const at::Tensor& grad_cls, const at::Tensor& mask_biased,
    const at::Tensor& cls_biased, double alpha, bool uncertainty);

// assign_queries: see csrc/common/assign_queries.h. Returns (queries [B,Q,D], gate [B,Q], active [B,Q] bool).
std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_queries_cpu(const at::Tensor& scores, const at::Tensor& audio,
                                                                  const at::Tensor& query_feat, int64_t dilation,
                                                                  double threshold, double dormant_gate, bool soft);
// Returns (d_scores [B,S], d_audio [B,D], d_query_feat [Q,D]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_queries_backward_cpu(
    const at::Tensor& grad_queries, const at::Tensor& grad_gate, const at::Tensor& audio, const at::Tensor& gate,
    const at::Tensor& active, int64_t num_markers, int64_t dilation, bool soft);

// matching_cost: see csrc/common/matching_cost.h. Returns the cost [B,Q,G] (float32; float64 for float64 logits).
at::Tensor matching_cost_cpu(const at::Tensor& mask_logits, const at::Tensor& target_masks,
                             const at::Tensor& class_logits, const at::Tensor& target_labels,
                             const at::Tensor& allowed, const at::Tensor& num_targets, double cost_class,
                             double cost_mask, double cost_dice);

// semantic_inference: see csrc/common/semantic_inference.h. Returns labels [B,H,W] int64 (reduce 0) or
// scores [B,H,W] float32 (reduce 1: foreground sum, 2: max over queries).
at::Tensor semantic_inference_cpu(const at::Tensor& mask, const at::Tensor& mask_biased, const at::Tensor& probs,
                                  const at::Tensor& probs_biased, const at::Tensor& gate,
                                  const at::Tensor& foreground, int64_t height, int64_t width, double alpha,
                                  bool uncertainty, bool mask_debias, bool overall, int64_t reduce);

// masked_cross_attention: see csrc/cpu/masked_attention_cpu.cpp. Returns (out [B,h,Q,dh], lse [B,h,Q] float32,
// float64 for float64 inputs); rows of dormant queries or without a visible key are 0 in both.
std::tuple<at::Tensor, at::Tensor> masked_cross_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v, const at::Tensor& mask_bits,
                                                              const at::Tensor& block_occupancy,
                                                              const at::Tensor& active, double scale);
// Returns (dq, dk, dv), contiguous.
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_cross_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& mask_bits, const at::Tensor& block_occupancy, const at::Tensor& active,
    double scale);

#ifdef COAVS_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> debias_logits_cuda(const at::Tensor& mask, const at::Tensor& cls,
                                                      const at::Tensor& mask_biased, const at::Tensor& cls_biased,
                                                      double alpha, bool uncertainty);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> debias_logits_backward_cuda(
    const at::Tensor& grad_mask, const at::Tensor& grad_cls, const at::Tensor& mask_biased,
    const at::Tensor& cls_biased, double alpha, bool uncertainty);
std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_queries_cuda(const at::Tensor& scores, const at::Tensor& audio,
                                                                   const at::Tensor& query_feat, int64_t dilation,
                                                                   double threshold, double dormant_gate, bool soft);
std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_queries_backward_cuda(
    const at::Tensor& grad_queries, const at::Tensor& grad_gate, const at::Tensor& audio, const at::Tensor& gate,
    const at::Tensor& active, int64_t num_markers, int64_t dilation, bool soft);
#endif

}  // namespace coavs
