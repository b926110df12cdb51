// masked_cross_attention on the CPU, driven by the block-sparse plan (coavs/ops/attention_plan.py; built by
// csrc/cpu/masked_attention_plan_cpu.cpp). at::parallel_for over (b, h); per (b, h) the key blocks any working
// row visits, outermost: the block's keys and values are packed once (64 lanes in patch order, float32, or
// float64 for float64; read up to 8 blocks of a patch row at a time, in memory order), then the rows that see
// the block — its full tiles' rows, then its partial tiles' rows with a visible lane, in plan order — go through
// the micro-kernels of masked_attention_vec.h four at a time, each group against the vectors of lanes that any
// of its rows sees.
//   forward:  per row m, l, o online (a row's blocks arrive in ascending order); out = o / l, lse = m + log l
//   backward: p = exp(s - lse), dp = dO.v^T, ds = p (dp - sum dO o); dq = scale sum ds k, and per block
//             dk = sum ds (scale q), dv = sum p dO (each key lies in one block: written once)
// Non-finite values (docs/design.md, "Non-finite inputs"): a non-finite element of q, k or v is read as 0 and
// poisons what depends on it: a working row is poisoned when its q, a key or value it sees, or one of its
// visible scores is non-finite, or its output overflows; its out and lse are NaN. In the backward a row is also
// poisoned by a non-finite grad_out (or out); it contributes nothing, its dq is NaN, and so are dk and dv of
// every key it sees. Nothing else changes, so NaN never spreads through the zeros of invisible keys.
// Memory safety: keys are addressed through the patch geometry (lanes past the map's edge are never read),
// mask bits are read only from the plan's block_bits (masked to the valid lanes), and every plan index is
// range-checked before use, so no plan and no mask makes the kernel read or write outside its tensors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

// a * b + c in the vector code becomes one fused multiply-add (ISO C++ mode keeps them apart otherwise)
#pragma GCC optimize("fp-contract=fast")
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "common/masked_attention_plan.h"
#include "common/tensor_checks.h"
#include "cpu/cpu_isa.h"
#include "cpu/masked_attention_vec.h"

namespace coavs {
namespace {

using namespace attention_cpu;

// The group lambdas carry the vector work: they must be inlined into the ISA-specific bodies (a lambda is a
// function of its own, compiled for the baseline ISA unless inlined).
#define COAVS_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))

// Key blocks packed a chunk at a time: up to kChunkBlocks consecutive blocks of one patch row, their keys read
// in ascending order (runs of consecutive keys sorted by key), so the rows of K and V stream front to back from
// memory; block by block, the reads would jump between map rows every few keys and wait on each line.
constexpr int64_t kChunkBlocks = 8;
// Rows are asked for this far ahead of their copy, in key order, into L2 (prefetcht2), not L1: measured at the
// benchmark shapes, one thread, 20% active, forward kernel: 6/207 Xeon 14.2 -> 6.8-7.1 ms with 4 KB into L1 (1-2 KB:
// 7.7-8.8 ms; 16 KB: 8.2 ms; L2 instead of L1 no different there); Zen 4 EPYC, interleaved in one process:
// 6.4 ms with 4 KB into L1, 5.6 ms into L2, 5.2 ms with 6-8 KB into L2 (N=4096: 23.1 -> 19.9-21.2 ms); likely
// because a prefetch into L1 holds one of the core's few L1 miss buffers until its line arrives.
constexpr int64_t kPackAheadBytes = 6144;
constexpr int kPackAheadLocality = 1;  // __builtin_prefetch's locality 1: prefetcht2

// Asks for the 64-byte lines of [address, address + bytes) into L2, for reading (Write = 0) or writing (1). A
// prefetch never faults: past a tensor's end it is a no-op (the address is an integer: no out-of-range pointer).
template <int Write>
COAVS_ALWAYS_INLINE void prefetch_lines(uintptr_t address, int64_t bytes) {
  for (int64_t at = 0; at < bytes; at += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(address + at), Write, kPackAheadLocality);
  }
}

struct KeyRun {
  int64_t key;
  int32_t slot, lane, length;  // slot: the block's place in its chunk
};

struct KeyChunks {
  std::vector<int64_t> first_block;  // chunk c holds blocks [first_block[c], first_block[c + 1])
  std::vector<int64_t> first_run;    // and runs [first_run[c], first_run[c + 1])
  std::vector<KeyRun> runs;

  void build(const KeyGeometry& geo) {
    for (int64_t kb = 0; kb < geo.blocks; ++kb) {
      const bool starts = kb == 0 || kb % geo.patches_x == 0 || kb - first_block.back() == kChunkBlocks;
      if (starts) {
        if (!first_block.empty()) close_chunk();
        first_block.push_back(kb);
        first_run.push_back(static_cast<int64_t>(runs.size()));
      }
      geo.for_each_run(kb, [&](int64_t key, int64_t lane, int64_t length) {
        runs.push_back({key, static_cast<int32_t>(kb - first_block.back()), static_cast<int32_t>(lane),
                        static_cast<int32_t>(length)});
      });
    }
    close_chunk();
    first_block.push_back(geo.blocks);
    first_run.push_back(static_cast<int64_t>(runs.size()));
  }

  int64_t count() const { return static_cast<int64_t>(first_block.size()) - 1; }

