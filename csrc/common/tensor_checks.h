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

}  // namespace coavs
