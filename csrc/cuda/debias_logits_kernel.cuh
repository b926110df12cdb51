// The CUDA kernel of debias_logits, without ATen: included by debias_logits_cuda.cu (nvcc) and by
// csrc/tests/test_device_code.cpp (g++, over the emulated grid of common/cuda_emulation.h).
//
// One launch: blocks [0, mask_blocks) stream mask tiles (kItemsPerThread elements per thread, strided by
// kThreads); the remaining blocks give one warp to each class row (the row's entropy is reduced with warp
// shuffles when the strength is uncertainty-weighted). The arithmetic is common/debias_logits.h.
#pragma once

#include <cstdint>

#if !defined(__CUDACC__)
#include "common/cuda_emulation.h"
#endif
#include "common/debias_logits.h"
#include "common/macros.h"
#include "common/math.h"

namespace coavs {
namespace debias_kernel {

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 8;
constexpr int64_t kMaskTile = int64_t(kThreads) * kItemsPerThread;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = kThreads / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;

// Blocks of one launch: mask tiles first, then class rows.
inline int64_t num_mask_blocks(int64_t mask_numel) { return (mask_numel + kMaskTile - 1) / kMaskTile; }
inline int64_t num_class_blocks(int64_t rows) { return (rows + kRowsPerBlock - 1) / kRowsPerBlock; }

template <typename T>
__device__ EntropyState<T> warp_merge(EntropyState<T> state) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    EntropyState<T> other;
    other.max = __shfl_xor_sync(kFullMask, state.max, offset);
    other.z = __shfl_xor_sync(kFullMask, state.z, offset);
    other.t = __shfl_xor_sync(kFullMask, state.t, offset);
    state.merge(other);
  }
  return state;
}

// Forward: x = logits, out = debiased.  Backward: x = upstream gradient, out = dx, out_b = dx_b.
template <typename scalar_t, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    debias_logits_kernel(const scalar_t* __restrict__ mask, const scalar_t* __restrict__ mask_b,
                         scalar_t* __restrict__ mask_out, scalar_t* __restrict__ mask_out_b, int64_t mask_numel,
                         int64_t mask_blocks, const scalar_t* __restrict__ cls, const scalar_t* __restrict__ cls_b,
                         scalar_t* __restrict__ cls_out, scalar_t* __restrict__ cls_out_b, int64_t rows, int width,
                         opmath_t<scalar_t> alpha, bool uncertainty) {
  using acc_t = opmath_t<scalar_t>;
  if (static_cast<int64_t>(blockIdx.x) < mask_blocks) {
    const int64_t base = static_cast<int64_t>(blockIdx.x) * kMaskTile + threadIdx.x;
#pragma unroll
    for (int k = 0; k < kItemsPerThread; ++k) {
      const int64_t i = base + int64_t(k) * kThreads;
      if (i < mask_numel) {
        // The fixed strategy's gradient never reads mask_b (it may be empty).
        const acc_t a = uncertainty ? mask_strength(alpha, static_cast<acc_t>(mask_b[i]), true) : alpha;
        const acc_t x = static_cast<acc_t>(mask[i]);
        if constexpr (kBackward) {
          const DebiasGrad<acc_t> d = debias_grad(x, a);
          mask_out[i] = static_cast<scalar_t>(d.dx);
          mask_out_b[i] = static_cast<scalar_t>(d.dx_biased);
        } else {
          mask_out[i] = static_cast<scalar_t>(debias_value(x, static_cast<acc_t>(mask_b[i]), a));
        }
      }
    }
    return;
  }
  const int lane = threadIdx.x % kWarp;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) - mask_blocks) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= rows) return;  // whole warps exit together
  const int64_t offset = row * width;
  acc_t a = alpha;
  if (uncertainty) {
    EntropyState<acc_t> state;
    for (int j = lane; j < width; j += kWarp) state.add(static_cast<acc_t>(cls_b[offset + j]));
    state = warp_merge(state);
    a = class_row_strength(alpha, state, width, true);
    a = __shfl_sync(kFullMask, a, 0);  // identical strength on every lane
  }
  for (int j = lane; j < width; j += kWarp) {
    const acc_t x = static_cast<acc_t>(cls[offset + j]);
    if constexpr (kBackward) {
      const DebiasGrad<acc_t> d = debias_grad(x, a);
      cls_out[offset + j] = static_cast<scalar_t>(d.dx);
      cls_out_b[offset + j] = static_cast<scalar_t>(d.dx_biased);
    } else {
      cls_out[offset + j] = static_cast<scalar_t>(debias_value(x, static_cast<acc_t>(cls_b[offset + j]), a));
    }
  }
}

}  // namespace debias_kernel
}  // namespace coavs