 private:
  void close_chunk() {
    std::sort(runs.begin() + first_run.back(), runs.end(),
              [](const KeyRun& a, const KeyRun& b) { return a.key < b.key; });
  }
};

// The working rows that see each block of one sample, as the heads walk them in groups of kMaxGroup: from the
// block's full tiles (every valid lane) and partial tiles (a visible lane), ordered by the first and then the last
// 8-lane vector they see, ties in plan order, so that a group's rows see nearly the same vectors (computed ÷
// visible scores at the benchmark masks, N=1024: 1.89 -> 1.64 at 100% active, 1.93 -> 1.87 at 20%).
struct SampleRows {
  std::vector<int32_t> first;   // [KB + 1]: block kb's rows are [first[kb], first[kb + 1])
  std::vector<int32_t> pos;     // positions in row_order
  std::vector<uint64_t> lanes;  // the lanes each sees
};

struct Problem {
  int64_t batch, heads, queries, keys, head_dim, blocks, tiles, rows_per_tile;
  double scale;
  const int64_t* block_bits;    // [B,Q,KB]
  const int32_t* row_order;     // [B,Q]
  const int32_t* row_count;     // [B]
  const int32_t* block_counts;  // [B,KB,2]
  const int32_t* block_tiles;   // [B,KB,T]
  std::vector<uint64_t> valid;  // [KB] valid lanes
  KeyChunks chunks;
  std::vector<SampleRows> seen_by;  // [B]
};

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

template <typename T>
COAVS_ALWAYS_INLINE bool finite(T x) {
  return x - x == T(0);  // false for NaN and +-inf
}

// dst[0 .. dh) = src[0 .. dh), times scale when Scaled, adding x - x of every stored x to probe / tail_probe (they
// stay zero unless a stored value is non-finite: a cheap test before the per-element one).
template <typename T, int W, bool Scaled>
COAVS_ALWAYS_INLINE void copy_probed(const T* src, T* dst, int64_t dh, T scale, typename Vec<T, W>::type& probe,
                                     T& tail_probe) {
  using V = typename Vec<T, W>::type;
  int64_t d = 0;
  for (; d + W <= dh; d += W) {
    V x = load<V>(src + d);
    if constexpr (Scaled) x = x * splat_as(V, scale);
    probe += x - x;
    store(dst + d, x);
  }
  for (; d < dh; ++d) {
    const T x = Scaled ? src[d] * scale : src[d];
    tail_probe += x - x;
    dst[d] = x;
  }
}

// Stores 0 over every non-finite element of x[0 .. n); true when there was one.
template <typename T>
COAVS_ALWAYS_INLINE bool zero_non_finite(T* x, int64_t n) {
  bool any = false;
  for (int64_t i = 0; i < n; ++i) {
    if (!finite(x[i])) x[i] = T(0), any = true;
  }
  return any;
}

// True when a tile of sample b visits block kb.
COAVS_ALWAYS_INLINE bool visits(const Problem& p, int64_t b, int64_t kb) {
  return p.block_counts[(b * p.blocks + kb) * 2 + 1] > 0;
}

// True when a tile of sample b visits a block of chunk c.
COAVS_ALWAYS_INLINE bool visits_chunk(const Problem& p, int64_t b, int64_t c) {
  for (int64_t kb = p.chunks.first_block[c]; kb < p.chunks.first_block[c + 1]; ++kb) {
    if (visits(p, b, kb)) return true;
  }
  return false;
}

// The blocks of chunk c that sample b visits, from the [N, dh] matrix m, as rows [kChunkBlocks][64][dh] in lane
// order (zero for lanes past the map's edge), each element converted to T; a non-finite one is stored as 0 and
// its lane is set in bad[slot]. float32 (float64) rows with a unit last stride are read as vectors in place; others
// are converted through `row` ([dh] scratch) first. Lanes are checked one by one only when the copy's probe is
// not zero. transpose_block (masked_attention_vec.h) turns a block's rows into the [dh][64] the scores need.
template <typename S, typename T, int W>
COAVS_ALWAYS_INLINE void pack_chunk(const Problem& p, int64_t b, int64_t c, int64_t dh, const Strided<S>& m, T* rows,
                                    T* row, uint64_t* bad) {
  const KeyChunks& chunks = p.chunks;
  using V = typename Vec<T, W>::type;
  const int64_t first = chunks.first_block[c], blocks = chunks.first_block[c + 1] - first;
  bool visited[kChunkBlocks];
  for (int64_t slot = 0; slot < blocks; ++slot) {
    const int64_t kb = first + slot;
    visited[slot] = visits(p, b, kb);
    bad[slot] = 0;
    if (!visited[slot] || ~p.valid[kb] == 0) continue;
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      T* dst = rows + (slot * kLanes + lane) * dh;
      if (!((p.valid[kb] >> lane) & 1)) std::fill(dst, dst + dh, T(0));
    }
  }
  bool direct = false;
  if constexpr (std::is_same_v<S, T>) direct = m.col == 1;
  const int64_t row_bytes = dh * static_cast<int64_t>(sizeof(S));
  const uintptr_t ahead_bytes = std::max<int64_t>(4, kPackAheadBytes / row_bytes) * m.row * sizeof(S);
  V probe{};
  T tail_probe = T(0);
  for (int64_t r = chunks.first_run[c]; r < chunks.first_run[c + 1]; ++r) {
    const KeyRun& run = chunks.runs[r];
    if (!visited[run.slot]) continue;
    T* dst = rows + (run.slot * kLanes + run.lane) * dh;
    for (int64_t i = 0; i < run.length; ++i, dst += dh) {
      const T* src = row;
      const S* key_row = m.data + (run.key + i) * m.row;
      if (m.col == 1) prefetch_lines<0>(reinterpret_cast<uintptr_t>(key_row) + ahead_bytes, row_bytes);
      if (direct) {
        src = reinterpret_cast<const T*>(key_row);
      } else {
        for (int64_t d = 0; d < dh; ++d) row[d] = static_cast<T>(m.at(run.key + i, d));
      }
      copy_probed<T, W, false>(src, dst, dh, T(1), probe, tail_probe);
    }
  }
  if (reduce_sum<T, W>(probe) + tail_probe == T(0)) return;
  for (int64_t slot = 0; slot < blocks; ++slot) {
    if (!visited[slot]) continue;
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      if (zero_non_finite(rows + (slot * kLanes + lane) * dh, dh)) bad[slot] |= uint64_t(1) << lane;
    }
  }
}

