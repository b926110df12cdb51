// Vectors and micro-kernels of the CPU masked_cross_attention (csrc/cpu/masked_attention_cpu.cpp): GCC vector
// extensions of W lanes (AVX-512, AVX2 or baseline, chosen at run time by the caller), exp, reductions, and the
// three small products the kernel is made of, each over a group of G <= 4 rows and one block of 64 keys:
//   block_scores   s[g][lane]  = x[g] . kt[:, lane]              (kt: the block's keys transposed, [dh][64])
//   rows_update    acc[g][:]  += sum_lane c[g][lane] r[lane][:]   (r: the block's rows [64][dh]; p.v and ds.k)
//   keys_update    out[lane][:] += sum_g c[g][lane] x[g][:]       (dv += p^T dO and dk += ds^T q)
// Everything here is always inlined into the ISA-specific bodies.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "common/macros.h"

#pragma GCC diagnostic ignored "-Wpsabi"

namespace coavs {
namespace attention_cpu {

constexpr int64_t kLanes = 64;  // keys per block
constexpr int kMaxGroup = 4;    // rows per micro-kernel call
constexpr int kChunk = 4;       // live vectors per block_scores pass

template <typename T, int W>
struct Vec {
  typedef T type __attribute__((vector_size(sizeof(T) * W)));
  using int_t = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef int_t mask __attribute__((vector_size(sizeof(T) * W)));
};

// Every lane = x: one broadcast. A macro, not a function: written in the ISA-specific body it becomes one
// vbroadcastss; a helper function's scalar-to-vector construction is lowered before it is inlined, into one masked
// broadcast per lane. (x - 0 folds to x for every x, -0 and NaN included; V{} + x would not: -0 + 0 = +0.)
#define splat_as(V, x) ((x) - V{})

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
  static_assert(W <= 16, "one lane per bit of a 16-bit slice");
  M lane_bit;
  for (int i = 0; i < W; ++i) lane_bit[i] = static_cast<I>(I(1) << i);
  return (splat_as(M, static_cast<I>(bits & ((uint64_t(1) << W) - 1))) & lane_bit) != 0;
}

// exp of float32 lanes: 2^n p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 Taylor polynomial (<= 2 ulp);
// x clamped to [-87.3, 88.0] (the callers zero the lanes of invisible keys themselves).
template <int W>
COAVS_ALWAYS_INLINE typename Vec<float, W>::type vexp(typename Vec<float, W>::type x) {
  using V = typename Vec<float, W>::type;
  using M = typename Vec<float, W>::mask;
  x = x < splat_as(V, -87.3f) ? splat_as(V, -87.3f) : x;
  x = x > splat_as(V, 88.0f) ? splat_as(V, 88.0f) : x;
  const V magic = splat_as(V, 12582912.0f);  // 1.5 * 2^23: adding and subtracting rounds to an integer
  const V n = (x * splat_as(V, 1.44269504088896341f) + magic) - magic;
  const V r = (x - n * splat_as(V, 0.693359375f)) - n * splat_as(V, -2.12194440e-4f);
  V p = splat_as(V, 1.0f / 720.0f);
  p = p * r + splat_as(V, 1.0f / 120.0f);
  p = p * r + splat_as(V, 1.0f / 24.0f);
  p = p * r + splat_as(V, 1.0f / 6.0f);
  p = p * r + splat_as(V, 0.5f);
  p = p * r + splat_as(V, 1.0f);
  p = p * r + splat_as(V, 1.0f);
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

// The low and high halves of x, as vectors of W / 2 lanes.
template <typename T, int W>
COAVS_ALWAYS_INLINE std::pair<typename Vec<T, W / 2>::type, typename Vec<T, W / 2>::type> halves(
    typename Vec<T, W>::type x) {
  using H = typename Vec<T, W / 2>::type;
  H lo, hi;
  std::memcpy(&lo, &x, sizeof(H));
  std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof(H), sizeof(H));
  return {lo, hi};
}

// The largest lane (halves compared pairwise, so log2(W) vector steps instead of W - 1 scalar ones).
template <typename T, int W>
COAVS_ALWAYS_INLINE T reduce_max(typename Vec<T, W>::type x) {
  if constexpr (W == 1) {
    return x[0];
  } else {
    const auto [lo, hi] = halves<T, W>(x);
    return reduce_max<T, W / 2>(lo > hi ? lo : hi);
  }
}

// True when any lane of the mask (or integer vector) m is not zero.
template <typename M>
COAVS_ALWAYS_INLINE bool any_lane(const M& m) {
  static_assert(sizeof(M) % sizeof(uint64_t) == 0, "whole 64-bit words");
  uint64_t words[sizeof(M) / sizeof(uint64_t)];
  std::memcpy(words, &m, sizeof(M));
  uint64_t any = 0;
  for (uint64_t word : words) any |= word;
  return any != 0;
}

template <typename T, int W>
COAVS_ALWAYS_INLINE T reduce_sum(typename Vec<T, W>::type x) {
  if constexpr (W == 1) {
    return x[0];
  } else {
    const auto [lo, hi] = halves<T, W>(x);
    return reduce_sum<T, W / 2>(lo + hi);
  }
}

// zip_lo(a, b) = a0 b0 a1 b1 ... (the low halves interleaved), zip_hi(a, b) = the high halves interleaved.
template <typename V, size_t... I>
COAVS_ALWAYS_INLINE V zip_lo(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I % 2) ? sizeof...(I) + I / 2 : I / 2)...);
}

