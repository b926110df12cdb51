// Arithmetic of debias_logits shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels.
//
//   fixed:        x' = (1 + a) x - a x_b,                      a = alpha
//   uncertainty:  a = alpha * confidence(x_b), no gradient through the confidence
//     mask logit  confidence = |2 sigmoid(m_b) - 1|                        (per element)
//     class row   confidence = 1 - H(softmax(c_b)) / log(K + 1)            (per query row)
//   backward:     dx = (1 + a) g,  dx_b = -a g
#pragma once

#include <cmath>

#include "common/macros.h"
#include "common/math.h"

namespace coavs {

template <typename T>
COAVS_HOST_DEVICE T debias_value(T x, T x_biased, T a) {
  return (T(1) + a) * x - a * x_biased;
}

// Backward of debias_value for upstream gradient g: dx = (1 + a) g, dx_b = -a g.
template <typename T>
struct DebiasGrad {
  T dx;
  T dx_biased;
};

template <typename T>
COAVS_HOST_DEVICE DebiasGrad<T> debias_grad(T g, T a) {
  return {(T(1) + a) * g, -a * g};
}

// |2 sigmoid(m) - 1| == tanh(|m| / 2); the tanh form keeps full precision near 0 and saturates cleanly.
template <typename T>
COAVS_HOST_DEVICE T mask_confidence(T m_biased) {
  return math_tanh(T(0.5) * math_abs(m_biased));
}

// Streaming entropy of softmax(x) over a row: one pass, mergeable across threads.
// With m the running max, z = sum exp(x - m) and t = sum exp(x - m) (x - m),
// the entropy is log z - t / z.
// A -inf logit has probability 0 and contributes nothing.
template <typename T>
struct EntropyState {
  T max = -INFINITY;
  T z = T(0);
  T t = T(0);

  COAVS_HOST_DEVICE void add(T x) {
    if (x == T(-INFINITY)) return;
    if (x > max) rescale(x);
    const T shifted = x - max;
    const T e = math_exp(shifted);
    z += e;
    t += e * shifted;
  }

  COAVS_HOST_DEVICE void merge(const EntropyState& other) {
    if (other.z == T(0)) return;
    if (other.max > max) rescale(other.max);
    const T delta = other.max - max;  // <= 0
    const T scale = math_exp(delta);
    z += other.z * scale;
    t += (other.t + other.z * delta) * scale;
  }

  COAVS_HOST_DEVICE T entropy() const { return z > T(0) ? math_log(z) - t / z : T(0); }

  // Re-express z and t relative to a new, larger maximum.
  COAVS_HOST_DEVICE void rescale(T new_max) {
    if (z > T(0)) {
      const T delta = max - new_max;  // < 0
      const T scale = math_exp(delta);
      t = (t + z * delta) * scale;
      z = z * scale;
    }
    max = new_max;
  }
};

// The strength of one mask element: alpha, or alpha * confidence(m_b) when uncertainty-weighted.
template <typename T>
COAVS_HOST_DEVICE T mask_strength(T alpha, T m_biased, bool uncertainty) {
  return uncertainty ? alpha * mask_confidence(m_biased) : alpha;
}

// 1 - H / log(n), clamped to [0, 1]; a single-entry row has zero entropy and counts as fully confident.
template <typename T>
COAVS_HOST_DEVICE T class_confidence(T entropy, int n) {
  if (n <= 1) return T(1);
  const T c = T(1) - entropy / math_log(static_cast<T>(n));
  return clamp_unit(c);
}

// The strength of one class row from its (streamed) entropy: alpha * class_confidence when uncertainty-weighted.
template <typename T>
COAVS_HOST_DEVICE T class_row_strength(T alpha, const EntropyState<T>& state, int width, bool uncertainty) {
  return uncertainty ? alpha * class_confidence(state.entropy(), width) : alpha;
}

}  // namespace coavs
