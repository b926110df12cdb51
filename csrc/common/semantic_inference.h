// Arithmetic of semantic_inference shared by the native kernels (the Triton kernel repeats these formulas).
//
// Per output pixel (y, x) of batch item b:
//   m_q     = bilinear sample of mask[b, q] at (y, x)          align_corners=False, as F.interpolate
//             (with mask debias: the source logits are first debiased elementwise, (1 + a) m - a m_b, as op 4,
//             which is the same as debiasing the four corners each pixel reads)
//   s_q     = gate[b, q] * sigmoid(m_q)
//   S[k]    = sum_q probs[b, q, k] * s_q                         probs = softmax(class logits)[:K]
//   overall = (1 + a) S[k] - a S_b[k],  a = alpha or alpha * |2 clamp(S_b[k], 0, 1) - 1|
//   output  = argmax_k S[k] (lowest index on ties), or sum_k foreground[k] S[k], or max_q s_q (mask-only)
#pragma once

#include <cmath>
#include <cstdint>

#include "common/debias_logits.h"
#include "common/macros.h"
#include "common/math.h"

namespace coavs {

// What the kernel writes per pixel.
enum SemanticReduce : int64_t {
  kReduceArgmax = 0,      // semantic labels (int64)
  kReduceForeground = 1,  // sum_k foreground[k] * S[k] (float32)
  kReduceMaxQuery = 2,    // max_q s_q, for mask-only models (float32)
};

// One axis of a bilinear resize: out[i] = l0 * in[i0] + l1 * in[i1].
struct LinearTap {
  int64_t i0;
  int64_t i1;
  float l0;
  float l1;
};

// F.interpolate(mode="bilinear", align_corners=False, size=...) for one axis, in float32 like ATen:
// scale = in / out (float), src = max(scale * (i + 0.5) - 0.5, 0), i0 = floor(src), l1 = src - i0.
// Equal sizes copy (ATen's shortcut).
COAVS_HOST_DEVICE LinearTap bilinear_tap(int64_t out_index, int64_t in_size, int64_t out_size) {
  LinearTap tap;
  if (in_size == out_size) {
    tap.i0 = tap.i1 = out_index;
    tap.l0 = 1.0f;
    tap.l1 = 0.0f;
    return tap;
  }
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float src = scale * (static_cast<float>(out_index) + 0.5f) - 0.5f;
  src = src < 0.0f ? 0.0f : src;
  int64_t i0 = static_cast<int64_t>(src);  // src >= 0: truncation is floor
  i0 = i0 < in_size - 1 ? i0 : in_size - 1;
  float l1 = src - static_cast<float>(i0);
  l1 = clamp_unit(l1);
  tap.i0 = i0;
  tap.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  tap.l1 = l1;
  tap.l0 = 1.0f - l1;
  return tap;
}

// ATen's order of operations: rows first inside, columns outside.
COAVS_HOST_DEVICE float bilinear_mix(float v00, float v01, float v10, float v11, const LinearTap& ty,
                                     const LinearTap& tx) {
  return ty.l0 * (tx.l0 * v00 + tx.l1 * v01) + ty.l1 * (tx.l0 * v10 + tx.l1 * v11);
}

// The mask debias of op 4 on one source logit (fixed or uncertainty strength), in float32.
COAVS_HOST_DEVICE float debias_mask_logit(float m, float m_biased, float alpha, bool uncertainty) {
  const float a = uncertainty ? alpha * mask_confidence(m_biased) : alpha;
  return debias_value(m, m_biased, a);
}

// The overall scheme of op 4 on one score: a = alpha (fixed) or alpha * |2 clamp(S_b, 0, 1) - 1|.
COAVS_HOST_DEVICE float debias_overall_score(float s, float s_biased, float alpha, bool uncertainty) {
  float a = alpha;
  if (uncertainty) {
    a = alpha * math_abs(2.0f * clamp_unit(s_biased) - 1.0f);
  }
  return debias_value(s, s_biased, a);
}

}  // namespace coavs
