// The CUDA kernels of assign_queries, without ATen: included by assign_queries_cuda.cu (nvcc) and by
// csrc/tests/test_device_code.cpp (g++, over the emulated grid of common/cuda_emulation.h, which also runs the
// block barrier and the warp shuffles).
//
// Forward: grid (query tiles, B). Each block reduces its sample's marker scores to the presence state (any marker
// over the threshold, top-scoring marker; warp shuffles, then shared memory and __syncthreads), writes gate and
// active for its kRowsPerBlock queries, then the prompted queries of those rows with the threads spread over D.
// Backward: one launch, three block ranges: d_query_feat (32 elements of [Q,D] per block, the 8 warps split the
// batch), d_audio (32 columns of one sample per block, the 8 warps split the queries; 160 blocks at B=20, D=256,
// where one thread per element looping over all Q gave 20), d_scores (one warp per (sample, marker); zeros unless
// soft). The warps' partial sums meet in shared memory in a fixed order, so results are deterministic.
// The arithmetic is csrc/common/assign_queries.h, shared with the CPU kernel.
#pragma once

#include <cstdint>

#if !defined(__CUDACC__)
#include "common/cuda_emulation.h"
#endif
#include "common/assign_queries.h"
#include "common/macros.h"
#include "common/math.h"

namespace coavs {
namespace assign_kernel {

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
__device__ PresenceState<opmath_t<score_t>> block_presence(const score_t* __restrict__ row,
                                                                  int64_t num_markers,
                                                                  opmath_t<score_t> threshold) {
  using acc_t = opmath_t<score_t>;
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
                          int64_t num_queries, int64_t width, int64_t dilation, opmath_t<score_t> threshold,
                          score_t dormant_gate, bool soft) {
  using acc_t = opmath_t<scalar_t>;
  using score_acc = opmath_t<score_t>;
  __shared__ acc_t row_gate[kRowsPerBlock];
  const int64_t b = blockIdx.y;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock;
  const score_t* score_row = scores + b * num_markers;
  const int64_t fallback = block_presence(score_row, num_markers, threshold).fallback_marker();
  if (threadIdx.x < kRowsPerBlock && q0 + threadIdx.x < num_queries) {
    const int64_t q = q0 + threadIdx.x;
    const QueryGate<score_t> g = query_gate(score_row, q, num_markers, dilation, threshold, fallback, dormant_gate, soft);
    gate[b * num_queries + q] = g.gate;
    active[b * num_queries + q] = g.active;
    row_gate[threadIdx.x] = static_cast<acc_t>(static_cast<score_acc>(g.gate));
  }
  __syncthreads();
  const int64_t rows = num_queries - q0 < kRowsPerBlock ? num_queries - q0 : kRowsPerBlock;
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

// Sums of a column over the 8 warps of the block: each warp adds its share, lane `lane` of warp 0 adds the 8
// partial sums in warp order (a fixed order: deterministic). Every thread of the block must call it.
template <typename acc_t>
__device__ acc_t block_column_sum(acc_t partial, int warp, int lane) {
  __shared__ acc_t parts[kWarps][kWarp];
  parts[warp][lane] = partial;
  __syncthreads();
  acc_t total = 0;
  if (warp == 0) {
    for (int w = 0; w < kWarps; ++w) total += parts[w][lane];
  }
  return total;
}

template <typename scalar_t, typename score_t>
__global__ void __launch_bounds__(kThreads)
    assign_queries_backward_kernel(const scalar_t* __restrict__ grad_queries, const score_t* __restrict__ grad_gate,
                                   const scalar_t* __restrict__ audio, const score_t* __restrict__ gate,
                                   const bool* __restrict__ active, scalar_t* __restrict__ d_query_feat,
                                   scalar_t* __restrict__ d_audio, score_t* __restrict__ d_scores, int64_t batch,
                                   int64_t num_queries, int64_t width, int64_t num_markers, int64_t dilation,
                                   bool soft, int64_t feat_blocks, int64_t audio_blocks) {
  using acc_t = opmath_t<scalar_t>;
  using score_acc = opmath_t<score_t>;
  const int64_t block = blockIdx.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (block < feat_blocks) {
    // d_query_feat[i] = sum_b g[b, i] over the 32 consecutive elements i of [Q*D] of this block (one per lane,
    // coalesced); the 8 warps split the batch.
    const int64_t elements = num_queries * width;
    const int64_t i = block * kWarp + lane;
    acc_t sum = 0;
    if (i < elements) {
      for (int64_t b = warp; b < batch; b += kWarps) sum += static_cast<acc_t>(grad_queries[b * elements + i]);
    }
    const acc_t total = block_column_sum(sum, warp, lane);
    if (warp == 0 && i < elements) d_query_feat[i] = static_cast<scalar_t>(total);
    return;
  }
  if (block < feat_blocks + audio_blocks) {
    // d_audio[b, j] = sum_q gate[b, q] g[b, q, j] over 32 consecutive columns j of sample b (one per lane); the
    // 8 warps split the queries.
    const int64_t column_tiles = (width + kWarp - 1) / kWarp;
    const int64_t a = block - feat_blocks;
    const int64_t b = a / column_tiles, j = (a % column_tiles) * kWarp + lane;
    acc_t sum = 0;
    if (j < width) {
      for (int64_t q = warp; q < num_queries; q += kWarps) {
        const auto g = static_cast<acc_t>(static_cast<score_acc>(gate[b * num_queries + q]));
        sum += g * static_cast<acc_t>(grad_queries[(b * num_queries + q) * width + j]);
      }
    }
    const acc_t total = block_column_sum(sum, warp, lane);
    if (warp == 0 && j < width) d_audio[b * width + j] = static_cast<scalar_t>(total);
    return;
  }
  // d_scores[b, s]: one warp per (sample, marker).
  const int64_t pair = (block - feat_blocks - audio_blocks) * kWarps + warp;
  if (pair >= batch * num_markers) return;  // whole warps exit together
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
  if (lane == 0) d_scores[pair] = static_cast<score_t>(score_grad_term(dot, gate_grad));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of the backward launch: d_query_feat (32 elements of [Q*D] each, the warps split B), then d_audio (32
// columns of one sample each, the warps split Q), then d_scores (8 (sample, marker) pairs each).
struct BackwardBlocks {
  int64_t feat;
  int64_t audio;
  int64_t scores;
  int64_t total() const { return feat + audio + scores; }
};

inline BackwardBlocks backward_blocks(int64_t batch, int64_t num_queries, int64_t width, int64_t num_markers) {
  return {ceil_div(num_queries * width, kWarp), batch * ceil_div(width, kWarp), ceil_div(batch * num_markers, kWarps)};
}

}  // namespace assign_kernel
}  // namespace coavs
