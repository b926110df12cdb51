// assign_queries on CUDA, one launch for the whole batch each way.
// Forward: grid (query tiles, B). Each block reduces its sample's marker scores to the presence state (any marker
// over the threshold, top-scoring marker), writes gate and active for its kRowsPerBlock queries, then the prompted
// queries of those rows with the threads spread over D.
// Backward: one launch, three block ranges: d_query_feat (sum over B), d_audio (sum over Q), d_scores (one warp
// per (sample, marker); zeros unless soft).
// The arithmetic is csrc/common/assign_queries.h, shared with the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/assign_queries.h"
#include "common/tensor_checks.h"
#include "ops.h"

namespace coavs {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;
constexpr int kRowsPerBlock = 8;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__device__ PresenceState<T> warp_merge(PresenceState<T> state) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    PresenceState<T> other;
    other.any_present = __shfl_xor_sync(kFullMask, static_cast<int>(state.any_present), offset) != 0;
    other.best = __shfl_xor_sync(kFullMask, state.best, offset);
    other.best_index = __shfl_xor_sync(kFullMask, static_cast<long long>(state.best_index), offset);
    state.merge(other);
  }
  return state;
}

// The presence state of one row of scores, identical on every thread of the block.
template <typename score_t>
__device__ PresenceState<at::opmath_type<score_t>> block_presence(const score_t* __restrict__ row,
                                                                  int64_t num_markers,
                                                                  at::opmath_type<score_t> threshold) {
  using acc_t = at::opmath_type<score_t>;
  // Field by field: __shared__ variables cannot have constructors.
  __shared__ int any_present[kWarps];
  __shared__ acc_t best[kWarps];
  __shared__ long long best_index[kWarps];
  PresenceState<acc_t> state;
  for (int64_t m = threadIdx.x; m < num_markers; m += kThreads) state.add(static_cast<acc_t>(row[m]), m, threshold);
  state = warp_merge(state);
  if (threadIdx.x % kWarp == 0) {
    any_present[threadIdx.x / kWarp] = state.any_present;
    best[threadIdx.x / kWarp] = state.best;
    best_index[threadIdx.x / kWarp] = state.best_index;
  }
  __syncthreads();
  PresenceState<acc_t> total;
  for (int w = 0; w < kWarps; ++w) {
    PresenceState<acc_t> part;
    part.any_present = any_present[w] != 0;
    part.best = best[w];
    part.best_index = best_index[w];
    total.merge(part);
  }
  return total;
}

template <typename scalar_t, typename score_t>
__global__ void __launch_bounds__(kThreads)
    assign_queries_kernel(const score_t* __restrict__ scores, const scalar_t* __restrict__ audio,
                          const scalar_t* __restrict__ query_feat, scalar_t* __restrict__ queries,
                          score_t* __restrict__ gate, bool* __restrict__ active, int64_t num_markers,
                          int64_t num_queries, int64_t width, int64_t dilation, at::opmath_type<score_t> threshold,
                          score_t dormant_gate, bool soft) {
  using acc_t = at::opmath_type<scalar_t>;
  using score_acc = at::opmath_type<score_t>;
  __shared__ acc_t row_gate[kRowsPerBlock];
  const int64_t b = blockIdx.y;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock;
  const score_t* score_row = scores + b * num_markers;
  const int64_t fallback = block_presence(score_row, num_markers, threshold).fallback_marker();
  if (threadIdx.x < kRowsPerBlock && q0 + threadIdx.x < num_queries) {
    const int64_t q = q0 + threadIdx.x;
    const int64_t m = marker_of_query(q, num_markers, dilation);
    const score_t score = m >= 0 ? score_row[m] : dormant_gate;
    const bool on = marker_present(static_cast<score_acc>(score), threshold, m, fallback);
    const score_t value = gate_value(on, soft, score, dormant_gate);
    gate[b * num_queries + q] = value;
    active[b * num_queries + q] = on;
    row_gate[threadIdx.x] = static_cast<acc_t>(static_cast<score_acc>(value));
  }
  __syncthreads();
  const int64_t rows = min(static_cast<int64_t>(kRowsPerBlock), num_queries - q0);
  const scalar_t* audio_row = audio + b * width;
  for (int64_t i = threadIdx.x; i < rows * width; i += kThreads) {
    const int64_t r = i / width, j = i - r * width;
    const int64_t q = q0 + r;
    queries[(b * num_queries + q) * width + j] = static_cast<scalar_t>(prompted_query(
        static_cast<acc_t>(query_feat[q * width + j]), row_gate[r], static_cast<acc_t>(audio_row[j])));
  }
}

