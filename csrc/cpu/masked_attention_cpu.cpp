// masked_cross_attention on the CPU: Mask2Former masked attention over the active rows only.
//
// at::parallel_for over (b, h) (the backward accumulates dk, dv per (b, h), so rows are not split further).
// Per (b, h) the blocks of 64 keys that some working row of sample b sees are packed once into float32 (float64
// for float64) scratch: kᵀ block by block [blocks][dh][64] (a row's scores against 16 keys are dh vector FMAs),
// vᵀ likewise (backward), and k, v as rows [N][dh] unless they can be read in place (float32 with unit last
// stride). Each working row (active, with a visible key) visits only the blocks it sees (its occupancy), and
// inside a block only the 16-key vectors with a visible key; invisible keys get -inf before the max and 0
// after the exponential; value and gradient updates run over the visible keys' bits only. The forward walks
// row by row (online softmax); the backward walks block by block, each block's keys and dk, dv staying in
// cache while the rows that see it visit it.
//   forward:  m, l, o  online;  out = o / l,  lse = m + log l   (rows that do no work: out 0, lse 0)
//   backward: p = exp(s − lse), dp = g·vᵀ, ds = p (dp − Σ g∘out);  dq = scale Σ ds k,  dk += ds (scale q),
//             dv += p g   (recomputed from lse with the same block skipping; dk, dv accumulate per (b, h))
// Any strides of q, k, v, grad_out and out are read as they are (stride 0 included); outputs are contiguous.
// The hot per-(b, h) bodies are compiled three times (AVX-512, AVX2, baseline) and chosen at run time.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/macros.h"
#include "common/math.h"
#include "common/tensor_checks.h"

// The vector helpers below are always inlined into the ISA-specific bodies; their ABI never crosses a call.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace coavs {
namespace {

constexpr int64_t kBlock = 64;  // keys per occupancy flag (coavs.ops.masked_cross_attention.OCCUPANCY_BLOCK)
constexpr int64_t kMaxLanes = 16;  // the widest vector: 16 float32 lanes (AVX-512)

// ---------------------------------------------------------------------------------------------- vectors
template <typename T, int W>
struct Vec {
  typedef T type __attribute__((vector_size(sizeof(T) * W)));
  using int_t = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef int_t mask __attribute__((vector_size(sizeof(T) * W)));
};

template <typename V, typename T>
COAVS_ALWAYS_INLINE V splat(T x) {
  return V{} + x;
}

template <typename V>
COAVS_ALWAYS_INLINE V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
COAVS_ALWAYS_INLINE void store(void* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// Lane i of the result is all-ones when bit i of `bits` is set.
template <typename T, int W>
COAVS_ALWAYS_INLINE typename Vec<T, W>::mask lane_mask(uint64_t bits) {
  using M = typename Vec<T, W>::mask;
  using I = typename Vec<T, W>::int_t;
  M lane_bit;
  for (int i = 0; i < W; ++i) lane_bit[i] = static_cast<I>(I(1) << i);
  static_assert(W <= 16, "one lane per bit of a 16-bit slice");
  return (splat<M>(static_cast<I>(bits & ((uint64_t(1) << W) - 1))) & lane_bit) != 0;
}

// exp for float32 lanes: 2^n · p(r), r = x − n ln2 in [−ln2/2, ln2/2], degree-6 Taylor polynomial (≤ 2 ulp);
// x is clamped to [−87.3, 88.0] (the callers zero the lanes of masked keys themselves).
template <int W>
COAVS_ALWAYS_INLINE typename Vec<float, W>::type vexp(typename Vec<float, W>::type x) {
  using V = typename Vec<float, W>::type;
  using M = typename Vec<float, W>::mask;
  x = x < splat<V>(-87.3f) ? splat<V>(-87.3f) : x;
  x = x > splat<V>(88.0f) ? splat<V>(88.0f) : x;
  const V magic = splat<V>(12582912.0f);  // 1.5 · 2^23: adding and subtracting rounds to an integer
  const V n = (x * splat<V>(1.44269504088896341f) + magic) - magic;
  const V r = (x - n * splat<V>(0.693359375f)) - n * splat<V>(-2.12194440e-4f);
  V p = splat<V>(1.0f / 720.0f);
  p = p * r + splat<V>(1.0f / 120.0f);
  p = p * r + splat<V>(1.0f / 24.0f);
  p = p * r + splat<V>(1.0f / 6.0f);
  p = p * r + splat<V>(0.5f);
  p = p * r + splat<V>(1.0f);
  p = p * r + splat<V>(1.0f);
  const M e = (__builtin_convertvector(n, M) + 127) << 23;
  V scale;
  std::memcpy(&scale, &e, sizeof(V));
  return p * scale;
}

template <int W>
COAVS_ALWAYS_INLINE typename Vec<double, W>::type vexp(typename Vec<double, W>::type x) {
  for (int i = 0; i < W; ++i) x[i] = std::exp(x[i]);
  return x;
}

// Largest lane and sum of the lanes, halving the vector each step.
template <typename T, int W>
COAVS_ALWAYS_INLINE T reduce_max(typename Vec<T, W>::type x) {
  if constexpr (W == 2) {
    return x[0] > x[1] ? x[0] : x[1];
  } else {
    using H = typename Vec<T, W / 2>::type;
    H lo, hi;
    std::memcpy(&lo, &x, sizeof(H));
    std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof(H), sizeof(H));
    return reduce_max<T, W / 2>(lo > hi ? lo : hi);
  }
}

template <typename T, int W>
COAVS_ALWAYS_INLINE T reduce_sum(typename Vec<T, W>::type x) {
  if constexpr (W == 2) {
    return x[0] + x[1];
  } else {
    using H = typename Vec<T, W / 2>::type;
    H lo, hi;
    std::memcpy(&lo, &x, sizeof(H));
    std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof(H), sizeof(H));
    return reduce_sum<T, W / 2>(lo + hi);
  }
}

