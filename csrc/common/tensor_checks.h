// Host-side argument checks shared by the CPU and CUDA entry points.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace coavs {

// `a` and `b` must agree in shape, dtype and device; messages name the arguments.
inline void check_same(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.sizes() == b.sizes(), b_name, " must have the shape of ", a_name, ": got ", b.sizes(), " vs ",
              a.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), b_name, " must have the dtype of ", a_name, ": got ",
              b.scalar_type(), " vs ", a.scalar_type());
  TORCH_CHECK(a.device() == b.device(), b_name, " must be on the device of ", a_name, ": got ", b.device(), " vs ",
              a.device());
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating-point tensor, got ", t.scalar_type());
}

// The ScalarType of opmath_t (common/math.h) for a storage type: kDouble for double, kFloat for everything else.
inline at::ScalarType opmath_scalar_type(at::ScalarType storage) {
  return storage == at::kDouble ? at::kDouble : at::kFloat;
}

// Rows of the last dimension: a [..., n] tensor is rows x n (0 rows when empty).
inline int64_t num_rows(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  return t.numel() / t.size(-1);
}

inline void check_debias_inputs(const at::Tensor& mask, const at::Tensor& cls, const at::Tensor& mask_biased,
                                const at::Tensor& cls_biased, double alpha) {
  check_floating(mask, "mask");
  check_floating(cls, "cls");
  check_same(mask, "mask", mask_biased, "mask_biased");
  check_same(cls, "cls", cls_biased, "cls_biased");
  TORCH_CHECK(cls.device() == mask.device(), "cls must be on the device of mask: got ", cls.device(), " vs ",
              mask.device());
  TORCH_CHECK(cls.scalar_type() == mask.scalar_type(), "cls must have the dtype of mask: got ", cls.scalar_type(),
              " vs ", mask.scalar_type());
  TORCH_CHECK(std::isfinite(alpha) && alpha >= 0.0, "alpha must be finite and >= 0, got ", alpha);
}

// The backward reads the biased logits only for the uncertainty strategy: with the fixed strategy they may be
// empty (no tensor of their size is made just to be ignored).
inline void check_debias_backward_inputs(const at::Tensor& grad_mask, const at::Tensor& grad_cls,
                                         const at::Tensor& mask_biased, const at::Tensor& cls_biased, double alpha,
                                         bool uncertainty) {
  if (uncertainty || (mask_biased.numel() == grad_mask.numel() && cls_biased.numel() == grad_cls.numel())) {
    check_debias_inputs(grad_mask, grad_cls, mask_biased, cls_biased, alpha);
    return;
  }
  check_debias_inputs(grad_mask, grad_cls, grad_mask, grad_cls, alpha);
  if (mask_biased.numel() != 0) check_same(grad_mask, "grad_mask", mask_biased, "mask_biased");
  if (cls_biased.numel() != 0) check_same(grad_cls, "grad_cls", cls_biased, "cls_biased");
}

// assign_queries: scores [B,S], audio [B,D], query_feat [Q,D]; S*d <= Q.
inline void check_assign_inputs(const at::Tensor& scores, const at::Tensor& audio, const at::Tensor& query_feat,
                                int64_t dilation) {
  check_floating(scores, "scores");
  check_floating(audio, "audio");
  check_floating(query_feat, "query_feat");
  TORCH_CHECK(scores.dim() == 2, "scores must be [B,S], got ", scores.sizes());
  TORCH_CHECK(audio.dim() == 2, "audio must be [B,D], got ", audio.sizes());
  TORCH_CHECK(query_feat.dim() == 2, "query_feat must be [Q,D], got ", query_feat.sizes());
  TORCH_CHECK(audio.size(0) == scores.size(0), "audio must have the batch size of scores: got ", audio.size(0),
              " vs ", scores.size(0));
  TORCH_CHECK(audio.size(1) == query_feat.size(1), "audio must have the width of query_feat: got ", audio.size(1),
              " vs ", query_feat.size(1));
  TORCH_CHECK(audio.scalar_type() == query_feat.scalar_type(), "audio must have the dtype of query_feat: got ",
              audio.scalar_type(), " vs ", query_feat.scalar_type());
  TORCH_CHECK(audio.device() == query_feat.device() && scores.device() == query_feat.device(),
              "scores, audio and query_feat must be on one device");
  TORCH_CHECK(scores.size(1) >= 1, "scores must have at least one marker");
  TORCH_CHECK(dilation >= 1, "dilation must be >= 1, got ", dilation);
  TORCH_CHECK(scores.size(1) * dilation <= query_feat.size(0), "markers x dilation (", scores.size(1), " x ",
              dilation, ") exceeds the number of queries ", query_feat.size(0));
}

