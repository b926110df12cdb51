// Scalar math shared by every native kernel, host and device alike: the one place for the float/double
// overloads of the libm functions, sigmoid/softplus, clamps and the arithmetic (opmath) type. Included by the
// op headers of csrc/common, the CPU sources and the CUDA kernel headers; plain C++ too (csrc/tests compiles it
// with g++, without ATen or nvcc).
#pragma once

#include <cmath>

#include "common/macros.h"

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

// float and double overloads of libm, usable on host and device (the float ones call the f-suffixed function,
// which nvcc maps to the device intrinsic).
COAVS_HOST_DEVICE float math_exp(float x) { return expf(x); }
COAVS_HOST_DEVICE double math_exp(double x) { return exp(x); }
COAVS_HOST_DEVICE float math_log(float x) { return logf(x); }
COAVS_HOST_DEVICE double math_log(double x) { return log(x); }
COAVS_HOST_DEVICE float math_log1p(float x) { return log1pf(x); }
COAVS_HOST_DEVICE double math_log1p(double x) { return log1p(x); }
COAVS_HOST_DEVICE float math_tanh(float x) { return tanhf(x); }
COAVS_HOST_DEVICE double math_tanh(double x) { return tanh(x); }
COAVS_HOST_DEVICE float math_abs(float x) { return fabsf(x); }
COAVS_HOST_DEVICE double math_abs(double x) { return fabs(x); }

// x clamped to [0, 1]; NaN stays NaN.
template <typename T>
COAVS_HOST_DEVICE T clamp_unit(T x) {
  return x < T(0) ? T(0) : (x > T(1) ? T(1) : x);
}

// log(1 + e^x) without overflow for large x and without losing small values for very negative x.
template <typename T>
COAVS_HOST_DEVICE T softplus(T x) {
  return x > T(0) ? x + math_log1p(math_exp(-x)) : math_log1p(math_exp(x));
}

template <typename T>
COAVS_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + math_exp(-x));
}

// sigmoid(x) and softplus(x) from one exponential, e = exp(-|x|) in (0, 1]:
//   sigmoid = 1 / (1 + e) for x >= 0, e / (1 + e) otherwise;   softplus = max(x, 0) + log1p(e).
template <typename T>
COAVS_HOST_DEVICE void sigmoid_softplus(T x, T& sig, T& soft) {
  const bool positive = x >= T(0);
  const T e = math_exp(positive ? -x : x);
  const T inv = T(1) / (T(1) + e);
  sig = positive ? inv : e * inv;
  soft = (positive ? x : T(0)) + math_log1p(e);
}

}  // namespace coavs