// ------------------------------------------------------------------------------------------- per sample
struct Problem {
  int64_t batch, heads, queries, keys, head_dim, blocks, padded, words;
  double scale;
  const int32_t* bits;       // [B,Q,words]
  const uint8_t* occupancy;  // [B,Q,blocks]
  const bool* active;        // [B,Q]
};

// The rows of each sample that do work and the key blocks any of them sees.
struct SampleRows {
  std::vector<int64_t> rows;
  std::vector<uint8_t> seen;  // [blocks]
};

std::vector<SampleRows> working_rows(const Problem& p) {
  std::vector<SampleRows> samples(p.batch);
  for (int64_t b = 0; b < p.batch; ++b) {
    auto& s = samples[b];
    s.seen.assign(p.blocks, 0);
    for (int64_t r = 0; r < p.queries; ++r) {
      if (!p.active[b * p.queries + r]) continue;
      const uint8_t* occ = p.occupancy + (b * p.queries + r) * p.blocks;
      bool any = false;
      for (int64_t k = 0; k < p.blocks; ++k) {
        if (occ[k]) {
          any = true;
          s.seen[k] = 1;
        }
      }
      if (any) s.rows.push_back(r);
    }
  }
  return samples;
}

// The 64 visibility bits of key block `block` of row (b, r).
COAVS_ALWAYS_INLINE uint64_t block_bits(const Problem& p, int64_t b, int64_t r, int64_t block) {
  const int32_t* w = p.bits + (b * p.queries + r) * p.words;
  const uint64_t low = static_cast<uint32_t>(w[2 * block]);
  const uint64_t high = 2 * block + 1 < p.words ? static_cast<uint32_t>(w[2 * block + 1]) : 0;
  return low | (high << 32);
}

// A strided [N, dh] matrix of one (b, h).
template <typename S>
struct Strided {
  const S* data;
  int64_t row, col;
  COAVS_ALWAYS_INLINE S at(int64_t n, int64_t d) const { return data[n * row + d * col]; }
};

template <typename S>
Strided<S> slice(const at::Tensor& t, int64_t b, int64_t h) {
  return {t.const_data_ptr<S>() + b * t.stride(0) + h * t.stride(1), t.stride(2), t.stride(3)};
}