// Writes the keys of chunk c to out ([N][dh] of one (b, h)) in key order: the rows of the blocks sample b visits
// from `rows` ([8][64][dh], converted to S; the lanes of nan_lanes[slot] as NaN), zeros for every other key. The
// lines ahead are prefetched for writing as the packing's reads are (backward kernel at 20% active, N=1024, Zen 4
// EPYC, interleaved: 12.5 -> 11.3 ms).
template <typename S, typename T>
COAVS_ALWAYS_INLINE void store_chunk(const Problem& p, int64_t b, int64_t c, int64_t dh, const T* rows,
                                     const uint64_t* nan_lanes, S* out) {
  const KeyChunks& chunks = p.chunks;
  const int64_t first = chunks.first_block[c], row_bytes = dh * static_cast<int64_t>(sizeof(S));
  for (int64_t r = chunks.first_run[c]; r < chunks.first_run[c + 1]; ++r) {
    const KeyRun& run = chunks.runs[r];
    S* dst = out + run.key * dh;
    if (!visits(p, b, first + run.slot)) {
      std::fill(dst, dst + run.length * dh, S(0));
      continue;
    }
    for (int64_t i = 0; i < run.length; ++i, dst += dh) {
      const int64_t lane = run.lane + i;
      if ((nan_lanes[run.slot] >> lane) & 1) {
        std::fill(dst, dst + dh, static_cast<S>(std::numeric_limits<T>::quiet_NaN()));
        continue;
      }
      const T* src = rows + (run.slot * kLanes + lane) * dh;
      prefetch_lines<1>(reinterpret_cast<uintptr_t>(dst) + kPackAheadBytes, row_bytes);
      for (int64_t d = 0; d < dh; ++d) dst[d] = static_cast<S>(src[d]);
    }
  }
}

// dst [count][dh] = scale * the rows rows[0 .. count) of m, a non-finite product stored as 0 with its row
// flagged in `poisoned` (checked element by element only for rows whose copy's probe is not zero).
template <typename S, typename T, int W>
COAVS_ALWAYS_INLINE void load_scaled_rows(const Strided<S>& m, const int32_t* rows, int64_t count, int64_t dh, T scale,
                                          T* dst, uint8_t* poisoned) {
  using V = typename Vec<T, W>::type;
  bool direct = false;
  if constexpr (std::is_same_v<S, T>) direct = m.col == 1;
  for (int64_t at = 0; at < count; ++at) {
    T* out = dst + at * dh;
    const T* src = out;
    if (direct) {
      src = reinterpret_cast<const T*>(m.data + rows[at] * m.row);
    } else {
      for (int64_t d = 0; d < dh; ++d) out[d] = static_cast<T>(m.at(rows[at], d));
    }
    V probe{};
    T tail_probe = T(0);
    copy_probed<T, W, true>(src, out, dh, scale, probe, tail_probe);
    if (reduce_sum<T, W>(probe) + tail_probe != T(0)) poisoned[at] |= zero_non_finite(out, dh);
  }
}

// Calls fn(n, positions, lanes) for groups of up to 4 working rows that see block kb (positions in row_order), in
// the order of p.seen_by. Rows flagged in `skip` are left out; their lanes are OR-ed into `skipped`.
template <typename F>
COAVS_ALWAYS_INLINE void for_each_group(const Problem& p, int64_t b, int64_t kb, const uint8_t* skip, uint64_t& skipped,
                                        F&& fn) {
  const SampleRows& seen = p.seen_by[b];
  int64_t pos[kMaxGroup];
  uint64_t lanes[kMaxGroup];
  int n = 0;
  for (int32_t i = seen.first[kb]; i < seen.first[kb + 1]; ++i) {
    if (skip != nullptr && skip[seen.pos[i]]) {
      skipped |= seen.lanes[i];
      continue;
    }
    pos[n] = seen.pos[i];
    lanes[n] = seen.lanes[i];
    if (++n == kMaxGroup) fn(n, pos, lanes), n = 0;
  }
  if (n) fn(n, pos, lanes);
}

struct Buffers {  // outputs, contiguous
  void* a;
  void* b;
  void* c;
};

