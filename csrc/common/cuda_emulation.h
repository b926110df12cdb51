// A CUDA execution model for host compilers, so that plain C++ tests run the very kernel bodies of csrc/cuda.
//
// A kernel header (csrc/cuda/*_kernel.cuh) includes this file when it is not compiled by nvcc. It defines the
// CUDA keywords (__global__, __device__, __shared__, __launch_bounds__), dim3/uint3, the built-in indices
// (blockIdx, threadIdx, blockDim, gridDim), __syncthreads and the full-warp shuffles, and
// coavs::emulation::launch(grid, block, kernel, args...), which runs every block of the grid, one after the other.
//
// The threads of a block run as cooperative fibers (ucontext), one stack each, so kernels with block barriers,
// shared memory and warp shuffles run unchanged:
//   - a fiber runs until it reaches __syncthreads or a shuffle, then waits there;
//   - when every fiber has finished or waits, the scheduler releases each warp whose 32 lanes all wait at a
//     shuffle, or the whole block when every thread waits at __syncthreads;
//   - when nothing can be released, the kernel would hang or read garbage on a GPU (a shuffle with lanes that
//     have exited, a __syncthreads that some threads never reach): launch() throws std::logic_error.
// __shared__ is `static`: blocks run one at a time, so one static copy per kernel instantiation is exactly
// one block's shared memory. Shuffles must name the full mask (the kernels here only use full-warp shuffles).
#pragma once

#if defined(__CUDACC__)
#error "common/cuda_emulation.h is for host compilers; nvcc has the real thing"
#endif

#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline uint3 blockIdx{0, 0, 0};
inline uint3 threadIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

namespace coavs {
namespace emulation {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 128 * 1024;

enum class Wait { kRunning, kBarrier, kShuffle };

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  Wait wait = Wait::kRunning;
  bool done = false;
};

// The block being run: its fibers, the scheduler's context, the shuffle exchange slots.
struct BlockState {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  int current = 0;
  std::function<void()> body;
  std::vector<unsigned char> slots;  // kWarpSize 8-byte slots per warp
  long long barriers = 0;            // statistics, for tests
  long long shuffles = 0;
};

inline BlockState& state() {
  static BlockState s;
  return s;
}

inline void select(int linear) {
  BlockState& s = state();
  s.current = linear;
  const unsigned bx = blockDim.x, by = blockDim.y;
  threadIdx = {linear % bx, (linear / bx) % by, linear / (bx * by)};
}

inline void fiber_entry() {
  BlockState& s = state();
  s.body();
  s.fibers[s.current].done = true;  // returning resumes uc_link, the scheduler
}

// Called on a fiber: park it until the scheduler releases `kind`.
inline void wait_for(Wait kind) {
  BlockState& s = state();
  const int me = s.current;
  s.fibers[me].wait = kind;
  swapcontext(&s.fibers[me].context, &s.scheduler);
  select(me);  // the scheduler has resumed us
}

inline std::string describe(const BlockState& s) {
  std::string text;
  for (size_t t = 0; t < s.fibers.size(); ++t) {
    const Fiber& f = s.fibers[t];
    const char* what = f.done ? "exited" : (f.wait == Wait::kBarrier ? "__syncthreads" : "shuffle");
    if (t == 0 || (t % kWarpSize == 0)) text += "\n  warp " + std::to_string(t / kWarpSize) + ":";
    text += std::string(" ") + what;
  }
  return text;
}

// Runs the threads of one block to completion.
inline void run_block(const std::function<void()>& body) {
  BlockState& s = state();
  const int n = static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
  s.body = body;
  s.fibers.resize(n);
  s.slots.assign(static_cast<size_t>((n + kWarpSize - 1) / kWarpSize) * kWarpSize * 8, 0);
  for (Fiber& f : s.fibers) {
    f.stack.resize(kStackBytes);
    f.wait = Wait::kRunning;
    f.done = false;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = &s.scheduler;
    makecontext(&f.context, fiber_entry, 0);
  }
  while (true) {
    for (int t = 0; t < n; ++t) {
      if (s.fibers[t].done || s.fibers[t].wait != Wait::kRunning) continue;
      select(t);
      swapcontext(&s.scheduler, &s.fibers[t].context);
    }
    int live = 0, at_barrier = 0;
    for (const Fiber& f : s.fibers) {
      live += !f.done;
      at_barrier += !f.done && f.wait == Wait::kBarrier;
    }
    if (live == 0) return;
    bool released = false;
    for (int w = 0; w * kWarpSize < n; ++w) {  // a warp whose lanes all wait at a shuffle
      const int end = (w + 1) * kWarpSize < n ? (w + 1) * kWarpSize : n;
      bool all = true;
      for (int t = w * kWarpSize; t < end; ++t) all = all && !s.fibers[t].done && s.fibers[t].wait == Wait::kShuffle;
      if (!all) continue;
      for (int t = w * kWarpSize; t < end; ++t) s.fibers[t].wait = Wait::kRunning;
      released = true;
    }
    if (!released && at_barrier == n) {  // every thread of the block at __syncthreads
      for (Fiber& f : s.fibers) f.wait = Wait::kRunning;
      ++s.barriers;
      released = true;
    }
    if (!released) {
      throw std::logic_error("emulated block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) +
                             "," + std::to_string(blockIdx.z) + ") cannot proceed (a GPU would hang or read "
                             "undefined values):" + describe(s));
    }
  }
}

// Runs kernel(args...) on every thread of every block of the grid.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        run_block([&] { kernel(args...); });
      }
    }
  }
}

inline void check_full_mask(unsigned mask) {
  if (mask != 0xffffffffu) throw std::logic_error("emulated shuffles support the full warp mask only");
}

// The value of `value` on lane `source` of the calling warp.
template <typename T>
T shuffle(T value, int source) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of an 8-byte scalar at most");
  BlockState& s = state();
  const int me = s.current;
  const int warp = me / kWarpSize;
  std::memcpy(&s.slots[(static_cast<size_t>(me)) * 8], &value, sizeof(T));
  wait_for(Wait::kShuffle);  // every lane has published its value
  T out;
  std::memcpy(&out, &s.slots[(static_cast<size_t>(warp) * kWarpSize + (source & (kWarpSize - 1))) * 8], sizeof(T));
  wait_for(Wait::kShuffle);  // every lane has read before any slot is overwritten
  ++s.shuffles;
  return out;
}

}  // namespace emulation
}  // namespace coavs

inline void __syncthreads() { coavs::emulation::wait_for(coavs::emulation::Wait::kBarrier); }

template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane) {
  coavs::emulation::check_full_mask(mask);
  return coavs::emulation::shuffle(value, source_lane);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  coavs::emulation::check_full_mask(mask);
  return coavs::emulation::shuffle(value, (coavs::emulation::state().current % coavs::emulation::kWarpSize) ^ lane_mask);
}