// Packs the seen blocks of m [N, dh] as rows (`rows`, [padded][dh]) and/or transposed block by block (`cols`,
// [blocks][dh][64]: one block's kᵀ is 64·dh contiguous values), zero past N. A block is read into `tile` ([64][dh], in L1) first, so the transposed writes stay in cache.
template <typename S, typename T>
COAVS_ALWAYS_INLINE void pack(const Problem& p, const Strided<S>& m, const std::vector<uint8_t>& seen, T* rows, T* cols,
                       T* tile) {
  const int64_t dh = p.head_dim;
  for (int64_t blk = 0; blk < p.blocks; ++blk) {
    if (!seen[blk]) continue;
    const int64_t first = blk * kBlock, count = std::min(kBlock, p.keys - first);
    T* t = rows ? rows + first * dh : tile;
    for (int64_t j = 0; j < count; ++j) {
      const S* src = m.data + (first + j) * m.row;
      T* dst = t + j * dh;
      if (m.col == 1) {
        for (int64_t d = 0; d < dh; ++d) dst[d] = static_cast<T>(src[d]);
      } else {
        for (int64_t d = 0; d < dh; ++d) dst[d] = static_cast<T>(src[d * m.col]);
      }
    }
    std::fill(t + count * dh, t + kBlock * dh, T(0));
    if (!cols) continue;
    for (int64_t d = 0; d < dh; ++d) {
      T* __restrict__ dst = cols + (blk * dh + d) * kBlock;
      const T* __restrict__ src = t + d;
      for (int64_t j = 0; j < kBlock; ++j) dst[j] = src[j * dh];
    }
  }
}

// Which of the 64/W vectors of a block hold a visible key (bit i for vector i).
template <int W>
COAVS_ALWAYS_INLINE uint32_t live_vectors(uint64_t bits) {
  uint32_t live = 0;
  for (int i = 0; i < kBlock / W; ++i) live |= (((bits >> (i * W)) & ((uint64_t(1) << W) - 1)) != 0) << i;
  return live;
}

// s[i] = x · kᵀ over the keys of vector i of one block (kt: that block's [dh][64]), for the live vectors only
// (each a sum of four interleaved partial sums over dh, so the FMAs do not wait on each other). `xb` holds x
// broadcast, one vector per element (built once per row).
template <typename T, int W>
COAVS_ALWAYS_INLINE void block_scores(const T* xb, const T* kt, int64_t dh, uint32_t live,
                               typename Vec<T, W>::type (&s)[kBlock / W]) {
  using V = typename Vec<T, W>::type;
  constexpr int NV = kBlock / W;
  for (int i = 0; i < NV; ++i) {
    if (!((live >> i) & 1)) continue;
    const T* col = kt + i * W;
    V a0{}, a1{}, a2{}, a3{};
    int64_t d = 0;
    for (; d + 4 <= dh; d += 4) {
      a0 += load<V>(xb + d * W) * load<V>(col + d * kBlock);
      a1 += load<V>(xb + (d + 1) * W) * load<V>(col + (d + 1) * kBlock);
      a2 += load<V>(xb + (d + 2) * W) * load<V>(col + (d + 2) * kBlock);
      a3 += load<V>(xb + (d + 3) * W) * load<V>(col + (d + 3) * kBlock);
    }
    for (; d < dh; ++d) a0 += load<V>(xb + d * W) * load<V>(col + d * kBlock);
    s[i] = (a0 + a1) + (a2 + a3);
  }
}

// acc[d] += Σ_t coef[t] · rows[key[t]·ld + d]: W lanes of acc at a time held in two registers across the keys
// (no store-to-load chain through acc), then the scalar tail of dh.
template <typename T, int W>
COAVS_ALWAYS_INLINE void accumulate_rows(T* acc, const T* rows, int64_t ld, const int64_t* key, const T* coef, int count,
                                  int64_t dh) {
  using V = typename Vec<T, W>::type;
  int64_t c = 0;
  for (; c + W <= dh; c += W) {
    V a0{}, a1{};
    int t = 0;
    for (; t + 2 <= count; t += 2) {
      a0 += splat<V>(coef[t]) * load<V>(rows + key[t] * ld + c);
      a1 += splat<V>(coef[t + 1]) * load<V>(rows + key[t + 1] * ld + c);
    }
    if (t < count) a0 += splat<V>(coef[t]) * load<V>(rows + key[t] * ld + c);
    store(acc + c, load<V>(acc + c) + (a0 + a1));
  }
  for (; c < dh; ++c) {
    T a = T(0);
    for (int t = 0; t < count; ++t) a += coef[t] * rows[key[t] * ld + c];
    acc[c] += a;
  }
}