template <typename S, typename T, int W>
COAVS_ALWAYS_INLINE void forward_body(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      int64_t b, int64_t h, std::vector<T>& scratch,
                                      const Buffers& o) {
  using V = typename Vec<T, W>::type;
  using M = typename Vec<T, W>::mask;
  const int64_t dh = p.head_dim, count = p.row_count[b];
  const int32_t* rows = p.row_order + b * p.queries;
  const int64_t chunk_size = kChunkBlocks * kLanes * dh;
  scratch.resize(2 * chunk_size + kLanes * dh + 2 * kMaxGroup * kLanes + count * (2 * dh + 2) + dh);
  T* row = scratch.data();          // [dh] conversion scratch
  T* kc = row + dh;                 // [8][64][dh] keys of the packed chunk
  T* vc = kc + chunk_size;          // [8][64][dh] values
  T* kt = vc + chunk_size;          // [dh][64] keys of a block, transposed
  T* sc = kt + kLanes * dh;         // [4][64] scores
  T* pr = sc + kMaxGroup * kLanes;  // [4][64] probabilities
  T* qs = pr + kMaxGroup * kLanes;  // [count][dh] scale * q
  T* acc = qs + count * dh;         // [count][dh]
  T* row_max = acc + count * dh;    // [count]
  T* row_sum = row_max + count;     // [count]
  std::vector<uint8_t> poisoned(count, 0);
  const T scale = static_cast<T>(p.scale), neg_inf = -std::numeric_limits<T>::infinity();
  const Strided<S> qm = slice<S>(q, b, h), km = slice<S>(k, b, h), vm = slice<S>(v, b, h);
  load_scaled_rows<S, T, W>(qm, rows, count, dh, scale, qs, poisoned.data());
  std::fill(acc, acc + count * dh, T(0));
  std::fill(row_max, row_max + count, neg_inf);
  std::fill(row_sum, row_sum + count, T(0));
  int vec[kLanes];
  const T* x[kMaxGroup];
  T* a[kMaxGroup];
  uint64_t unused = 0, bad_k[kChunkBlocks], bad_v[kChunkBlocks];
  for (int64_t c = 0; c < p.chunks.count(); ++c) {
    if (!visits_chunk(p, b, c)) continue;
    pack_chunk<S, T, W>(p, b, c, dh, km, kc, row, bad_k);
    pack_chunk<S, T, W>(p, b, c, dh, vm, vc, row, bad_v);
    for (int64_t kb = p.chunks.first_block[c]; kb < p.chunks.first_block[c + 1]; ++kb) {
      if (!visits(p, b, kb)) continue;
      const int64_t slot = kb - p.chunks.first_block[c];
      transpose_block<T, W>(kc + slot * kLanes * dh, dh, kt);
      const T* vr = vc + slot * kLanes * dh;
      const uint64_t bad = bad_k[slot] | bad_v[slot];
      for_each_group(p, b, kb, nullptr, unused,
                     [&](int n, const int64_t* pos, const uint64_t* lanes) COAVS_ALWAYS_INLINE_LAMBDA {
        uint64_t all = 0;
        for (int g = 0; g < n; ++g) all |= lanes[g], x[g] = qs + pos[g] * dh, a[g] = acc + pos[g] * dh;
        const int live = live_vectors<W>(all, vec);
        block_scores<T, W>(n, x, kt, vec, live, dh, sc);
        for (int g = 0; g < n; ++g) {
          const int64_t at = pos[g];
          poisoned[at] |= (lanes[g] & bad) != 0;
          V top = splat_as(V, neg_inf);
          M overflow{};
          for (int l = 0; l < live; ++l) {
            const M seen = lane_mask<T, W>(lanes[g] >> (vec[l] * W));
            const V s = load<V>(sc + g * kLanes + vec[l] * W);
            const M ok = seen & ((s - s) == V{});
            overflow |= seen & ~ok;
            const V masked = ok ? s : splat_as(V, neg_inf);
            top = top > masked ? top : masked;
            store(sc + g * kLanes + vec[l] * W, masked);
          }
          poisoned[at] |= any_lane(overflow);
          const T block_max = reduce_max<T, W>(top);
          const T new_max = block_max > row_max[at] ? block_max : row_max[at];
          if (new_max == neg_inf) {  // every visible score non-finite: the row is poisoned, nothing to add
            for (int l = 0; l < live; ++l) store(pr + g * kLanes + vec[l] * W, V{});
            continue;
          }
          V total{};
          for (int l = 0; l < live; ++l) {
            const V masked = load<V>(sc + g * kLanes + vec[l] * W);
            const V e = vexp<W>(masked - splat_as(V, new_max));
            const V prob = masked > splat_as(V, neg_inf) ? e : V{};
            total += prob;
            store(pr + g * kLanes + vec[l] * W, prob);
          }
          if (new_max > row_max[at]) {
            const T correction = row_max[at] == neg_inf ? T(0) : std::exp(row_max[at] - new_max);
            row_sum[at] *= correction;
            for (int64_t d = 0; d < dh; ++d) acc[at * dh + d] *= correction;
            row_max[at] = new_max;
          }
          row_sum[at] += reduce_sum<T, W>(total);
        }
        rows_update<T, W>(n, a, pr, vr, dh, all, dh);
      });
    }
  }
  S* out = static_cast<S*>(o.a) + (b * p.heads + h) * p.queries * dh;
  T* lse = static_cast<T*>(o.b) + (b * p.heads + h) * p.queries;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (int64_t at = 0; at < count; ++at) {
    const int64_t r = rows[at];
    const T inverse = T(1) / row_sum[at];
    bool ok = !poisoned[at] && row_sum[at] > T(0);
    for (int64_t d = 0; d < dh; ++d) ok &= finite(acc[at * dh + d] * inverse);
    for (int64_t d = 0; d < dh; ++d) out[r * dh + d] = static_cast<S>(ok ? acc[at * dh + d] * inverse : nan);
    lse[r] = ok ? row_max[at] + std::log(row_sum[at]) : nan;
  }
}

