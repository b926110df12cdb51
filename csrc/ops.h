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

#ifdef COAVS_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> debias_logits_cuda(const at::Tensor& mask, const at::Tensor& cls,
                                                      const at::Tensor& mask_biased, const at::Tensor& cls_biased,
                                                      double alpha, bool uncertainty);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> debias_logits_backward_cuda(
    const at::Tensor& grad_mask, const at::Tensor& grad_cls, const at::Tensor& mask_biased,
    const at::Tensor& cls_biased, double alpha, bool uncertainty);
#endif

}  // namespace coavs