struct Outputs {
  void* out;  // [B,h,Q,dh] contiguous, scalar type
  void* lse;  // [B,h,Q] contiguous, acc type
};

template <typename S, typename T, int W>
COAVS_ALWAYS_INLINE void forward_body(const Problem& p, const SampleRows& sample, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, int64_t b, int64_t h, T* scratch, const Outputs& o) {
  using V = typename Vec<T, W>::type;
  using M = typename Vec<T, W>::mask;
  constexpr int NV = kBlock / W;
  const int64_t dh = p.head_dim, padded = p.padded;
  T* kt = scratch;                  // [blocks][dh][64]
  T* vr = kt + dh * padded;         // [padded][dh]
  T* qs = vr + padded * dh;         // [dh]
  T* acc = qs + dh;                 // [dh]
  T* probs = acc + dh;              // [64]
  T* coef = probs + kBlock;         // [64]
  T* tile = coef + kBlock;          // [64][dh]
  int64_t keys[kBlock];
  T* qb = tile + kBlock * dh;       // [dh][W]: qs broadcast
  pack<S, T>(p, slice<S>(k, b, h), sample.seen, nullptr, kt, tile);
  // float32 (float64) values with a unit last stride are read in place; others are packed as float32 rows
  const Strided<S> vm = slice<S>(v, b, h);
  const T* values = vr;
  int64_t ld = dh;
  if constexpr (std::is_same_v<S, T>) {
    if (vm.col == 1) values = vm.data, ld = vm.row;
  }
  if (values == vr) pack<S, T>(p, vm, sample.seen, vr, nullptr, tile);
  const Strided<S> qm = slice<S>(q, b, h);
  S* out = static_cast<S*>(o.out) + (b * p.heads + h) * p.queries * dh;
  T* lse = static_cast<T*>(o.lse) + (b * p.heads + h) * p.queries;
  const T scale = static_cast<T>(p.scale);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  for (const int64_t r : sample.rows) {
    for (int64_t d = 0; d < dh; ++d) qs[d] = static_cast<T>(qm.at(r, d)) * scale;
    for (int64_t d = 0; d < dh; ++d) store(qb + d * W, splat<V>(qs[d]));
    for (int64_t d = 0; d < dh; ++d) acc[d] = T(0);
    T row_max = neg_inf, row_sum = T(0);
    const uint8_t* occ = p.occupancy + (b * p.queries + r) * p.blocks;
    for (int64_t blk = 0; blk < p.blocks; ++blk) {
      if (!occ[blk]) continue;
      const uint64_t bits = block_bits(p, b, r, blk);
      if (!bits) continue;
      const uint32_t live = live_vectors<W>(bits);
      V s[NV];
      block_scores<T, W>(qb, kt + blk * kBlock * dh, dh, live, s);
      M visible[NV];
      V top = splat<V>(neg_inf);
      for (int i = 0; i < NV; ++i) {
        if (!((live >> i) & 1)) continue;
        visible[i] = lane_mask<T, W>(bits >> (i * W));
        const V masked = visible[i] ? s[i] : splat<V>(neg_inf);
        top = top > masked ? top : masked;
      }
      const T block_max = reduce_max<T, W>(top);
      const T new_max = block_max > row_max ? block_max : row_max;
      V total = V{};
      for (int i = 0; i < NV; ++i) {
        if (!((live >> i) & 1)) continue;
        const V e = vexp<W>(s[i] - splat<V>(new_max));
        const V pv = visible[i] ? e : V{};
        total += pv;
        store(probs + i * W, pv);
      }
      const T block_sum = reduce_sum<T, W>(total);
      if (new_max > row_max) {
        const T correction = row_max == neg_inf ? T(0) : math_exp(row_max - new_max);
        row_sum *= correction;
        for (int64_t d = 0; d < dh; ++d) acc[d] *= correction;
        row_max = new_max;
      }
      row_sum += block_sum;
      int count = 0;
      for (uint64_t rest = bits; rest; rest &= rest - 1, ++count) {
        const int j = __builtin_ctzll(rest);
        keys[count] = blk * kBlock + j;
        coef[count] = probs[j];
      }
      accumulate_rows<T, W>(acc, values, ld, keys, coef, count, dh);
    }
    const T inverse = T(1) / row_sum;
    for (int64_t d = 0; d < dh; ++d) out[r * dh + d] = static_cast<S>(acc[d] * inverse);
    lse[r] = row_max + std::log(row_sum);
  }
}

