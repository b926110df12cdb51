// assign_queries on CUDA, one launch for the whole batch each way.
// The kernels are csrc/cuda/assign_queries_kernel.cuh (also run on the CPU by csrc/tests/test_device_code.cpp over
// an emulated grid); this file launches them on ATen tensors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "common/tensor_checks.h"
#include "cuda/assign_queries_kernel.cuh"

namespace coavs {

using namespace assign_kernel;

std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_queries_cuda(const at::Tensor& scores, const at::Tensor& audio,
                                                                   const at::Tensor& query_feat, int64_t dilation,
                                                                   double threshold, double dormant_gate, bool soft) {
  check_assign_inputs(scores, audio, query_feat, dilation);
  const auto sc = scores.contiguous(), au = audio.contiguous(), qf = query_feat.contiguous();
  const int64_t batch = sc.size(0), num_markers = sc.size(1), num_queries = qf.size(0), width = qf.size(1);
  auto queries = at::empty({batch, num_queries, width}, qf.options());
  auto gate = at::empty({batch, num_queries}, sc.options());
  auto active = at::empty({batch, num_queries}, sc.options().dtype(at::kBool));
  if (batch == 0) return {queries, gate, active};
  const int64_t tiles = ceil_div(num_queries, kRowsPerBlock);
  TORCH_CHECK(batch <= 65535, "assign_queries_cuda: batch ", batch, " exceeds the grid limit 65535");
  const c10::cuda::CUDAGuard guard(qf.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(batch));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sc.scalar_type(), "assign_queries_cuda_scores", [&] {
    using score_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qf.scalar_type(), "assign_queries_cuda", [&] {
      static_assert(std::is_same_v<opmath_t<scalar_t>, at::opmath_type<scalar_t>> &&
                        std::is_same_v<opmath_t<score_t>, at::opmath_type<score_t>>,
                    "opmath_t must match ATen's");
      assign_queries_kernel<scalar_t, score_t><<<grid, kThreads, 0, stream>>>(
          sc.const_data_ptr<score_t>(), au.const_data_ptr<scalar_t>(), qf.const_data_ptr<scalar_t>(),
          queries.mutable_data_ptr<scalar_t>(), gate.mutable_data_ptr<score_t>(), active.mutable_data_ptr<bool>(),
          num_markers, num_queries, width, dilation, static_cast<at::opmath_type<score_t>>(threshold),
          static_cast<score_t>(dormant_gate), soft);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {queries, gate, active};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_queries_backward_cuda(
    const at::Tensor& grad_queries, const at::Tensor& grad_gate, const at::Tensor& audio, const at::Tensor& gate,
    const at::Tensor& active, int64_t num_markers, int64_t dilation, bool soft) {
  check_assign_backward_inputs(grad_queries, grad_gate, audio, gate, active, num_markers, dilation);
  const auto g = grad_queries.contiguous(), gg = grad_gate.contiguous(), au = audio.contiguous();
  const auto gt = gate.contiguous(), ac = active.contiguous();
  const int64_t batch = g.size(0), num_queries = g.size(1), width = g.size(2);
  auto d_query_feat = at::empty({num_queries, width}, g.options());
  auto d_audio = at::empty({batch, width}, au.options());
  auto d_scores = at::empty({batch, num_markers}, gt.options());
  const BackwardBlocks parts = backward_blocks(batch, num_queries, width, num_markers);
  const int64_t feat_blocks = parts.feat, audio_blocks = parts.audio;
  const int64_t blocks = parts.total();
  if (blocks == 0) return {d_scores, d_audio, d_query_feat};
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "assign_queries_backward: input too large for one launch");
  const c10::cuda::CUDAGuard guard(g.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "assign_queries_backward_scores", [&] {
    using score_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "assign_queries_backward_cuda", [&] {
      assign_queries_backward_kernel<scalar_t, score_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), gg.const_data_ptr<score_t>(), au.const_data_ptr<scalar_t>(),
          gt.const_data_ptr<score_t>(), ac.const_data_ptr<bool>(), d_query_feat.mutable_data_ptr<scalar_t>(),
          d_audio.mutable_data_ptr<scalar_t>(), d_scores.mutable_data_ptr<score_t>(), batch, num_queries, width,
          num_markers, dilation, soft, feat_blocks, audio_blocks);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {d_scores, d_audio, d_query_feat};
}

}  // namespace coavs

// The CUDA kernels of these ops; their schemas are in csrc/torch_bindings.cpp.
TORCH_LIBRARY_IMPL(coavs_C, CUDA, m) {
  m.impl("assign_queries", &coavs::assign_queries_cuda);
  m.impl("assign_queries_backward", &coavs::assign_queries_backward_cuda);
}
