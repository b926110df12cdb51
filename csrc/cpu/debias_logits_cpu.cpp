// debias_logits on the CPU: at::parallel_for over mask elements, then over class rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "common/debias_logits.h"
#include "common/tensor_checks.h"
#include "ops.h"

namespace coavs {
namespace {

constexpr int64_t kGrain = 1 << 15;

// Calls fn(i, a) for every mask element i with its effective strength a.
// The two loops are separate so that the fixed one (no tanh) vectorizes.
template <typename acc_t, typename scalar_t, typename Fn>
void for_each_mask_element(const scalar_t* mask_biased, int64_t n, acc_t alpha, bool uncertainty, const Fn& fn) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    if (uncertainty) {
      for (int64_t i = begin; i < end; ++i) fn(i, alpha * mask_confidence(static_cast<acc_t>(mask_biased[i])));
    } else {
      for (int64_t i = begin; i < end; ++i) fn(i, alpha);
    }
  });
}

// Calls fn(row, a) for every class row with its effective strength a.
template <typename acc_t, typename scalar_t, typename Fn>
void for_each_class_row(const scalar_t* cls_biased, int64_t rows, int64_t width, acc_t alpha, bool uncertainty,
                        const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(width, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      acc_t a = alpha;
      if (uncertainty) {
        EntropyState<acc_t> state;
        const scalar_t* row = cls_biased + r * width;
        for (int64_t j = 0; j < width; ++j) state.add(static_cast<acc_t>(row[j]));
        a = alpha * class_confidence(state.entropy(), static_cast<int>(width));
      }
      fn(r, a);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> debias_logits_cpu(const at::Tensor& mask, const at::Tensor& cls,
                                                     const at::Tensor& mask_biased, const at::Tensor& cls_biased,
                                                     double alpha, bool uncertainty) {
  check_debias_inputs(mask, cls, mask_biased, cls_biased, alpha);
  const auto m = mask.contiguous(), mb = mask_biased.contiguous();
  const auto c = cls.contiguous(), cb = cls_biased.contiguous();
  auto mask_out = at::empty_like(m);
  auto cls_out = at::empty_like(c);
  const int64_t width = c.numel() ? c.size(-1) : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "debias_logits_cpu_mask", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = m.const_data_ptr<scalar_t>();
    const scalar_t* xb = mb.const_data_ptr<scalar_t>();
    scalar_t* out = mask_out.mutable_data_ptr<scalar_t>();
    for_each_mask_element<acc_t>(xb, m.numel(), static_cast<acc_t>(alpha), uncertainty, [&](int64_t i, acc_t a) {
      out[i] = static_cast<scalar_t>(debias_value(static_cast<acc_t>(x[i]), static_cast<acc_t>(xb[i]), a));
    });
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "debias_logits_cpu_cls", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = c.const_data_ptr<scalar_t>();
    const scalar_t* xb = cb.const_data_ptr<scalar_t>();
    scalar_t* out = cls_out.mutable_data_ptr<scalar_t>();
    for_each_class_row<acc_t>(xb, num_rows(c), width, static_cast<acc_t>(alpha), uncertainty,
                              [&](int64_t r, acc_t a) {
                                for (int64_t i = r * width; i < (r + 1) * width; ++i) {
                                  out[i] = static_cast<scalar_t>(
                                      debias_value(static_cast<acc_t>(x[i]), static_cast<acc_t>(xb[i]), a));
                                }
                              });
  });
  return {mask_out, cls_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> debias_logits_backward_cpu(
    const at::Tensor& grad_mask, const at::Tensor& grad_cls, const at::Tensor& mask_biased,
    const at::Tensor& cls_biased, double alpha, bool uncertainty) {
  check_debias_inputs(grad_mask, grad_cls, mask_biased, cls_biased, alpha);
  const auto g = grad_mask.contiguous(), mb = mask_biased.contiguous();
  const auto gc = grad_cls.contiguous(), cb = cls_biased.contiguous();
  auto d_mask = at::empty_like(g), d_mask_b = at::empty_like(g);
  auto d_cls = at::empty_like(gc), d_cls_b = at::empty_like(gc);
  const int64_t width = gc.numel() ? gc.size(-1) : 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "debias_logits_backward_cpu_mask", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dx = d_mask.mutable_data_ptr<scalar_t>();
    scalar_t* dxb = d_mask_b.mutable_data_ptr<scalar_t>();
    for_each_mask_element<acc_t>(mb.const_data_ptr<scalar_t>(), g.numel(), static_cast<acc_t>(alpha), uncertainty,
                                 [&](int64_t i, acc_t a) {
                                   const acc_t gi = static_cast<acc_t>(gp[i]);
                                   dx[i] = static_cast<scalar_t>((acc_t(1) + a) * gi);
                                   dxb[i] = static_cast<scalar_t>(-a * gi);
                                 });
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "debias_logits_backward_cpu_cls", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* dx = d_cls.mutable_data_ptr<scalar_t>();
    scalar_t* dxb = d_cls_b.mutable_data_ptr<scalar_t>();
    for_each_class_row<acc_t>(cb.const_data_ptr<scalar_t>(), num_rows(gc), width, static_cast<acc_t>(alpha),
                              uncertainty, [&](int64_t r, acc_t a) {
                                for (int64_t i = r * width; i < (r + 1) * width; ++i) {
                                  const acc_t gi = static_cast<acc_t>(gp[i]);
                                  dx[i] = static_cast<scalar_t>((acc_t(1) + a) * gi);
                                  dxb[i] = static_cast<scalar_t>(-a * gi);
                                }
                              });
  });
  return {d_mask, d_mask_b, d_cls, d_cls_b};
}

}  // namespace coavs