// assign_queries_backward: grad_queries [B,Q,D], grad_gate/gate [B,Q] (score dtype), audio [B,D], active [B,Q].
inline void check_assign_backward_inputs(const at::Tensor& grad_queries, const at::Tensor& grad_gate,
                                         const at::Tensor& audio, const at::Tensor& gate, const at::Tensor& active,
                                         int64_t num_markers, int64_t dilation) {
  check_floating(grad_queries, "grad_queries");
  check_floating(gate, "gate");
  TORCH_CHECK(grad_queries.dim() == 3, "grad_queries must be [B,Q,D], got ", grad_queries.sizes());
  const int64_t b = grad_queries.size(0), q = grad_queries.size(1), d = grad_queries.size(2);
  TORCH_CHECK(audio.dim() == 2 && audio.size(0) == b && audio.size(1) == d, "audio must be [B,D] = [", b, ",", d,
              "], got ", audio.sizes());
  TORCH_CHECK(audio.scalar_type() == grad_queries.scalar_type(), "audio must have the dtype of grad_queries");
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == b && gate.size(1) == q, "gate must be [B,Q] = [", b, ",", q,
              "], got ", gate.sizes());
  check_same(gate, "gate", grad_gate, "grad_gate");
  TORCH_CHECK(active.scalar_type() == at::kBool && active.sizes() == gate.sizes(), "active must be a bool [B,Q] "
              "tensor, got ", active.scalar_type(), " ", active.sizes());
  TORCH_CHECK(num_markers >= 1 && dilation >= 1 && num_markers * dilation <= q, "markers x dilation (", num_markers,
              " x ", dilation, ") must be positive and at most the number of queries ", q);
  for (const at::Tensor* t : {&audio, &gate, &active}) {
    TORCH_CHECK(t->device() == grad_queries.device(), "assign_queries_backward inputs must be on one device");
  }
}

// matching_cost: mask_logits [B,Q,P], target_masks [B,G,P], class_logits [B,Q,K+1], target_labels [B,G] long,
// allowed [B,Q,G] bool, num_targets [B] long.
inline void check_matching_inputs(const at::Tensor& mask_logits, const at::Tensor& target_masks,
                                  const at::Tensor& class_logits, const at::Tensor& target_labels,
                                  const at::Tensor& allowed, const at::Tensor& num_targets) {
  check_floating(mask_logits, "mask_logits");
  check_floating(target_masks, "target_masks");
  check_floating(class_logits, "class_logits");
  TORCH_CHECK(mask_logits.dim() == 3, "mask_logits must be [B,Q,P], got ", mask_logits.sizes());
  const int64_t b = mask_logits.size(0), q = mask_logits.size(1), p = mask_logits.size(2);
  TORCH_CHECK(target_masks.dim() == 3 && target_masks.size(0) == b && target_masks.size(2) == p,
              "target_masks must be [B,G,P] with B=", b, " and P=", p, ", got ", target_masks.sizes());
  const int64_t g = target_masks.size(1);
  TORCH_CHECK(class_logits.dim() == 3 && class_logits.size(0) == b && class_logits.size(1) == q &&
                  class_logits.size(2) >= 1,
              "class_logits must be [B,Q,K+1] with B=", b, " and Q=", q, ", got ", class_logits.sizes());
  TORCH_CHECK(target_labels.scalar_type() == at::kLong && target_labels.dim() == 2 && target_labels.size(0) == b &&
                  target_labels.size(1) == g,
              "target_labels must be a long [B,G] tensor with B=", b, " and G=", g, ", got ",
              target_labels.scalar_type(), " ", target_labels.sizes());
  TORCH_CHECK(allowed.scalar_type() == at::kBool && allowed.dim() == 3 && allowed.size(0) == b &&
                  allowed.size(1) == q && allowed.size(2) == g,
              "allowed must be a bool [B,Q,G] tensor with B=", b, ", Q=", q, ", G=", g, ", got ",
              allowed.scalar_type(), " ", allowed.sizes());
  TORCH_CHECK(num_targets.scalar_type() == at::kLong && num_targets.dim() == 1 && num_targets.size(0) == b,
              "num_targets must be a long [B] tensor, got ", num_targets.scalar_type(), " ", num_targets.sizes());
  TORCH_CHECK(p >= 1 || b * q * g == 0, "matching_cost needs at least one sampled point");
  for (const at::Tensor* t : {&target_masks, &class_logits, &target_labels, &allowed, &num_targets}) {
    TORCH_CHECK(t->device() == mask_logits.device(), "every matching_cost input must be on the device of "
                "mask_logits (", mask_logits.device(), "), got ", t->device());
  }
}

}  // namespace coavs