template <typename S, typename T, int W>
COAVS_ALWAYS_INLINE void backward_body(const Problem& p, const at::Tensor& grad_out,
                                       const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& out, const at::Tensor& lse, int64_t b, int64_t h,
                                       std::vector<T>& scratch, const Buffers& grads) {
  using V = typename Vec<T, W>::type;
  const int64_t dh = p.head_dim, count = p.row_count[b];
  const int32_t* rows = p.row_order + b * p.queries;
  const int64_t chunk_size = kChunkBlocks * kLanes * dh;
  scratch.resize(4 * chunk_size + 2 * kLanes * dh + 2 * kMaxGroup * kLanes + count * (3 * dh + 2) + dh);
  T* row = scratch.data();            // [dh] conversion scratch
  T* kc = row + dh;                   // [8][64][dh] keys of the packed chunk
  T* vc = kc + chunk_size;            // [8][64][dh] values
  T* dkc = vc + chunk_size;           // [8][64][dh] dk of the chunk's keys
  T* dvc = dkc + chunk_size;          // [8][64][dh] dv
  T* kt = dvc + chunk_size;           // [dh][64] keys of a block, transposed
  T* vt = kt + kLanes * dh;           // [dh][64] values
  T* sc = vt + kLanes * dh;           // [4][64] scores, then probabilities
  T* ds = sc + kMaxGroup * kLanes;    // [4][64] d(scores)
  T* qs = ds + kMaxGroup * kLanes;    // [count][dh] scale * q
  T* go = qs + count * dh;            // [count][dh] grad_out
  T* dq = go + count * dh;            // [count][dh]
  T* row_lse = dq + count * dh;       // [count]
  T* delta = row_lse + count;         // [count]
  std::vector<uint8_t> poisoned(count, 0);
  const T scale = static_cast<T>(p.scale), nan = std::numeric_limits<T>::quiet_NaN();
  const Strided<S> qm = slice<S>(q, b, h), km = slice<S>(k, b, h), vm = slice<S>(v, b, h);
  const Strided<S> gm = slice<S>(grad_out, b, h), om = slice<S>(out, b, h);
  const T* lse_bh = lse.const_data_ptr<T>() + b * lse.stride(0) + h * lse.stride(1);
  // the working rows' scale * q, grad_out and out (read into dq, zeroed once delta = sum grad_out * out is taken)
  load_scaled_rows<S, T, W>(qm, rows, count, dh, scale, qs, poisoned.data());
  load_scaled_rows<S, T, W>(gm, rows, count, dh, T(1), go, poisoned.data());
  load_scaled_rows<S, T, W>(om, rows, count, dh, T(1), dq, poisoned.data());
  for (int64_t at = 0; at < count; ++at) {
    row_lse[at] = lse_bh[rows[at] * lse.stride(2)];
    poisoned[at] |= !finite(row_lse[at]);
    T dot = T(0);
    for (int64_t d = 0; d < dh; ++d) dot += go[at * dh + d] * dq[at * dh + d];
    delta[at] = dot;
  }
  std::fill(dq, dq + count * dh, T(0));
  int vec[kLanes];
  const T* xq[kMaxGroup];
  const T* xg[kMaxGroup];
  T* a[kMaxGroup];
  S* dk_out = static_cast<S*>(grads.b) + (b * p.heads + h) * p.keys * dh;
  S* dv_out = static_cast<S*>(grads.c) + (b * p.heads + h) * p.keys * dh;
  uint64_t unused[kChunkBlocks];  // non-finite keys and values poisoned their rows' lse in the forward
  uint64_t key_poisoned[kChunkBlocks];
  for (int64_t c = 0; c < p.chunks.count(); ++c) {
    const int64_t first = p.chunks.first_block[c], last = p.chunks.first_block[c + 1];
    if (visits_chunk(p, b, c)) {
      pack_chunk<S, T, W>(p, b, c, dh, km, kc, row, unused);
      pack_chunk<S, T, W>(p, b, c, dh, vm, vc, row, unused);
    }
    for (int64_t kb = first; kb < last; ++kb) {
      const int64_t slot = kb - first;
      key_poisoned[slot] = 0;
      if (!visits(p, b, kb)) continue;
      const T* kr = kc + slot * kLanes * dh;
      transpose_block<T, W>(kr, dh, kt);
      transpose_block<T, W>(vc + slot * kLanes * dh, dh, vt);
      T* dk = dkc + slot * kLanes * dh;
      T* dv = dvc + slot * kLanes * dh;
      std::fill(dk, dk + kLanes * dh, T(0));
      std::fill(dv, dv + kLanes * dh, T(0));
      for_each_group(p, b, kb, poisoned.data(), key_poisoned[slot],
                     [&](int n, const int64_t* pos, const uint64_t* lanes) COAVS_ALWAYS_INLINE_LAMBDA {
        uint64_t all = 0;
        for (int g = 0; g < n; ++g) {
          all |= lanes[g];
          xq[g] = qs + pos[g] * dh, xg[g] = go + pos[g] * dh, a[g] = dq + pos[g] * dh;
        }
        const int live = live_vectors<W>(all, vec);
        block_scores<T, W>(n, xq, kt, vec, live, dh, sc);
        block_scores<T, W>(n, xg, vt, vec, live, dh, ds);
        for (int g = 0; g < n; ++g) {
          const V row_lse_v = splat_as(V, row_lse[pos[g]]), row_delta = splat_as(V, delta[pos[g]]);
          for (int l = 0; l < live; ++l) {
            T* s = sc + g * kLanes + vec[l] * W;
            T* dp = ds + g * kLanes + vec[l] * W;
            const auto seen = lane_mask<T, W>(lanes[g] >> (vec[l] * W));
            const V e = vexp<W>(load<V>(s) - row_lse_v);
            const V prob = seen ? e : V{};
            const V grad = prob * (load<V>(dp) - row_delta);
            store(s, prob);
            store(dp, seen ? grad : V{});  // invisible lanes stay 0 even where dO.v overflows
          }
        }
        keys_update<T, W>(n, dv, sc, xg, all, dh);
        keys_update<T, W>(n, dk, ds, xq, all, dh);
        rows_update<T, W>(n, a, ds, kr, dh, all, dh);
      });
    }
    store_chunk<S, T>(p, b, c, dh, dkc, key_poisoned, dk_out);
    store_chunk<S, T>(p, b, c, dh, dvc, key_poisoned, dv_out);
  }
  S* dq_out = static_cast<S*>(grads.a) + (b * p.heads + h) * p.queries * dh;
  for (int64_t at = 0; at < count; ++at) {
    for (int64_t d = 0; d < dh; ++d) {
      dq_out[rows[at] * dh + d] = static_cast<S>(poisoned[at] ? nan : dq[at * dh + d] * scale);
    }
  }
}

