// debias_logits on the CPU: at::parallel_for over mask elements, then over class rows.
//
// float32, float16 and bfloat16 run 8 lanes at a time with AVX2 + F16C where the CPU has them (see
// cpu/vec_avx2.h: checked at run time, so the extension still runs on CPUs without AVX2); the scalar loops are
// the portable path and give the same bits.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "common/debias_logits.h"
#include "common/tensor_checks.h"
#include "cpu/vec_avx2.h"

namespace coavs {
namespace {

constexpr int64_t kGrain = 1 << 15;

#if COAVS_HAVE_AVX2_KERNELS
// out = (1 + a) x - a x_b on n elements; a per element (a_each) or one for all (a_all).
template <typename scalar_t>
COAVS_TARGET_AVX2 void debias_avx2(const scalar_t* x, const scalar_t* xb, scalar_t* out, int64_t n,
                                   const float* a_each, float a_all) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 a = a_each != nullptr ? _mm256_loadu_ps(a_each + i) : _mm256_set1_ps(a_all);
    cpu::store8(out + i, _mm256_sub_ps(_mm256_mul_ps(_mm256_add_ps(one, a), cpu::load8(x + i)),
                                       _mm256_mul_ps(a, cpu::load8(xb + i))));
  }
  if (i < n) {
    float a_tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (a_each != nullptr) std::copy(a_each + i, a_each + n, a_tail);
    const cpu::Tail8<scalar_t> tx(x + i, n - i), txb(xb + i, n - i);
    scalar_t tout[8];
    debias_avx2(tx.data, txb.data, tout, 8, a_each != nullptr ? a_tail : nullptr, a_all);
    std::copy(tout, tout + (n - i), out + i);
  }
}

// dx = (1 + a) g, dx_b = -a g on n elements with one strength a.
template <typename scalar_t>
COAVS_TARGET_AVX2 void debias_backward_avx2(const scalar_t* g, scalar_t* dx, scalar_t* dxb, int64_t n,
                                            const float* a_each, float a_all) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 a = a_each != nullptr ? _mm256_loadu_ps(a_each + i) : _mm256_set1_ps(a_all);
    const __m256 gi = cpu::load8(g + i);
    cpu::store8(dx + i, _mm256_mul_ps(_mm256_add_ps(one, a), gi));
    cpu::store8(dxb + i, _mm256_mul_ps(_mm256_xor_ps(a, sign), gi));
  }
  if (i < n) {
    float a_tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (a_each != nullptr) std::copy(a_each + i, a_each + n, a_tail);
    const cpu::Tail8<scalar_t> tg(g + i, n - i);
    scalar_t tdx[8], tdxb[8];
    debias_backward_avx2(tg.data, tdx, tdxb, 8, a_each != nullptr ? a_tail : nullptr, a_all);
    std::copy(tdx, tdx + (n - i), dx + i);
    std::copy(tdxb, tdxb + (n - i), dxb + i);
  }
}
#endif

// Strengths of mask elements [begin, begin + n) under the uncertainty strategy, into a (float accumulation).
template <typename acc_t, typename scalar_t>
void mask_strengths(const scalar_t* mask_biased, int64_t n, acc_t alpha, acc_t* a) {
  for (int64_t i = 0; i < n; ++i) a[i] = mask_strength(alpha, static_cast<acc_t>(mask_biased[i]), true);
}

// Forward over [0, n): out = (1 + a) x - a x_b, a = alpha or per element from mask_biased (uncertainty).
template <typename acc_t, typename scalar_t>
void debias_range(const scalar_t* x, const scalar_t* xb, scalar_t* out, int64_t n, const acc_t* a_each,
                  acc_t a_all) {
#if COAVS_HAVE_AVX2_KERNELS
  if constexpr (cpu::has_avx2_path<scalar_t>()) {
    if (cpu::use_avx2()) return debias_avx2(x, xb, out, n, a_each, a_all);
  }
#endif
  for (int64_t i = 0; i < n; ++i) {
    const acc_t a = a_each != nullptr ? a_each[i] : a_all;
    out[i] = static_cast<scalar_t>(debias_value(static_cast<acc_t>(x[i]), static_cast<acc_t>(xb[i]), a));
  }
}

