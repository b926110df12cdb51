// Macros shared by every native source: host/device qualifiers that compile in plain C++ too.
#pragma once

#if defined(__CUDACC__)
#define COAVS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define COAVS_HOST_DEVICE inline
#endif

namespace coavs {

// The arithmetic type of a storage type, as at::opmath_type: double for double, float for everything else
// (float, half, bfloat16). Kernel headers use it so that they compile without ATen (csrc/tests); the CUDA
// sources check that it agrees with at::opmath_type.
template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

}  // namespace coavs