struct Grads {
  void* dq;  // [B,h,Q,dh] contiguous, scalar type
  void* dk;  // [B,h,N,dh]
  void* dv;
};

template <typename S, typename T, int W>
COAVS_ALWAYS_INLINE void backward_body(const Problem& p, const SampleRows& sample, const at::Tensor& grad_out,
                                const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                const at::Tensor& lse, int64_t b, int64_t h, T* scratch, const Grads& g) {
  using V = typename Vec<T, W>::type;
  constexpr int NV = kBlock / W;
  const int64_t dh = p.head_dim, padded = p.padded;
  T* kt = scratch;                 // [blocks][dh][64]
  T* kr = kt + dh * padded;        // [padded][dh]
  T* vt = kr + padded * dh;        // [blocks][dh][64]
  T* dk = vt + dh * padded;        // [padded][dh]
  T* dv = dk + padded * dh;        // [padded][dh]
  T* probs = dv + padded * dh;     // [64]
  T* dscores = probs + kBlock;     // [64]
  T* coef = dscores + kBlock;      // [64]
  T* tile = coef + kBlock;         // [64][dh]
  int64_t keys[kBlock];
  // k rows: read in place when float32 (float64) with a unit last stride; dk, dv: accumulated in the (zeroed)
  // outputs when those are float32 (float64), else in float32 scratch converted at the end
  const Strided<S> km = slice<S>(k, b, h);
  const T* krows = kr;
  int64_t ld = dh;
  if constexpr (std::is_same_v<S, T>) {
    if (km.col == 1) krows = km.data, ld = km.row;
  }
  pack<S, T>(p, km, sample.seen, krows == kr ? kr : nullptr, kt, tile);
  pack<S, T>(p, slice<S>(v, b, h), sample.seen, nullptr, vt, tile);
  S* dk_out = static_cast<S*>(g.dk) + (b * p.heads + h) * p.keys * dh;
  S* dv_out = static_cast<S*>(g.dv) + (b * p.heads + h) * p.keys * dh;
  if constexpr (std::is_same_v<S, T>) {
    dk = dk_out;
    dv = dv_out;
  } else {
    std::fill(dk, dk + 2 * padded * dh, T(0));
  }
  const Strided<S> qm = slice<S>(q, b, h), gm = slice<S>(grad_out, b, h), om = slice<S>(out, b, h);
  const T* lse_row = lse.const_data_ptr<T>() + b * lse.stride(0) + h * lse.stride(1);
  const int64_t lse_stride = lse.stride(2);
  S* dq_out = static_cast<S*>(g.dq) + (b * p.heads + h) * p.queries * dh;
  const T scale = static_cast<T>(p.scale);
  // per working row: scaled q and grad_out (plain and broadcast), its dq, log-sum-exp and Σ g∘out; then key
  // blocks outermost, so that one block's keys, values and dk, dv stay in cache while every row visits them
  const int64_t rows = static_cast<int64_t>(sample.rows.size());
  std::vector<T> state(rows * dh * (3 + 2 * W) + 2 * rows);
  T* qs_all = state.data();              // [rows][dh]
  T* go_all = qs_all + rows * dh;        // [rows][dh]
  T* dq_all = go_all + rows * dh;        // [rows][dh]
  T* qb_all = dq_all + rows * dh;        // [rows][dh][W]
  T* gb_all = qb_all + rows * dh * W;    // [rows][dh][W]
  T* lse_all = gb_all + rows * dh * W;   // [rows]
  T* delta_all = lse_all + rows;         // [rows]
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t r = sample.rows[t];
    T delta = T(0);
    for (int64_t d = 0; d < dh; ++d) {
      const T qd = static_cast<T>(qm.at(r, d)) * scale, gd = static_cast<T>(gm.at(r, d));
      qs_all[t * dh + d] = qd;
      go_all[t * dh + d] = gd;
      dq_all[t * dh + d] = T(0);
      delta += gd * static_cast<T>(om.at(r, d));
      store(qb_all + (t * dh + d) * W, splat<V>(qd));
      store(gb_all + (t * dh + d) * W, splat<V>(gd));
    }
    lse_all[t] = lse_row[r * lse_stride];
    delta_all[t] = delta;
  }
  for (int64_t blk = 0; blk < p.blocks; ++blk) {
    if (!sample.seen[blk]) continue;
    for (int64_t t = 0; t < rows; ++t) {
      const int64_t r = sample.rows[t];
      if (!p.occupancy[(b * p.queries + r) * p.blocks + blk]) continue;
      const uint64_t bits = block_bits(p, b, r, blk);
      if (!bits) continue;
      const uint32_t live = live_vectors<W>(bits);
      V s[NV], dp[NV];
      block_scores<T, W>(qb_all + t * dh * W, kt + blk * kBlock * dh, dh, live, s);
      block_scores<T, W>(gb_all + t * dh * W, vt + blk * kBlock * dh, dh, live, dp);
      const V row_lse = splat<V>(lse_all[t]);
      const V row_delta = splat<V>(delta_all[t]);
      for (int i = 0; i < NV; ++i) {
        if (!((live >> i) & 1)) continue;
        const V e = vexp<W>(s[i] - row_lse);
        const V pv = lane_mask<T, W>(bits >> (i * W)) ? e : V{};
        store(probs + i * W, pv);
        store(dscores + i * W, pv * (dp[i] - row_delta));
      }
      const T* __restrict__ qr = qs_all + t * dh;
      const T* __restrict__ gr = go_all + t * dh;
      int count = 0;
      for (uint64_t rest = bits; rest; rest &= rest - 1, ++count) {
        const int j = __builtin_ctzll(rest);
        const int64_t n = blk * kBlock + j;
        const T pj = probs[j], dsj = dscores[j];
        keys[count] = n;
        coef[count] = dsj;
        T* __restrict__ dkj = dk + n * dh;
        T* __restrict__ dvj = dv + n * dh;
        const V dsv = splat<V>(dsj), pv = splat<V>(pj);
        int64_t d = 0;
        for (; d + W <= dh; d += W) {
          store(dkj + d, load<V>(dkj + d) + dsv * load<V>(qr + d));
          store(dvj + d, load<V>(dvj + d) + pv * load<V>(gr + d));
        }
        for (; d < dh; ++d) {
          dkj[d] += dsj * qr[d];
          dvj[d] += pj * gr[d];
        }
      }
      accumulate_rows<T, W>(dq_all + t * dh, krows, ld, keys, coef, count, dh);
    }
  }
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t d = 0; d < dh; ++d) dq_out[sample.rows[t] * dh + d] = static_cast<S>(dq_all[t * dh + d] * scale);
  }
  if constexpr (!std::is_same_v<S, T>) {
    for (int64_t i = 0; i < p.keys * dh; ++i) {
      dk_out[i] = static_cast<S>(dk[i]);
      dv_out[i] = static_cast<S>(dv[i]);
    }
  }
}