// Backward over [0, n): dx = (1 + a) g, dx_b = -a g.
template <typename acc_t, typename scalar_t>
void debias_backward_range(const scalar_t* g, scalar_t* dx, scalar_t* dxb, int64_t n, const acc_t* a_each,
                           acc_t a_all) {
#if COAVS_HAVE_AVX2_KERNELS
  if constexpr (cpu::has_avx2_path<scalar_t>()) {
    if (cpu::use_avx2()) return debias_backward_avx2(g, dx, dxb, n, a_each, a_all);
  }
#endif
  for (int64_t i = 0; i < n; ++i) {
    const acc_t a = a_each != nullptr ? a_each[i] : a_all;
    const DebiasGrad<acc_t> d = debias_grad(static_cast<acc_t>(g[i]), a);
    dx[i] = static_cast<scalar_t>(d.dx);
    dxb[i] = static_cast<scalar_t>(d.dx_biased);
  }
}

// Calls fn(begin, len, a_each) for pieces of the mask elements: a_each is null under the fixed strategy (the
// strength is alpha everywhere), else the per-element strengths of the piece.
template <typename acc_t, typename scalar_t, typename Fn>
void for_each_mask_piece(const scalar_t* mask_biased, int64_t n, acc_t alpha, bool uncertainty, const Fn& fn) {
  constexpr int64_t kPiece = 512;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    if (!uncertainty) return fn(begin, end - begin, static_cast<const acc_t*>(nullptr));
    acc_t a[kPiece];
    for (int64_t i = begin; i < end; i += kPiece) {
      const int64_t len = std::min(kPiece, end - i);
      mask_strengths(mask_biased + i, len, alpha, a);
      fn(i, len, static_cast<const acc_t*>(a));
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
      EntropyState<acc_t> state;
      if (uncertainty) {
        const scalar_t* row = cls_biased + r * width;
        for (int64_t j = 0; j < width; ++j) state.add(static_cast<acc_t>(row[j]));
      }
      fn(r, class_row_strength(alpha, state, static_cast<int>(width), uncertainty));
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
    const acc_t a_all = static_cast<acc_t>(alpha);
    for_each_mask_piece<acc_t>(xb, m.numel(), a_all, uncertainty, [&](int64_t i, int64_t len, const acc_t* a) {
      debias_range<acc_t>(x + i, xb + i, out + i, len, a, a_all);
    });
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "debias_logits_cpu_cls", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = c.const_data_ptr<scalar_t>();
    const scalar_t* xb = cb.const_data_ptr<scalar_t>();
    scalar_t* out = cls_out.mutable_data_ptr<scalar_t>();
    for_each_class_row<acc_t>(xb, num_rows(c), width, static_cast<acc_t>(alpha), uncertainty,
                              [&](int64_t r, acc_t a) {
                                const int64_t i = r * width;
                                debias_range<acc_t>(x + i, xb + i, out + i, width, nullptr, a);
                              });
  });
  return {mask_out, cls_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> debias_logits_backward_cpu(
    const at::Tensor& grad_mask, const at::Tensor& grad_cls, const at::Tensor& mask_biased,
    const at::Tensor& cls_biased, double alpha, bool uncertainty) {
  check_debias_backward_inputs(grad_mask, grad_cls, mask_biased, cls_biased, alpha, uncertainty);
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
    const acc_t a_all = static_cast<acc_t>(alpha);
    for_each_mask_piece<acc_t>(mb.const_data_ptr<scalar_t>(), g.numel(), a_all, uncertainty,
                               [&](int64_t i, int64_t len, const acc_t* a) {
                                 debias_backward_range<acc_t>(gp + i, dx + i, dxb + i, len, a, a_all);
                               });
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gc.scalar_type(), "debias_logits_backward_cpu_cls", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* dx = d_cls.mutable_data_ptr<scalar_t>();
    scalar_t* dxb = d_cls_b.mutable_data_ptr<scalar_t>();
    for_each_class_row<acc_t>(cb.const_data_ptr<scalar_t>(), num_rows(gc), width, static_cast<acc_t>(alpha),
                              uncertainty, [&](int64_t r, acc_t a) {
                                const int64_t i = r * width;
                                debias_backward_range<acc_t>(gp + i, dx + i, dxb + i, width, nullptr, a);
                              });
  });
  return {d_mask, d_mask_b, d_cls, d_cls_b};
}

}  // namespace coavs

// The CPU kernels of these ops; their schemas are in csrc/torch_bindings.cpp.
TORCH_LIBRARY_IMPL(coavs_C, CPU, m) {
  m.impl("debias_logits", &coavs::debias_logits_cpu);
  m.impl("debias_logits_backward", &coavs::debias_logits_backward_cpu);
}
