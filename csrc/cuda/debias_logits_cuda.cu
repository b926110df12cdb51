// debias_logits on CUDA: mask elements and class rows in one launch.
// The kernel is csrc/cuda/debias_logits_kernel.cuh (also run on the CPU by csrc/tests/test_device_code.cpp over an
// emulated grid); this file launches it on ATen tensors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "common/tensor_checks.h"
#include "cuda/debias_logits_kernel.cuh"

namespace coavs {
namespace {

using namespace debias_kernel;

template <bool kBackward>
void launch(const at::Tensor& mask, const at::Tensor& mask_b, at::Tensor& mask_out, at::Tensor* mask_out_b,
            const at::Tensor& cls, const at::Tensor& cls_b, at::Tensor& cls_out, at::Tensor* cls_out_b, double alpha,
            bool uncertainty) {
  const int64_t mask_numel = mask.numel();
  const int64_t rows = num_rows(cls);
  const int64_t width = rows ? cls.size(-1) : 0;
  TORCH_CHECK(width <= std::numeric_limits<int>::max(), "cls has too many classes: ", width);
  const int64_t mask_blocks = num_mask_blocks(mask_numel);
  const int64_t cls_blocks = num_class_blocks(rows);
  const int64_t blocks = mask_blocks + cls_blocks;
  if (blocks == 0) return;
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "debias_logits: input too large for one launch");
  const c10::cuda::CUDAGuard guard(mask.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mask.scalar_type(), "debias_logits_cuda", [&] {
    static_assert(std::is_same_v<opmath_t<scalar_t>, at::opmath_type<scalar_t>>, "opmath_t must match ATen's");
    debias_logits_kernel<scalar_t, kBackward><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        mask.const_data_ptr<scalar_t>(), mask_b.const_data_ptr<scalar_t>(), mask_out.mutable_data_ptr<scalar_t>(),
        mask_out_b ? mask_out_b->mutable_data_ptr<scalar_t>() : nullptr, mask_numel, mask_blocks,
        cls.const_data_ptr<scalar_t>(), cls_b.const_data_ptr<scalar_t>(), cls_out.mutable_data_ptr<scalar_t>(),
        cls_out_b ? cls_out_b->mutable_data_ptr<scalar_t>() : nullptr, rows, static_cast<int>(width),
        static_cast<at::opmath_type<scalar_t>>(alpha), uncertainty);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> debias_logits_cuda(const at::Tensor& mask, const at::Tensor& cls,
                                                      const at::Tensor& mask_biased, const at::Tensor& cls_biased,
                                                      double alpha, bool uncertainty) {
  check_debias_inputs(mask, cls, mask_biased, cls_biased, alpha);
  const auto m = mask.contiguous(), mb = mask_biased.contiguous();
  const auto c = cls.contiguous(), cb = cls_biased.contiguous();
  auto mask_out = at::empty_like(m);
  auto cls_out = at::empty_like(c);
  launch<false>(m, mb, mask_out, nullptr, c, cb, cls_out, nullptr, alpha, uncertainty);
  return {mask_out, cls_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> debias_logits_backward_cuda(
    const at::Tensor& grad_mask, const at::Tensor& grad_cls, const at::Tensor& mask_biased,
    const at::Tensor& cls_biased, double alpha, bool uncertainty) {
  check_debias_backward_inputs(grad_mask, grad_cls, mask_biased, cls_biased, alpha, uncertainty);
  const auto g = grad_mask.contiguous(), mb = mask_biased.contiguous();
  const auto gc = grad_cls.contiguous(), cb = cls_biased.contiguous();
  auto d_mask = at::empty_like(g), d_mask_b = at::empty_like(g);
  auto d_cls = at::empty_like(gc), d_cls_b = at::empty_like(gc);
  launch<true>(g, mb, d_mask, &d_mask_b, gc, cb, d_cls, &d_cls_b, alpha, uncertainty);
  return {d_mask, d_mask_b, d_cls, d_cls_b};
}

}  // namespace coavs

// The CUDA kernels of these ops; their schemas are in csrc/torch_bindings.cpp.
TORCH_LIBRARY_IMPL(coavs_C, CUDA, m) {
  m.impl("debias_logits", &coavs::debias_logits_cuda);
  m.impl("debias_logits_backward", &coavs::debias_logits_backward_cuda);
}