template <typename V, size_t... I>
COAVS_ALWAYS_INLINE V zip_hi(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b,
                                 ((I % 2) ? sizeof...(I) + sizeof...(I) / 2 + I / 2 : sizeof...(I) / 2 + I / 2)...);
}

// Transposes the W x W tile r (W vectors) in place: log2(W) rounds of zips of rows i and i + W/2.
template <typename T, int W>
COAVS_ALWAYS_INLINE void transpose_tile(typename Vec<T, W>::type (&r)[W]) {
  using V = typename Vec<T, W>::type;
  for (int round = 1; round < W; round *= 2) {
    V next[W];
    for (int i = 0; i < W / 2; ++i) {
      next[2 * i] = zip_lo(r[i], r[i + W / 2], std::make_index_sequence<W>{});
      next[2 * i + 1] = zip_hi(r[i], r[i + W / 2], std::make_index_sequence<W>{});
    }
    for (int i = 0; i < W; ++i) r[i] = next[i];
  }
}

// cols [dh][64] = rows [64][dh] transposed, W x W tiles at a time (the scalar tail for dh % W).
template <typename T, int W>
COAVS_ALWAYS_INLINE void transpose_block(const T* rows, int64_t dh, T* cols) {
  using V = typename Vec<T, W>::type;
  int64_t d = 0;
  for (; d + W <= dh; d += W) {
    for (int64_t lane = 0; lane < kLanes; lane += W) {
      V tile[W];
      for (int i = 0; i < W; ++i) tile[i] = load<V>(rows + (lane + i) * dh + d);
      transpose_tile<T, W>(tile);
      for (int i = 0; i < W; ++i) store(cols + (d + i) * kLanes + lane, tile[i]);
    }
  }
  for (; d < dh; ++d)
    for (int64_t lane = 0; lane < kLanes; ++lane) cols[d * kLanes + lane] = rows[lane * dh + d];
}

// The vectors (of W lanes) of a block that hold a lane of `lanes`, as indices; returns their number.
template <int W>
COAVS_ALWAYS_INLINE int live_vectors(uint64_t lanes, int* index) {
  int count = 0;
  for (int v = 0; v < kLanes / W; ++v) {
    if ((lanes >> (v * W)) & ((uint64_t(1) << W) - 1)) index[count++] = v;
  }
  return count;
}

// s[g][v*W .. v*W+W) = x[g] . kt over the L vectors listed in `vec` (each d: L loads of kt, G*L FMAs).
template <typename T, int W, int G, int L>
COAVS_ALWAYS_INLINE void scores_pass(const T* const* x, const T* kt, const int* vec, int64_t dh, T* s) {
  using V = typename Vec<T, W>::type;
  V acc[G][L];
  for (int g = 0; g < G; ++g)
    for (int l = 0; l < L; ++l) acc[g][l] = V{};
  for (int64_t d = 0; d < dh; ++d) {
    V key[L];
    for (int l = 0; l < L; ++l) key[l] = load<V>(kt + d * kLanes + vec[l] * W);
    for (int g = 0; g < G; ++g) {
      const V xd = splat_as(V, x[g][d]);
      for (int l = 0; l < L; ++l) acc[g][l] += xd * key[l];
    }
  }
  for (int g = 0; g < G; ++g)
    for (int l = 0; l < L; ++l) store(s + g * kLanes + vec[l] * W, acc[g][l]);
}

template <typename T, int W, int G>
COAVS_ALWAYS_INLINE void scores_rows(const T* const* x, const T* kt, const int* vec, int live, int64_t dh, T* s) {
  for (int first = 0; first < live; first += kChunk) {
    switch (live - first < kChunk ? live - first : kChunk) {
      case 1: scores_pass<T, W, G, 1>(x, kt, vec + first, dh, s); break;
      case 2: scores_pass<T, W, G, 2>(x, kt, vec + first, dh, s); break;
      case 3: scores_pass<T, W, G, 3>(x, kt, vec + first, dh, s); break;
      default: scores_pass<T, W, G, 4>(x, kt, vec + first, dh, s);
    }
  }
}