// One body, three instruction sets; the widest the CPU runs is chosen once. BYTES: the vector width of the AVX-512
// copy. The forward runs 256-bit vectors there (8 float lanes, AVX-512VL's 32 registers): a group's rows see few
// lanes of a 64-key block, and 8-lane vectors skip more of the unseen ones; measured at the benchmark shapes on
// a 6/207 Xeon (one thread, N=1024): 1.3x / 1.8x faster than 16 lanes at 20% / 100% active. The backward keeps
// 512-bit vectors (its forward + backward ratio to SDPA 1.06-1.27x higher than with 8 lanes, same runs).
#define COAVS_ISA_VARIANTS(NAME, BODY, BYTES, PARAMS, ARGS)                                                   \
  template <typename S, typename T>                                                                     \
  __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c"))) void NAME##_avx512 PARAMS { \
    BODY<S, T, BYTES / sizeof(T)> ARGS;                                                                 \
  }                                                                                                     \
  template <typename S, typename T>                                                                     \
  __attribute__((target("avx2,fma,f16c"))) void NAME##_avx2 PARAMS {                                    \
    BODY<S, T, 32 / sizeof(T)> ARGS;                                                                    \
  }                                                                                                     \
  template <typename S, typename T>                                                                     \
  void NAME##_base PARAMS {                                                                             \
    BODY<S, T, 16 / sizeof(T)> ARGS;                                                                    \
  }

COAVS_ISA_VARIANTS(forward_bh, forward_body, 32,
                   (const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t b,
                    int64_t h, std::vector<T>& scratch, const Buffers& o),
                   (p, q, k, v, b, h, scratch, o))
COAVS_ISA_VARIANTS(backward_bh, backward_body, 64,
                   (const Problem& p, const at::Tensor& go, const at::Tensor& q,
                    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                    int64_t b, int64_t h, std::vector<T>& scratch, const Buffers& g),
                   (p, go, q, k, v, out, lse, b, h, scratch, g))

struct PlanTensors {
  at::Tensor block_bits, row_order, row_count, tile_counts, tile_blocks, block_counts, block_tiles;
};

void check_int32(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.scalar_type() == at::kInt && t.sizes() == shape && t.device().is_cpu(), "plan ", name,
              " must be int32 ", shape, " on the CPU, got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

// Shapes, dtypes and every value the kernels index with: a plan that did not come from masked_attention_plan
// cannot make them read or write outside their tensors.
PlanTensors check_plan(int64_t batch, int64_t queries, int64_t blocks, int64_t tiles, const at::Tensor& block_bits,
                       const at::Tensor& row_order, const at::Tensor& row_count, const at::Tensor& tile_counts,
                       const at::Tensor& tile_blocks, const at::Tensor& block_counts, const at::Tensor& block_tiles) {
  TORCH_CHECK(block_bits.scalar_type() == at::kLong && block_bits.sizes() == at::IntArrayRef({batch, queries, blocks}),
              "plan block_bits must be int64 [", batch, ", ", queries, ", ", blocks, "], got ",
              block_bits.scalar_type(), " ", block_bits.sizes());
  check_int32(row_order, "row_order", {batch, queries});
  check_int32(row_count, "row_count", {batch});
  check_int32(tile_counts, "tile_counts", {batch, tiles, 2});
  check_int32(tile_blocks, "tile_blocks", {batch, tiles, blocks});
  check_int32(block_counts, "block_counts", {batch, blocks, 2});
  check_int32(block_tiles, "block_tiles", {batch, blocks, tiles});
  PlanTensors t{block_bits.contiguous(), row_order.contiguous(), row_count.contiguous(), tile_counts.contiguous(),
                tile_blocks.contiguous(), block_counts.contiguous(), block_tiles.contiguous()};
  const int32_t* order = t.row_order.const_data_ptr<int32_t>();
  const int32_t* count = t.row_count.const_data_ptr<int32_t>();
  const int32_t* bc = t.block_counts.const_data_ptr<int32_t>();
  const int32_t* bt = t.block_tiles.const_data_ptr<int32_t>();
  std::vector<uint8_t> seen(queries);
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(count[b] >= 0 && count[b] <= queries, "plan row_count out of range");
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t i = 0; i < queries; ++i) {
      const int32_t r = order[b * queries + i];
      TORCH_CHECK(r >= 0 && r < queries && !seen[r], "plan row_order must be a permutation of the rows");
      seen[r] = 1;
    }
    for (int64_t kb = 0; kb < blocks; ++kb) {
      const int32_t full = bc[(b * blocks + kb) * 2], total = bc[(b * blocks + kb) * 2 + 1];
      TORCH_CHECK(full >= 0 && full <= total && total <= tiles, "plan block_counts out of range");
      for (int32_t i = 0; i < total; ++i) {
        const int32_t tile = bt[(b * blocks + kb) * tiles + i];
        TORCH_CHECK(tile >= 0 && tile < tiles, "plan block_tiles out of range");
      }
    }
  }
  return t;
}