// One body, three instruction sets; the widest the CPU runs is chosen once.
#define COAVS_ISA_VARIANTS(NAME, BODY, PARAMS, ARGS)                                                     \
  template <typename S, typename T>                                                                     \
  __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c"))) void NAME##_avx512 PARAMS { \
    BODY<S, T, 64 / sizeof(T)> ARGS;                                                                    \
  }                                                                                                     \
  template <typename S, typename T>                                                                     \
  __attribute__((target("avx2,fma,f16c"))) void NAME##_avx2 PARAMS {                                    \
    BODY<S, T, 32 / sizeof(T)> ARGS;                                                                    \
  }                                                                                                     \
  template <typename S, typename T>                                                                     \
  void NAME##_base PARAMS {                                                                             \
    BODY<S, T, 16 / sizeof(T)> ARGS;                                                                    \
  }

COAVS_ISA_VARIANTS(forward_bh, forward_body,
                   (const Problem& p, const SampleRows& s, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, int64_t b, int64_t h, T* scratch, const Outputs& o),
                   (p, s, q, k, v, b, h, scratch, o))
COAVS_ISA_VARIANTS(backward_bh, backward_body,
                   (const Problem& p, const SampleRows& s, const at::Tensor& go, const at::Tensor& q,
                    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                    int64_t b, int64_t h, T* scratch, const Grads& g),
                   (p, s, go, q, k, v, out, lse, b, h, scratch, g))

