// The block-sparse plan of masked_cross_attention on the CPU (the definition and the layout of its tensors are in
// coavs/ops/attention_plan.py; this gives the same tensors as its reference_plan, bit for bit). One task per
// sample: block bits of every row (keys < N only, so bits past N in a hand-built mask never count), the row
// order (working rows by the Morton code of their mask's centroid), then per tile of R rows its full and
// partial blocks and per block the tiles that visit it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "common/masked_attention_plan.h"

namespace coavs {
namespace {

// Writes a permutation of [0, n): entries of class 2 (ascending), class 1, then class 0; returns the counts
// (class 2, class 2 or 1).
std::pair<int32_t, int32_t> ordered_list(const std::vector<int8_t>& klass, int32_t* out) {
  int32_t full = 0, total = 0;
  for (int8_t c : klass) full += c == 2, total += c > 0;
  int32_t at_full = 0, at_partial = full, at_rest = total;
  for (size_t i = 0; i < klass.size(); ++i) {
    const int32_t value = static_cast<int32_t>(i);
    if (klass[i] == 2) out[at_full++] = value;
    else if (klass[i] == 1) out[at_partial++] = value;
    else out[at_rest++] = value;
  }
  return {full, total};
}

// A run of lanes of one block whose keys are consecutive and lie in one mask word: lanes [lane, lane + length)
// hold bits [shift, shift + length) of word `word` (a run that crosses a word is cut in two).
struct LaneRun {
  int32_t word;
  uint8_t shift, lane;
  uint32_t mask;  // (1 << length) - 1
};

// The runs of every block, block by block (`first[kb]` .. `first[kb + 1]`); lanes past the map's edge are in none.
void lane_runs(const KeyGeometry& geo, std::vector<LaneRun>& runs, std::vector<int64_t>& first) {
  first.assign(geo.blocks + 1, 0);
  for (int64_t kb = 0; kb < geo.blocks; ++kb) {
    first[kb] = static_cast<int64_t>(runs.size());
    geo.for_each_run(kb, [&](int64_t key, int64_t lane, int64_t length) {
      while (length > 0) {
        const int64_t shift = key & 31, piece = std::min<int64_t>(length, 32 - shift);
        const uint32_t mask = piece == 32 ? ~uint32_t(0) : (uint32_t(1) << piece) - 1;
        runs.push_back({static_cast<int32_t>(key >> 5), static_cast<uint8_t>(shift), static_cast<uint8_t>(lane),
                        mask});
        key += piece, lane += piece, length -= piece;
      }
    });
  }
  first[geo.blocks] = static_cast<int64_t>(runs.size());
}

// Set bits of x, inline (__builtin_popcountll is a library call without -mpopcnt).
COAVS_ALWAYS_INLINE int64_t count_lanes(uint64_t x) {
  x -= (x >> 1) & 0x5555555555555555ULL;
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
  return static_cast<int64_t>((x * 0x0101010101010101ULL) >> 56);
}

}  // namespace

using Plan = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Plan masked_attention_plan_cpu(const at::Tensor& bits, const at::Tensor& active, int64_t height,
                                                  int64_t width, int64_t rows_per_tile) {
  TORCH_CHECK(bits.device().is_cpu() && active.device().is_cpu(), "masked_attention_plan_cpu takes CPU tensors");
  TORCH_CHECK(height >= 1 && width >= 1, "the key map must be at least 1 x 1, got ", height, " x ", width);
  TORCH_CHECK(rows_per_tile >= 1, "rows_per_tile must be >= 1, got ", rows_per_tile);
  TORCH_CHECK(active.scalar_type() == at::kBool && active.dim() == 2, "active must be bool [B,Q], got ",
              active.scalar_type(), " ", active.sizes());
  const int64_t batch = active.size(0), queries = active.size(1), keys = height * width;
  const int64_t words = (keys + 31) / 32;
  TORCH_CHECK(bits.scalar_type() == at::kInt && bits.dim() == 3 && bits.size(0) == batch && bits.size(1) == queries &&
                  bits.size(2) == words,
              "mask bits must be int32 [B,Q,ceil(N/32)] = [", batch, ", ", queries, ", ", words, "], got ",
              bits.scalar_type(), " ", bits.sizes());
  const KeyGeometry geo(height, width);
  const int64_t blocks = geo.blocks, tiles = (queries + rows_per_tile - 1) / rows_per_tile;
  const auto i32 = active.options().dtype(at::kInt);
  auto block_bits = at::empty({batch, queries, blocks}, active.options().dtype(at::kLong));
  auto row_order = at::empty({batch, queries}, i32);
  auto row_count = at::empty({batch}, i32);
  auto tile_counts = at::empty({batch, tiles, 2}, i32);
  auto tile_blocks = at::empty({batch, tiles, blocks}, i32);
  auto block_counts = at::empty({batch, blocks, 2}, i32);
  auto block_tiles = at::empty({batch, blocks, tiles}, i32);
  const auto bits_c = bits.contiguous(), active_c = active.contiguous();
  const int32_t* bit_words = bits_c.const_data_ptr<int32_t>();
  const bool* act = active_c.const_data_ptr<bool>();
  int64_t* bb = block_bits.data_ptr<int64_t>();
  int32_t* order = row_order.data_ptr<int32_t>();
  int32_t* count = row_count.data_ptr<int32_t>();
  int32_t* tc = tile_counts.data_ptr<int32_t>();
  int32_t* tb = tile_blocks.data_ptr<int32_t>();
  int32_t* bc = block_counts.data_ptr<int32_t>();
  int32_t* bt = block_tiles.data_ptr<int32_t>();
  std::vector<uint64_t> valid(blocks);
  std::vector<int64_t> centre_y2(blocks), centre_x2(blocks);
  for (int64_t kb = 0; kb < blocks; ++kb) {
    valid[kb] = geo.valid(kb), centre_y2[kb] = geo.centre_y2(kb), centre_x2[kb] = geo.centre_x2(kb);
  }
  std::vector<LaneRun> runs;
  std::vector<int64_t> first_run;
  lane_runs(geo, runs, first_run);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> sort_keys(queries);
    std::vector<int8_t> klass(blocks * tiles), column;
    for (int64_t b = begin; b < end; ++b) {
      int64_t working = 0;
      for (int64_t q = 0; q < queries; ++q) {
        const int32_t* w = bit_words + (b * queries + q) * words;
        int64_t seen = 0, sum_y2 = 0, sum_x2 = 0;
        for (int64_t kb = 0; kb < blocks; ++kb) {
          uint64_t lanes = 0;
          for (int64_t r = first_run[kb]; r < first_run[kb + 1]; ++r) {
            const LaneRun& run = runs[r];
            lanes |= static_cast<uint64_t>((static_cast<uint32_t>(w[run.word]) >> run.shift) & run.mask) << run.lane;
          }
          bb[(b * queries + q) * blocks + kb] = static_cast<int64_t>(lanes);
          const int64_t n = count_lanes(lanes);
          seen += n;
          sum_y2 += n * centre_y2[kb];
          sum_x2 += n * centre_x2[kb];
        }
        const bool works = act[b * queries + q] && seen > 0;
        working += works;
        sort_keys[q] = row_sort_key(works, seen, sum_y2, sum_x2, height, width, q);
      }
      std::vector<int64_t> sorted = sort_keys;
      std::sort(sorted.begin(), sorted.end());
      for (int64_t i = 0; i < queries; ++i) order[b * queries + i] = static_cast<int32_t>(sorted[i] & 0xffffffff);
      count[b] = static_cast<int32_t>(working);
      // classes per (tile, block): 2 full, 1 partial, 0 not visited
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t first = t * rows_per_tile, last = std::min(first + rows_per_tile, working);
        std::vector<int8_t> row_class(blocks);
        for (int64_t kb = 0; kb < blocks; ++kb) {
          bool any = false, full = last > first;
          for (int64_t p = first; p < last; ++p) {
            const uint64_t lanes = static_cast<uint64_t>(bb[(b * queries + order[b * queries + p]) * blocks + kb]);
            any |= lanes != 0;
            full &= lanes == valid[kb];
          }
          row_class[kb] = full ? 2 : (any ? 1 : 0);
          klass[kb * tiles + t] = row_class[kb];
        }
        const auto counts = ordered_list(row_class, tb + (b * tiles + t) * blocks);
        tc[(b * tiles + t) * 2] = counts.first;
        tc[(b * tiles + t) * 2 + 1] = counts.second;
      }
      for (int64_t kb = 0; kb < blocks; ++kb) {
        column.assign(klass.begin() + kb * tiles, klass.begin() + (kb + 1) * tiles);
        const auto counts = ordered_list(column, bt + (b * blocks + kb) * tiles);
        bc[(b * blocks + kb) * 2] = counts.first;
        bc[(b * blocks + kb) * 2 + 1] = counts.second;
      }
    }
  });
  return {block_bits, row_order, row_count, tile_counts, tile_blocks, block_counts, block_tiles};
}

}  // namespace coavs

// The CPU kernel of this op; its schema is in csrc/torch_bindings.cpp.
TORCH_LIBRARY_IMPL(coavs_C, CPU, m) { m.impl("masked_attention_plan", &coavs::masked_attention_plan_cpu); }