// The grouping key of a row that sees `lanes` (not 0) of a block: its first and last 8-lane vector.
inline int sort_key(uint64_t lanes) {
  return (__builtin_ctzll(lanes) / 8) * (kLanes / 8) + (63 - __builtin_clzll(lanes)) / 8;
}

// Fills out with the rows that see each block of sample b (SampleRows), a counting sort per block on the
// (first, last) 8-lane vector its rows see.
void rows_by_block(const Problem& p, int64_t b, SampleRows& out) {
  constexpr int kVectors = kLanes / 8, kKeys = kVectors * kVectors;
  const int64_t count = p.row_count[b];
  const int32_t* rows = p.row_order + b * p.queries;
  std::vector<int32_t> pos;
  std::vector<uint64_t> lanes;
  out.first.assign(p.blocks + 1, 0);
  out.pos.clear(), out.lanes.clear();
  for (int64_t kb = 0; kb < p.blocks; ++kb) {
    const int32_t* counts = p.block_counts + (b * p.blocks + kb) * 2;
    const int32_t* tiles = p.block_tiles + (b * p.blocks + kb) * p.tiles;
    const uint64_t valid = p.valid[kb];
    pos.clear(), lanes.clear();
    int32_t bucket[kKeys + 1] = {};
    for (int32_t i = 0; i < counts[1]; ++i) {
      const int64_t first = static_cast<int64_t>(tiles[i]) * p.rows_per_tile;
      const int64_t last = std::min(first + p.rows_per_tile, count);
      for (int64_t at = first; at < last; ++at) {
        const int64_t* bits = p.block_bits + (b * p.queries + rows[at]) * p.blocks;
        const uint64_t seen = i < counts[0] ? valid : static_cast<uint64_t>(bits[kb]) & valid;
        if (!seen) continue;
        pos.push_back(static_cast<int32_t>(at));
        lanes.push_back(seen);
        ++bucket[sort_key(seen) + 1];
      }
    }
    for (int key = 0; key < kKeys; ++key) bucket[key + 1] += bucket[key];
    const size_t base = out.pos.size();
    out.pos.resize(base + pos.size()), out.lanes.resize(base + pos.size());
    for (size_t i = 0; i < pos.size(); ++i) {
      const int32_t to = bucket[sort_key(lanes[i])]++;
      out.pos[base + to] = pos[i];
      out.lanes[base + to] = lanes[i];
    }
    out.first[kb + 1] = static_cast<int32_t>(out.pos.size());
  }
}

Problem make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const PlanTensors& t,
                     const KeyGeometry& geo, int64_t rows_per_tile, double scale) {
  Problem p;
  p.batch = q.size(0), p.heads = q.size(1), p.queries = q.size(2), p.keys = k.size(2), p.head_dim = q.size(3);
  p.blocks = geo.blocks, p.rows_per_tile = rows_per_tile, p.scale = scale;
  p.tiles = (p.queries + rows_per_tile - 1) / rows_per_tile;
  p.block_bits = t.block_bits.const_data_ptr<int64_t>();
  p.row_order = t.row_order.const_data_ptr<int32_t>();
  p.row_count = t.row_count.const_data_ptr<int32_t>();
  p.block_counts = t.block_counts.const_data_ptr<int32_t>();
  p.block_tiles = t.block_tiles.const_data_ptr<int32_t>();
  p.valid.resize(geo.blocks);
  for (int64_t kb = 0; kb < geo.blocks; ++kb) p.valid[kb] = geo.valid(kb);
  p.chunks.build(geo);
  p.seen_by.resize(p.batch);
  at::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) rows_by_block(p, b, p.seen_by[b]);
  });
  return p;
}

