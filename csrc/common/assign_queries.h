// Arithmetic of assign_queries shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels.
//
//   marker of query q    s = q / d  for q < S d,  else -1 (the query owns no marker and stays dormant)
//   present(b, s)        score[b, s] >= threshold, or, when no marker of row b reaches it, s is the row's
//                        top-scoring marker (the first one on ties, as torch.argmax)
//   gate[b, q]           1 (soft: score[b, s]) when s is present, else dormant_gate
//   queries[b, q, :]     query_feat[q, :] + gate[b, q] audio[b, :]
//   backward             d_query_feat[q] = sum_b g[b, q];   d_audio[b] = sum_q gate[b, q] g[b, q]
//                        d_scores[b, s] (soft only) = sum over active q of s of (<g[b, q], audio[b]> + g_gate[b, q])
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"
#include "common/math.h"

namespace coavs {

COAVS_HOST_DEVICE int64_t marker_of_query(int64_t q, int64_t num_markers, int64_t dilation) {
  return q < num_markers * dilation ? q / dilation : -1;
}

// One pass over a row of marker scores, mergeable across threads: whether any marker reaches the
// threshold, and the top-scoring marker (lowest index among equal scores).
template <typename T>
struct PresenceState {
  bool any_present = false;
  T best = T(0);
  int64_t best_index = -1;  // -1: no score seen yet

  COAVS_HOST_DEVICE void add(T score, int64_t index, T threshold) {
    any_present = any_present || score >= threshold;
    take_if_better(score, index);
  }

  COAVS_HOST_DEVICE void merge(const PresenceState& other) {
    any_present = any_present || other.any_present;
    if (other.best_index >= 0) take_if_better(other.best, other.best_index);
  }

  // The marker that is present only by the fallback rule, or -1 when some marker reached the threshold.
  COAVS_HOST_DEVICE int64_t fallback_marker() const { return any_present ? -1 : best_index; }

  // Ranks like torch.argmax: NaN above every number, ties (and NaN against NaN) to the lower index.
  COAVS_HOST_DEVICE void take_if_better(T score, int64_t index) {
    const bool score_nan = score != score;
    const bool best_nan = best != best;
    const bool better = score_nan ? (!best_nan || index < best_index)
                                  : (!best_nan && (score > best || (score == best && index < best_index)));
    if (best_index < 0 || better) {
      best = score;
      best_index = index;
    }
  }
};

// Whether marker `marker` (score `score`) is present, given the row's fallback marker (see PresenceState).
template <typename T>
COAVS_HOST_DEVICE bool marker_present(T score, T threshold, int64_t marker, int64_t fallback) {
  return marker >= 0 && (score >= threshold || marker == fallback);
}

template <typename T>
COAVS_HOST_DEVICE T gate_value(bool active, bool soft, T score, T dormant_gate) {
  if (!active) return dormant_gate;
  return soft ? score : T(1);
}

template <typename T>
COAVS_HOST_DEVICE T prompted_query(T feature, T gate, T audio) {
  return feature + gate * audio;
}

// Gate and activity of query q of one sample, given the sample's scores row and its fallback marker
// (PresenceState::fallback_marker). score_t is the storage type of the scores; the gate keeps it.
template <typename score_t>
struct QueryGate {
  score_t gate;
  bool active;
};

template <typename score_t>
COAVS_HOST_DEVICE QueryGate<score_t> query_gate(const score_t* score_row, int64_t q, int64_t num_markers,
                                               int64_t dilation, opmath_t<score_t> threshold, int64_t fallback,
                                               score_t dormant_gate, bool soft) {
  const int64_t m = marker_of_query(q, num_markers, dilation);
  const score_t score = m >= 0 ? score_row[m] : dormant_gate;
  const bool on = marker_present(static_cast<opmath_t<score_t>>(score), threshold, m, fallback);
  return {gate_value(on, soft, score, dormant_gate), on};
}

// One active query's term of d_scores[b, s]: <g[b, q], audio[b]> + g_gate[b, q].
template <typename score_acc, typename acc_t>
COAVS_HOST_DEVICE score_acc score_grad_term(acc_t dot, score_acc grad_gate) {
  return static_cast<score_acc>(dot) + grad_gate;
}

}  // namespace coavs