enum class Isa { kAvx512, kAvx2, kBase };

Isa cpu_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
      return Isa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      return Isa::kAvx2;
    }
    return Isa::kBase;
  }();
  return isa;
}

Problem make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bits,
                     const at::Tensor& occupancy, const at::Tensor& active, double scale) {
  TORCH_CHECK(q.device().is_cpu(), "masked_cross_attention_cpu: q must be a CPU tensor, got ", q.device());
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-D [B,h,L,dh], got ", q.sizes(),
              ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.sizes() == v.sizes(), "v must have the shape of k: ", v.sizes(), " vs ", k.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "k [B,h,N,dh] must share B, h and dh with q [B,h,Q,dh]: ", k.sizes(), " vs ", q.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "q, k, v must have one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), "q, k, v must be on one device");
  Problem p{};
  p.batch = q.size(0);
  p.heads = q.size(1);
  p.queries = q.size(2);
  p.keys = k.size(2);
  p.head_dim = q.size(3);
  p.blocks = (p.keys + kBlock - 1) / kBlock;
  p.padded = p.blocks * kBlock;
  p.words = (p.keys + 31) / 32;
  p.scale = scale;
  TORCH_CHECK(bits.scalar_type() == at::kInt && bits.dim() == 3 && bits.size(0) == p.batch &&
                  bits.size(1) == p.queries && bits.size(2) == p.words,
              "mask_bits must be int32 [B,Q,ceil(N/32)] = [", p.batch, ", ", p.queries, ", ", p.words, "], got ",
              bits.scalar_type(), " ", bits.sizes());
  TORCH_CHECK(occupancy.scalar_type() == at::kByte && occupancy.dim() == 3 && occupancy.size(0) == p.batch &&
                  occupancy.size(1) == p.queries && occupancy.size(2) == p.blocks,
              "block_occupancy must be uint8 [B,Q,ceil(N/64)] = [", p.batch, ", ", p.queries, ", ", p.blocks,
              "], got ", occupancy.scalar_type(), " ", occupancy.sizes());
  TORCH_CHECK(active.scalar_type() == at::kBool && active.dim() == 2 && active.size(0) == p.batch &&
                  active.size(1) == p.queries,
              "active must be bool [B,Q] = [", p.batch, ", ", p.queries, "], got ", active.scalar_type(), " ",
              active.sizes());
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "scale must be finite and > 0, got ", scale);
  return p;
}

