// Arithmetic of matching_cost (Mask2Former's matching cost), shared by the native kernels and checked in plain
// C++ by csrc/tests. With x a query's mask logits and t a ground truth's values at the same P points:
//
//   class  -softmax(class_logits)[label]
//   mask   mean_p [softplus(-x) t + softplus(x) (1 - t)] = (sum_p softplus(x) - sum_p x t) / P
//          (softplus(-x) = softplus(x) - x, so the pair term needs only sum x t)
//   dice   1 - (2 sum sigmoid(x) t + 1) / (sum sigmoid(x) + sum t + 1)
//   cost   w_class class + w_mask mask + w_dice dice
//
// Per query the kernels need sum softplus(x), sum sigmoid(x) and the class row's log-sum-exp; per ground truth
// sum t; per pair sum x t and sum sigmoid(x) t (two dot products over P).
//
// Non-finite inputs (the same policy in the reference, native and Triton backends): a pair that is not allowed or
// is padding costs +inf whatever its values; an allowed pair costs NaN when its query's mask logits or its ground
// truth's values hold a NaN or ±inf, or when its query's class row holds a NaN or +inf or is all −inf. A −inf class
// logit next to a finite one is an impossible class (probability 0), not an error.
//
// Values no kernel may trust (the op reads nothing back to the host to check them): a sample whose num_targets is
// outside [0, G] has every column real and every allowed pair NaN; a real ground truth whose label is outside
// [0, K+1) has NaN for its allowed pairs (and no class logit is read for it).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"
#include "common/math.h"

namespace coavs {
namespace matching {

// Streaming log-sum-exp of a class row (running max and the sum of exp relative to it).
template <typename T>
struct LogSumExp {
  T max = -INFINITY;
  T sum = T(0);

  COAVS_HOST_DEVICE void add(T x) {
    if (x == T(-INFINITY)) return;
    if (x > max) {
      sum = sum * math_exp(max - x);
      max = x;
    }
    sum += math_exp(x - max);
  }

  COAVS_HOST_DEVICE T value() const { return sum > T(0) ? max + math_log(sum) : T(-INFINITY); }

  // softmax probability of a logit of the row: exp(x - max) / sum. Not exp(x - value()): value() is rounded at
  // the scale of max, so that form loses |max|·eps (1e-4 relative for float logits of 1e4). A NaN or +inf logit
  // makes sum NaN and an all −inf row leaves sum 0, so those rows give NaN, as softmax does.
  COAVS_HOST_DEVICE T probability(T x) const { return math_exp(x - max) / sum; }
};

// softmax probability of a logit given its row's log-sum-exp (exact only for logits of moderate size; the
// kernels use LogSumExp::probability).
template <typename T>
COAVS_HOST_DEVICE T class_probability(T logit, T log_sum_exp) {
  return math_exp(logit - log_sum_exp);
}

template <typename T>
struct CostWeights {
  T cls;
  T mask;
  T dice;
};

// The cost of one (query, ground truth) pair from the sums above.
template <typename T>
COAVS_HOST_DEVICE T pair_cost(T class_prob, T softplus_sum, T logit_target_sum, T sigmoid_sum, T sigmoid_target_sum,
                              T target_sum, int64_t num_points, const CostWeights<T>& w) {
  const T mask = (softplus_sum - logit_target_sum) / static_cast<T>(num_points);
  const T dice = T(1) - (T(2) * sigmoid_target_sum + T(1)) / (sigmoid_sum + target_sum + T(1));
  return -w.cls * class_prob + w.mask * mask + w.dice * dice;
}

}  // namespace matching
}  // namespace coavs
