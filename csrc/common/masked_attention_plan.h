// Key-block geometry of masked_cross_attention (coavs/ops/attention_plan.py is the definition): the H x W keys
// are cut into patches of ph x pw = 64 keys, numbered row-major over the patch grid; the 64 lanes of a patch are
// four 16-lane sub-patches of sh x sw keys (sh = min(4, ph)), row-major in the patch. No ATen (csrc/tests).
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace coavs {

constexpr int64_t kPlanBlockKeys = 64;
constexpr int64_t kPlanSubKeys = 16;
constexpr int kCentroidGridBits = 5;
constexpr int64_t kNotWorking = int64_t(1) << 48;  // above every working row's key

struct KeyGeometry {
  int64_t height, width, ph, pw, patches_x, blocks;
  int64_t dy[kPlanBlockKeys], dx[kPlanBlockKeys];  // lane offsets inside a patch

  // The fewest patches covering the map; ties go to the first of 8, 4, 16, 2, 1 (the squarest).
  KeyGeometry(int64_t h, int64_t w) : height(h), width(w) {
    const int64_t candidates[] = {8, 4, 16, 2, 1};
    blocks = -1;
    for (int64_t c : candidates) {
      const int64_t cw = kPlanBlockKeys / c;
      const int64_t n = ((h + c - 1) / c) * ((w + cw - 1) / cw);
      if (blocks < 0 || n < blocks) blocks = n, ph = c, pw = cw;
    }
    patches_x = (w + pw - 1) / pw;
    const int64_t sub_h = ph < 4 ? ph : 4, sub_w = kPlanSubKeys / sub_h, per_row = pw / sub_w;
    for (int64_t lane = 0; lane < kPlanBlockKeys; ++lane) {
      const int64_t sub = lane / kPlanSubKeys, inner = lane % kPlanSubKeys;
      dy[lane] = (sub / per_row) * sub_h + inner / sub_w;
      dx[lane] = (sub % per_row) * sub_w + inner % sub_w;
    }
  }

  // The key of lane `lane` of block `block`, or -1 past the map's edge.
  COAVS_ALWAYS_INLINE int64_t key(int64_t block, int64_t lane) const {
    const int64_t y = (block / patches_x) * ph + dy[lane], x = (block % patches_x) * pw + dx[lane];
    return (y < height && x < width) ? y * width + x : -1;
  }

  // The keys of the 64 lanes of `block` (-1 past the map's edge), with one division for the whole block.
  void block_keys(int64_t block, int64_t* keys) const {
    const int64_t y0 = (block / patches_x) * ph, x0 = (block % patches_x) * pw;
    for (int64_t lane = 0; lane < kPlanBlockKeys; ++lane) {
      const int64_t y = y0 + dy[lane], x = x0 + dx[lane];
      keys[lane] = (y < height && x < width) ? y * width + x : -1;
    }
  }

  // Calls fn(key, lane, length) for each run of lanes [lane, lane + length) of `block` whose keys
  // [key, key + length) are consecutive (at most 32 lanes: one mask word; lanes past the map's edge are in none),
  // in lane order.
  template <typename F>
  void for_each_run(int64_t block, F&& fn) const {
    int64_t keys_of[kPlanBlockKeys];
    block_keys(block, keys_of);
    for (int64_t lane = 0; lane < kPlanBlockKeys;) {
      if (keys_of[lane] < 0) {
        ++lane;
        continue;
      }
      int64_t end = lane + 1;
      while (end < kPlanBlockKeys && keys_of[end] == keys_of[end - 1] + 1 && end - lane < 32) ++end;
      fn(keys_of[lane], lane, end - lane);
      lane = end;
    }
  }

  // Mask of the valid lanes of `block`.
  uint64_t valid(int64_t block) const {
    uint64_t mask = 0;
    for (int64_t lane = 0; lane < kPlanBlockKeys; ++lane) {
      if (key(block, lane) >= 0) mask |= uint64_t(1) << lane;
    }
    return mask;
  }

  // Twice the centre of the patch (integers).
  int64_t centre_y2(int64_t block) const { return 2 * (block / patches_x) * ph + ph; }
  int64_t centre_x2(int64_t block) const { return 2 * (block % patches_x) * pw + pw; }
};

// Interleaves the low kCentroidGridBits bits of gy (odd positions) and gx (even positions).
COAVS_HOST_DEVICE int64_t morton_code(int64_t gy, int64_t gx) {
  int64_t code = 0;
  for (int bit = 0; bit < kCentroidGridBits; ++bit) {
    code |= ((gy >> bit) & 1) << (2 * bit + 1);
    code |= ((gx >> bit) & 1) << (2 * bit);
  }
  return code;
}

// The row-order sort key of a row with `seen` visible keys whose per-block counts weighted by twice the patch
// centres sum to (sum_y2, sum_x2); working rows sort by the Morton code of their centroid on a 32 x 32 grid.
COAVS_HOST_DEVICE int64_t row_sort_key(bool working, int64_t seen, int64_t sum_y2, int64_t sum_x2, int64_t height,
                                       int64_t width, int64_t row) {
  if (!working) return kNotWorking | row;
  const int64_t top = (int64_t(1) << kCentroidGridBits) - 1;
  int64_t gy = (sum_y2 << kCentroidGridBits) / (2 * seen * height);
  int64_t gx = (sum_x2 << kCentroidGridBits) / (2 * seen * width);
  gy = gy < top ? gy : top;
  gx = gx < top ? gx : top;
  return (morton_code(gy, gx) << 32) | row;
}

}  // namespace coavs