// Scores of `group` rows (pointers x) against the live vectors of one block, into s [group][64].
template <typename T, int W>
COAVS_ALWAYS_INLINE void block_scores(int group, const T* const* x, const T* kt, const int* vec, int live, int64_t dh,
                                      T* s) {
  switch (group) {
    case 1: scores_rows<T, W, 1>(x, kt, vec, live, dh, s); break;
    case 2: scores_rows<T, W, 2>(x, kt, vec, live, dh, s); break;
    case 3: scores_rows<T, W, 3>(x, kt, vec, live, dh, s); break;
    default: scores_rows<T, W, 4>(x, kt, vec, live, dh, s);
  }
}

// acc[g][:] += sum over the lanes of `lanes` of c[g][lane] * rows[lane][:] (rows: [64][ld]).
template <typename T, int W, int G>
COAVS_ALWAYS_INLINE void rows_update_g(T* const* acc, const T* c, const T* rows, int64_t ld, uint64_t lanes,
                                       int64_t dh) {
  using V = typename Vec<T, W>::type;
  int64_t d = 0;
  for (; d + 2 * W <= dh; d += 2 * W) {
    V a[G][2];
    for (int g = 0; g < G; ++g) a[g][0] = load<V>(acc[g] + d), a[g][1] = load<V>(acc[g] + d + W);
    for (uint64_t rest = lanes; rest; rest &= rest - 1) {
      const int j = __builtin_ctzll(rest);
      const V r0 = load<V>(rows + j * ld + d), r1 = load<V>(rows + j * ld + d + W);
      for (int g = 0; g < G; ++g) {
        const V cj = splat_as(V, c[g * kLanes + j]);
        a[g][0] += cj * r0;
        a[g][1] += cj * r1;
      }
    }
    for (int g = 0; g < G; ++g) store(acc[g] + d, a[g][0]), store(acc[g] + d + W, a[g][1]);
  }
  for (; d + W <= dh; d += W) {
    V a[G];
    for (int g = 0; g < G; ++g) a[g] = load<V>(acc[g] + d);
    for (uint64_t rest = lanes; rest; rest &= rest - 1) {
      const int j = __builtin_ctzll(rest);
      const V r = load<V>(rows + j * ld + d);
      for (int g = 0; g < G; ++g) a[g] += splat_as(V, c[g * kLanes + j]) * r;
    }
    for (int g = 0; g < G; ++g) store(acc[g] + d, a[g]);
  }
  for (; d < dh; ++d) {
    for (uint64_t rest = lanes; rest; rest &= rest - 1) {
      const int j = __builtin_ctzll(rest);
      for (int g = 0; g < G; ++g) acc[g][d] += c[g * kLanes + j] * rows[j * ld + d];
    }
  }
}

template <typename T, int W>
COAVS_ALWAYS_INLINE void rows_update(int group, T* const* acc, const T* c, const T* rows, int64_t ld, uint64_t lanes,
                                     int64_t dh) {
  switch (group) {
    case 1: rows_update_g<T, W, 1>(acc, c, rows, ld, lanes, dh); break;
    case 2: rows_update_g<T, W, 2>(acc, c, rows, ld, lanes, dh); break;
    case 3: rows_update_g<T, W, 3>(acc, c, rows, ld, lanes, dh); break;
    default: rows_update_g<T, W, 4>(acc, c, rows, ld, lanes, dh);
  }
}

// out[lane][:] += sum_g c[g][lane] * x[g][:] for the lanes of `lanes` (out: [64][dh]).
template <typename T, int W, int G>
COAVS_ALWAYS_INLINE void keys_update_g(T* out, const T* c, const T* const* x, uint64_t lanes, int64_t dh) {
  using V = typename Vec<T, W>::type;
  int64_t d = 0;
  for (; d + W <= dh; d += W) {
    V xr[G];
    for (int g = 0; g < G; ++g) xr[g] = load<V>(x[g] + d);
    for (uint64_t rest = lanes; rest; rest &= rest - 1) {
      const int j = __builtin_ctzll(rest);
      V o = load<V>(out + j * dh + d);
      for (int g = 0; g < G; ++g) o += splat_as(V, c[g * kLanes + j]) * xr[g];
      store(out + j * dh + d, o);
    }
  }
  for (; d < dh; ++d) {
    for (uint64_t rest = lanes; rest; rest &= rest - 1) {
      const int j = __builtin_ctzll(rest);
      for (int g = 0; g < G; ++g) out[j * dh + d] += c[g * kLanes + j] * x[g][d];
    }
  }
}

template <typename T, int W>
COAVS_ALWAYS_INLINE void keys_update(int group, T* out, const T* c, const T* const* x, uint64_t lanes, int64_t dh) {
  switch (group) {
    case 1: keys_update_g<T, W, 1>(out, c, x, lanes, dh); break;
    case 2: keys_update_g<T, W, 2>(out, c, x, lanes, dh); break;
    case 3: keys_update_g<T, W, 3>(out, c, x, lanes, dh); break;
    default: keys_update_g<T, W, 4>(out, c, x, lanes, dh);
  }
}

}  // namespace attention_cpu
}  // namespace coavs