// Asks the kernel to back the 2 MB-aligned interior of a large, not yet written buffer with huge pages: such a
// buffer is fresh memory on every call (glibc maps allocations above 32 MB anew), and its first writes fault once
// per 4 KB page otherwise (backward at N=4096: dk and dv, 84 MB each, 109 -> 50 ms with 2 MB pages on the Zen 4
// EPYC, kernel alone). A hint: where transparent huge pages are off or the call fails, nothing changes.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (bytes < 8 * kHugePage) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data, (void)bytes;
#endif
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t height, int64_t width,
               double scale) {
  TORCH_CHECK(q.device().is_cpu(), "masked_cross_attention_cpu: q must be a CPU tensor, got ", q.device());
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-D [B,h,L,dh], got ", q.sizes(),
              ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(k.sizes() == v.sizes(), "v must have the shape of k: ", v.sizes(), " vs ", k.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "k [B,h,N,dh] must share B, h and dh with q [B,h,Q,dh]: ", k.sizes(), " vs ", q.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "q, k, v must have one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), "q, k, v must be on one device");
  TORCH_CHECK(height >= 1 && width >= 1 && height * width == k.size(2), "the key map ", height, " x ", width,
              " must hold the N = ", k.size(2), " keys");
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "scale must be finite and > 0, got ", scale);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> masked_cross_attention_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& block_bits,
    const at::Tensor& row_order, const at::Tensor& row_count, const at::Tensor& tile_counts,
    const at::Tensor& tile_blocks, const at::Tensor& block_counts, const at::Tensor& block_tiles, double scale,
    int64_t height, int64_t width, int64_t rows_per_tile) {
  check_qkv(q, k, v, height, width, scale);
  TORCH_CHECK(rows_per_tile >= 1, "rows_per_tile must be >= 1");
  const KeyGeometry geo(height, width);
  const int64_t tiles = (q.size(2) + rows_per_tile - 1) / rows_per_tile;
  const PlanTensors t = check_plan(q.size(0), q.size(2), geo.blocks, tiles, block_bits, row_order, row_count,
                                   tile_counts, tile_blocks, block_counts, block_tiles);
  const Problem p = make_problem(q, k, v, t, geo, rows_per_tile, scale);
  auto out = at::zeros(q.sizes(), q.options());
  auto lse = at::zeros({p.batch, p.heads, p.queries}, q.options().dtype(opmath_scalar_type(q.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  const Buffers o{out.data_ptr(), lse.data_ptr(), nullptr};
  const cpu::Isa isa = cpu::cpu_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_cross_attention_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / p.heads, h = i % p.heads;
        if (p.row_count[b] == 0) continue;
        switch (isa) {
          case cpu::Isa::kAvx512: forward_bh_avx512<scalar_t, T>(p, q, k, v, b, h, scratch, o); break;
          case cpu::Isa::kAvx2: forward_bh_avx2<scalar_t, T>(p, q, k, v, b, h, scratch, o); break;
          default: forward_bh_base<scalar_t, T>(p, q, k, v, b, h, scratch, o);
        }
      }
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_cross_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& block_bits, const at::Tensor& row_order, const at::Tensor& row_count,
    const at::Tensor& tile_counts, const at::Tensor& tile_blocks, const at::Tensor& block_counts,
    const at::Tensor& block_tiles, double scale, int64_t height, int64_t width, int64_t rows_per_tile) {
  check_qkv(q, k, v, height, width, scale);
  TORCH_CHECK(rows_per_tile >= 1, "rows_per_tile must be >= 1");
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "grad_out and out must have the shape of q ", q.sizes(), ", got ", grad_out.sizes(), " and ",
              out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
              "grad_out and out must have the dtype of q");
  const auto acc_type = opmath_scalar_type(q.scalar_type());
  TORCH_CHECK(lse.scalar_type() == acc_type && lse.dim() == 3 && lse.size(0) == q.size(0) &&
                  lse.size(1) == q.size(1) && lse.size(2) == q.size(2),
              "lse must be ", acc_type, " [B,h,Q], got ", lse.scalar_type(), " ", lse.sizes());
  const KeyGeometry geo(height, width);
  const int64_t tiles = (q.size(2) + rows_per_tile - 1) / rows_per_tile;
  const PlanTensors t = check_plan(q.size(0), q.size(2), geo.blocks, tiles, block_bits, row_order, row_count,
                                   tile_counts, tile_blocks, block_counts, block_tiles);
  const Problem p = make_problem(q, k, v, t, geo, rows_per_tile, scale);
  auto dq = at::zeros(q.sizes(), q.options());
  auto dk = at::empty(k.sizes(), k.options());  // every key is written by backward_body (zeros where unseen)
  auto dv = at::empty(v.sizes(), v.options());
  if (dq.numel() == 0 || dk.numel() == 0) return {dq, dk.zero_(), dv.zero_()};
  advise_huge_pages(dk.data_ptr(), dk.nbytes());
  advise_huge_pages(dv.data_ptr(), dv.nbytes());
  const Buffers g{dq.data_ptr(), dk.data_ptr(), dv.data_ptr()};
  const cpu::Isa isa = cpu::cpu_isa();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_cross_attention_backward_cpu",
                                  [&] {
    using T = at::opmath_type<scalar_t>;
    at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / p.heads, h = i % p.heads;
        if (p.row_count[b] == 0) {
          const int64_t size = p.keys * p.head_dim;
          std::fill_n(static_cast<scalar_t*>(g.b) + i * size, size, scalar_t(0));
          std::fill_n(static_cast<scalar_t*>(g.c) + i * size, size, scalar_t(0));
          continue;
        }
        switch (isa) {
          case cpu::Isa::kAvx512: backward_bh_avx512<scalar_t, T>(p, grad_out, q, k, v, out, lse, b, h, scratch, g); break;
          case cpu::Isa::kAvx2: backward_bh_avx2<scalar_t, T>(p, grad_out, q, k, v, out, lse, b, h, scratch, g); break;
          default: backward_bh_base<scalar_t, T>(p, grad_out, q, k, v, out, lse, b, h, scratch, g);
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
