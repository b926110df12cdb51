// Macros shared by every native source: host/device qualifiers that compile in plain C++ too, and forced
// inlining for the CPU kernels' ISA-specific copies. Arithmetic helpers live in common/math.h.
#pragma once

#if defined(__CUDACC__)
#define COAVS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define COAVS_HOST_DEVICE inline
#endif

// Always inlined: a body compiled once per target ISA (see cpu/vec_avx2.h) must be inlined into each copy.
#if defined(__GNUC__) || defined(__clang__)
#define COAVS_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define COAVS_ALWAYS_INLINE inline
#endif
