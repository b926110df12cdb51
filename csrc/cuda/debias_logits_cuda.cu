// debias_logits on CUDA: mask elements and class rows in one launch.
// Blocks [0, mask_blocks) stream mask tiles; the remaining blocks give one warp to each class row
// (the row's entropy is reduced with warp shuffles when the strength is uncertainty-weighted).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/debias_logits.h"
#include "common/tensor_checks.h"
#include "ops.h"

namespace coavs {
namespace {

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 8;
constexpr int64_t kMaskTile = int64_t(kThreads) * kItemsPerThread;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = kThreads / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;

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
                         at::opmath_type<scalar_t> alpha, bool uncertainty) {
  using acc_t = at::opmath_type<scalar_t>;
  if (static_cast<int64_t>(blockIdx.x) < mask_blocks) {
    const int64_t base = static_cast<int64_t>(blockIdx.x) * kMaskTile + threadIdx.x;
#pragma unroll
    for (int k = 0; k < kItemsPerThread; ++k) {
      const int64_t i = base + int64_t(k) * kThreads;
      if (i < mask_numel) {
        const acc_t xb = static_cast<acc_t>(mask_b[i]);
        const acc_t a = uncertainty ? alpha * mask_confidence(xb) : alpha;
        const acc_t x = static_cast<acc_t>(mask[i]);
        if constexpr (kBackward) {
          mask_out[i] = static_cast<scalar_t>((acc_t(1) + a) * x);
          mask_out_b[i] = static_cast<scalar_t>(-a * x);
        } else {
          mask_out[i] = static_cast<scalar_t>(debias_value(x, xb, a));
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
    a = alpha * class_confidence(state.entropy(), width);
    a = __shfl_sync(kFullMask, a, 0);  // identical strength on every lane
  }
  for (int j = lane; j < width; j += kWarp) {
    const acc_t x = static_cast<acc_t>(cls[offset + j]);
    if constexpr (kBackward) {
      cls_out[offset + j] = static_cast<scalar_t>((acc_t(1) + a) * x);
      cls_out_b[offset + j] = static_cast<scalar_t>(-a * x);
    } else {
      cls_out[offset + j] = static_cast<scalar_t>(debias_value(x, static_cast<acc_t>(cls_b[offset + j]), a));
    }
  }
}

template <bool kBackward>
void launch(const at::Tensor& mask, const at::Tensor& mask_b, at::Tensor& mask_out, at::Tensor* mask_out_b,
            const at::Tensor& cls, const at::Tensor& cls_b, at::Tensor& cls_out, at::Tensor* cls_out_b, double alpha,
            bool uncertainty) {
  const int64_t mask_numel = mask.numel();
  const int64_t rows = num_rows(cls);
  const int64_t width = rows ? cls.size(-1) : 0;
  TORCH_CHECK(width <= std::numeric_limits<int>::max(), "cls has too many classes: ", width);
  const int64_t mask_blocks = (mask_numel + kMaskTile - 1) / kMaskTile;
  const int64_t cls_blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t blocks = mask_blocks + cls_blocks;
  if (blocks == 0) return;
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "debias_logits: input too large for one launch");
  const c10::cuda::CUDAGuard guard(mask.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mask.scalar_type(), "debias_logits_cuda", [&] {
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
  check_debias_inputs(grad_mask, grad_cls, mask_biased, cls_biased, alpha);
  const auto g = grad_mask.contiguous(), mb = mask_biased.contiguous();
  const auto gc = grad_cls.contiguous(), cb = cls_biased.contiguous();
  auto d_mask = at::empty_like(g), d_mask_b = at::empty_like(g);
  auto d_cls = at::empty_like(gc), d_cls_b = at::empty_like(gc);
  launch<true>(g, mb, d_mask, &d_mask_b, gc, cb, d_cls, &d_cls_b, alpha, uncertainty);
  return {d_mask, d_mask_b, d_cls, d_cls_b};
}

}  // namespace coavs