void set_mask_pointers(Problem& p, const at::Tensor& bits, const at::Tensor& occupancy, const at::Tensor& active) {
  p.bits = bits.const_data_ptr<int32_t>();
  p.occupancy = occupancy.const_data_ptr<uint8_t>();
  p.active = active.const_data_ptr<bool>();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> masked_cross_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v, const at::Tensor& mask_bits,
                                                              const at::Tensor& block_occupancy,
                                                              const at::Tensor& active, double scale) {
  Problem p = make_problem(q, k, v, mask_bits, block_occupancy, active, scale);
  const auto bits = mask_bits.contiguous(), occupancy = block_occupancy.contiguous(), act = active.contiguous();
  set_mask_pointers(p, bits, occupancy, act);
  const auto acc_type = opmath_scalar_type(q.scalar_type());
  auto out = at::zeros({p.batch, p.heads, p.queries, p.head_dim}, q.options());
  auto lse = at::zeros({p.batch, p.heads, p.queries}, q.options().dtype(acc_type));
  if (out.numel() == 0 || p.keys == 0) return {out, lse};
  const auto samples = working_rows(p);
  const Outputs o{out.data_ptr(), lse.data_ptr()};
  const Isa isa = cpu_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_cross_attention_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(2 * p.head_dim * p.padded + 2 * p.head_dim + 2 * kBlock + kBlock * p.head_dim + kMaxLanes * p.head_dim + 64);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / p.heads, h = i % p.heads;
        if (samples[b].rows.empty()) continue;
        switch (isa) {
          case Isa::kAvx512: forward_bh_avx512<scalar_t, T>(p, samples[b], q, k, v, b, h, scratch.data(), o); break;
          case Isa::kAvx2: forward_bh_avx2<scalar_t, T>(p, samples[b], q, k, v, b, h, scratch.data(), o); break;
          default: forward_bh_base<scalar_t, T>(p, samples[b], q, k, v, b, h, scratch.data(), o);
        }
      }
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_cross_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& mask_bits, const at::Tensor& block_occupancy, const at::Tensor& active,
    double scale) {
  Problem p = make_problem(q, k, v, mask_bits, block_occupancy, active, scale);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "grad_out and out must have the shape of q ", q.sizes(), ", got ", grad_out.sizes(), " and ",
              out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
              "grad_out and out must have the dtype of q");
  const auto acc_type = opmath_scalar_type(q.scalar_type());
  TORCH_CHECK(lse.scalar_type() == acc_type && lse.dim() == 3 && lse.size(0) == p.batch && lse.size(1) == p.heads &&
                  lse.size(2) == p.queries,
              "lse must be ", acc_type, " [B,h,Q], got ", lse.scalar_type(), " ", lse.sizes());
  const auto bits = mask_bits.contiguous(), occupancy = block_occupancy.contiguous(), act = active.contiguous();
  set_mask_pointers(p, bits, occupancy, act);
  auto dq = at::zeros(q.sizes(), q.options());
  auto dk = at::zeros(k.sizes(), k.options());
  auto dv = at::zeros(v.sizes(), v.options());
  if (dq.numel() == 0 || dk.numel() == 0) return {dq, dk, dv};
  const auto samples = working_rows(p);
  const Grads g{dq.data_ptr(), dk.data_ptr(), dv.data_ptr()};
  const Isa isa = cpu_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_cross_attention_backward_cpu",
                                  [&] {
    using T = at::opmath_type<scalar_t>;
    at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(5 * p.head_dim * p.padded + 3 * p.head_dim + 3 * kBlock + kBlock * p.head_dim + 2 * kMaxLanes * p.head_dim + 64);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / p.heads, h = i % p.heads;
        if (samples[b].rows.empty()) continue;
        T* s = scratch.data();
        switch (isa) {
          case Isa::kAvx512: backward_bh_avx512<scalar_t, T>(p, samples[b], grad_out, q, k, v, out, lse, b, h, s, g); break;
          case Isa::kAvx2: backward_bh_avx2<scalar_t, T>(p, samples[b], grad_out, q, k, v, out, lse, b, h, s, g); break;
          default: backward_bh_base<scalar_t, T>(p, samples[b], grad_out, q, k, v, out, lse, b, h, s, g);
        }
      }
    });
  });
  return {dq, dk, dv};
}

}  // namespace coavs

// The CPU kernels of these ops; their schemas are in csrc/torch_bindings.cpp.
TORCH_LIBRARY_IMPL(coavs_C, CPU, m) {
  m.impl("masked_cross_attention", &coavs::masked_cross_attention_cpu);
  m.impl("masked_cross_attention_backward", &coavs::masked_cross_attention_backward_cpu);
}