template <typename T>
__device__ T warp_sum(T value) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

template <typename scalar_t, typename score_t>
__global__ void __launch_bounds__(kThreads)
    assign_queries_backward_kernel(const scalar_t* __restrict__ grad_queries, const score_t* __restrict__ grad_gate,
                                   const scalar_t* __restrict__ audio, const score_t* __restrict__ gate,
                                   const bool* __restrict__ active, scalar_t* __restrict__ d_query_feat,
                                   scalar_t* __restrict__ d_audio, score_t* __restrict__ d_scores, int64_t batch,
                                   int64_t num_queries, int64_t width, int64_t num_markers, int64_t dilation,
                                   bool soft, int64_t feat_blocks, int64_t audio_blocks) {
  using acc_t = at::opmath_type<scalar_t>;
  using score_acc = at::opmath_type<score_t>;
  const int64_t block = blockIdx.x;
  if (block < feat_blocks) {  // d_query_feat[q, j] = sum_b g[b, q, j]
    const int64_t i = block * kThreads + threadIdx.x;
    if (i >= num_queries * width) return;
    acc_t sum = 0;
    for (int64_t b = 0; b < batch; ++b) sum += static_cast<acc_t>(grad_queries[b * num_queries * width + i]);
    d_query_feat[i] = static_cast<scalar_t>(sum);
    return;
  }
  if (block < feat_blocks + audio_blocks) {  // d_audio[b, j] = sum_q gate[b, q] g[b, q, j]
    const int64_t i = (block - feat_blocks) * kThreads + threadIdx.x;
    if (i >= batch * width) return;
    const int64_t b = i / width, j = i - b * width;
    acc_t sum = 0;
    for (int64_t q = 0; q < num_queries; ++q) {
      const auto g = static_cast<acc_t>(static_cast<score_acc>(gate[b * num_queries + q]));
      sum += g * static_cast<acc_t>(grad_queries[(b * num_queries + q) * width + j]);
    }
    d_audio[i] = static_cast<scalar_t>(sum);
    return;
  }
  // d_scores[b, s]: one warp per (sample, marker).
  const int64_t pair = (block - feat_blocks - audio_blocks) * kWarps + threadIdx.x / kWarp;
  if (pair >= batch * num_markers) return;  // whole warps exit together
  const int lane = threadIdx.x % kWarp;
  const int64_t b = pair / num_markers, s = pair - b * num_markers;
  acc_t dot = 0;
  score_acc gate_grad = 0;
  if (soft) {
    for (int64_t k = 0; k < dilation; ++k) {
      const int64_t r = b * num_queries + s * dilation + k;
      if (!active[r]) continue;  // the same branch on every lane
      const scalar_t* g_row = grad_queries + r * width;
      const scalar_t* a_row = audio + b * width;
      for (int64_t j = lane; j < width; j += kWarp) dot += static_cast<acc_t>(g_row[j]) * static_cast<acc_t>(a_row[j]);
      if (lane == 0) gate_grad += static_cast<score_acc>(grad_gate[r]);
    }
  }
  dot = warp_sum(dot);
  if (lane == 0) d_scores[pair] = static_cast<score_t>(static_cast<score_acc>(dot) + gate_grad);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

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
  const int64_t feat_blocks = ceil_div(num_queries * width, kThreads);
  const int64_t audio_blocks = ceil_div(batch * width, kThreads);
  const int64_t score_blocks = ceil_div(batch * num_markers, kWarps);
  const int64_t blocks = feat_blocks + audio_blocks + score_blocks;
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
