// semantic_inference on the CPU: tiles of output rows, never [B,Q,H,W] or [B,K,H,W].
//
// Per batch item and tile of output rows: the resized logits of every query, separably (columns, then rows, in
// ATen's order), into a [Q, tile] buffer; ATen's vectorised sigmoid and the gate; one float32 GEMM with the class
// probabilities for the [K, tile] scores; a last pass reduces each pixel to its label (or foreground score).
// Every phase is parallel on its own (at::parallel_for, ATen, the BLAS): calling the BLAS from inside a parallel
// region would oversubscribe it. Tiles are small enough for the per-core L2 cache (kTileBudgetBytes), so each
// phase reads what the previous one wrote from cache, not memory. The resize and the per-pixel reduction are
// compiled twice, for AVX2 (8 lanes; chosen at run time, see cpu/vec_avx2.h) and for any x86-64 / other CPU, with
// the same arithmetic (no FMA contraction), so both give the same labels. The first (horizontal) resize pass runs
// once per batch item into a [Q, h', W] buffer (at most kWholeAcrossBytes; larger, or the overall scheme: per
// tile). The buffers stay within kTileBudgetBytes + kWholeAcrossBytes (plus one batch item's source logits when
// they need converting or debiasing), so the extra memory is the output plus a bounded constant.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/semantic_inference.h"
#include "common/tensor_checks.h"
#include "cpu/vec_avx2.h"

namespace coavs {
namespace {

constexpr int64_t kTileBudgetBytes = int64_t(2) << 20;   // tile buffers: about a core's L2
constexpr int64_t kWholeAcrossBytes = int64_t(64) << 20;  // the once-per-item first resize pass, at most
constexpr int64_t kPixelChunk = 1024;                    // pixels reduced together (stack arrays)

std::vector<LinearTap> axis_taps(int64_t in_size, int64_t out_size) {
  std::vector<LinearTap> taps(out_size);
  for (int64_t i = 0; i < out_size; ++i) taps[i] = bilinear_tap(i, in_size, out_size);
  return taps;
}

// dst[i] = float(mask[i]), or the mask debias of op 4 per element when mask_biased is given.
template <typename scalar_t>
void prepare_source(const scalar_t* mask, const scalar_t* mask_biased, float* dst, int64_t n, float alpha,
                    bool uncertainty) {
  at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float v = static_cast<float>(mask[i]);
      dst[i] = mask_biased != nullptr ? debias_mask_logit(v, static_cast<float>(mask_biased[i]), alpha, uncertainty)
                                      : v;
    }
  });
}

// One query's resize for output rows [r0, r1) (see resize_rows): fills rows_in rows of `rows` (source rows
// s0, s0 + 1, ...; none when they were filled before), then the output rows. Inlined into a portable and an AVX2
// copy.
COAVS_ALWAYS_INLINE void resize_query_body(const float* src, float* rows, float* out, int64_t in_w, int64_t out_w,
                                           const LinearTap* ty, const LinearTap* tx, int64_t s0, int64_t rows_in,
                                           int64_t r0, int64_t r1) {
  for (int64_t i = 0; i < rows_in; ++i) {
    const float* row = src + (s0 + i) * in_w;
    float* dst = rows + i * out_w;
    for (int64_t x = 0; x < out_w; ++x) dst[x] = tx[x].l0 * row[tx[x].i0] + tx[x].l1 * row[tx[x].i1];
  }
  for (int64_t y = r0; y < r1; ++y) {
    const float* top = rows + (ty[y].i0 - s0) * out_w;
    const float* bottom = rows + (ty[y].i1 - s0) * out_w;
    const float l0 = ty[y].l0, l1 = ty[y].l1;
    float* dst = out + (y - r0) * out_w;
    for (int64_t x = 0; x < out_w; ++x) dst[x] = l0 * top[x] + l1 * bottom[x];
  }
}

void resize_query(const float* src, float* rows, float* out, int64_t in_w, int64_t out_w, const LinearTap* ty,
                  const LinearTap* tx, int64_t s0, int64_t rows_in, int64_t r0, int64_t r1) {
  resize_query_body(src, rows, out, in_w, out_w, ty, tx, s0, rows_in, r0, r1);
}

#if COAVS_HAVE_AVX2_KERNELS
COAVS_TARGET_AVX2 void resize_query_avx2(const float* src, float* rows, float* out, int64_t in_w, int64_t out_w,
                                         const LinearTap* ty, const LinearTap* tx, int64_t s0, int64_t rows_in,
                                         int64_t r0, int64_t r1) {
  resize_query_body(src, rows, out, in_w, out_w, ty, tx, s0, rows_in, r0, r1);
}
#endif

// The AVX2 copy of resize_query where the CPU has it, else the portable loop (same bits).
auto resize_query_for_this_cpu() {
  auto* fn = &resize_query;
#if COAVS_HAVE_AVX2_KERNELS
  if (cpu::use_avx2()) fn = &resize_query_avx2;
#endif
  return fn;
}

// Resized logits of output rows [r0, r1) for every query, separably:
// across[q, i, x] = l0x src[q, s0 + i, x0] + l1x src[q, s0 + i, x1] for the source rows s0..s1 the tile reads,
// out[q, (y - r0) W + x] = l0y across[q, y0 - s0, x] + l1y across[q, y1 - s0, x].
// With `whole`, across holds every source row already (fill_across), s0 = 0, and only the second pass runs.
void resize_rows(const float* src, float* across, float* out, int64_t out_stride, int64_t q_count, int64_t in_h,
                 int64_t in_w, int64_t out_w, const std::vector<LinearTap>& ty, const std::vector<LinearTap>& tx,
                 int64_t r0, int64_t r1, bool whole) {
  const int64_t s0 = whole ? 0 : ty[r0].i0;
  const int64_t rows_in = whole ? in_h : ty[r1 - 1].i1 - s0 + 1;
  auto* fn = resize_query_for_this_cpu();
  at::parallel_for(0, q_count, 1, [&](int64_t first, int64_t last) {
    for (int64_t q = first; q < last; ++q) {
      fn(src + q * in_h * in_w, across + q * rows_in * out_w, out + q * out_stride, in_w, out_w, ty.data(),
         tx.data(), s0, whole ? 0 : rows_in, r0, r1);
    }
  });
}

// across[q, s, x] for every source row s: the first pass of the resize once per batch item, so tiles do not
// redo it for the source rows they share.
void fill_across(const float* src, float* across, int64_t q_count, int64_t in_h, int64_t in_w, int64_t out_w,
                 const std::vector<LinearTap>& ty, const std::vector<LinearTap>& tx) {
  auto* fn = resize_query_for_this_cpu();
  at::parallel_for(0, q_count, 1, [&](int64_t first, int64_t last) {
    for (int64_t q = first; q < last; ++q) {
      fn(src + q * in_h * in_w, across + q * in_h * out_w, nullptr, in_w, out_w, ty.data(), tx.data(), 0, in_h, 0,
         0);
    }
  });
}

// Labels of pixels [0, len) from the class scores rows[k][j] (k-th row at scores + k * stride): the first class
// with the highest score, as torch.argmax. Inlined into a portable and an AVX2 copy.
COAVS_ALWAYS_INLINE void argmax_body(const float* scores, int64_t stride, int64_t classes, int64_t len,
                                     int64_t* labels) {
  float best[kPixelChunk];
  int32_t best_k[kPixelChunk];  // 32-bit, like the scores, so the compare-and-select vectorises
  for (int64_t j = 0; j < len; ++j) {
    best[j] = scores[j];
    best_k[j] = 0;
  }
  for (int64_t k = 1; k < classes; ++k) {
    const float* row = scores + k * stride;
    const int32_t k32 = static_cast<int32_t>(k);
    for (int64_t j = 0; j < len; ++j) {
      const bool higher = row[j] > best[j];  // strict: ties keep the lower class
      best[j] = higher ? row[j] : best[j];
      best_k[j] = higher ? k32 : best_k[j];
    }
  }
  for (int64_t j = 0; j < len; ++j) labels[j] = best_k[j];
}

void argmax_pixels(const float* scores, int64_t stride, int64_t classes, int64_t len, int64_t* labels) {
  argmax_body(scores, stride, classes, len, labels);
}

#if COAVS_HAVE_AVX2_KERNELS
COAVS_TARGET_AVX2 void argmax_pixels_avx2(const float* scores, int64_t stride, int64_t classes, int64_t len,
                                          int64_t* labels) {
  argmax_body(scores, stride, classes, len, labels);
}
#endif

// fn(begin, end) over [0, n) in pieces of at most kPixelChunk, in parallel (parallel_for's grain is a minimum).
template <typename Fn>
void for_each_chunk(int64_t n, const Fn& fn) {
  const int64_t chunks = (n + kPixelChunk - 1) / kPixelChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) fn(c * kPixelChunk, std::min(n, (c + 1) * kPixelChunk));
  });
}

// Whether n values are all finite (no NaN, no ±inf).
template <typename T>
bool all_finite(const T* values, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(static_cast<float>(values[i]));  // no branch: vectorises
  return ok;
}

// The source rows a tile of output rows reads, at most (sizes the `across` buffer).
int64_t max_source_rows(int64_t in_h, int64_t out_h, int64_t tile_rows) {
  return std::min(in_h, (tile_rows * in_h + out_h - 1) / out_h + 2);
}

void check_semantic_inputs(const at::Tensor& mask, const at::Tensor& mask_biased, const at::Tensor& probs,
                           const at::Tensor& probs_biased, const at::Tensor& gate, const at::Tensor& foreground,
                           int64_t height, int64_t width, double alpha, bool mask_debias, bool overall,
                           int64_t reduce) {
  TORCH_CHECK(mask.dim() == 4, "mask must be [B,Q,h,w], got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kFloat || mask.scalar_type() == at::kHalf ||
                  mask.scalar_type() == at::kBFloat16,
              "mask must be float32, float16 or bfloat16, got ", mask.scalar_type());
  TORCH_CHECK(mask.size(1) >= 1 && mask.size(2) >= 1 && mask.size(3) >= 1,
              "mask needs at least one query and one pixel, got ", mask.sizes());
  TORCH_CHECK(height >= 1 && width >= 1, "output size must be positive, got ", height, "x", width);
  TORCH_CHECK(reduce >= kReduceArgmax && reduce <= kReduceMaxQuery, "reduce must be 0, 1 or 2, got ", reduce);
  TORCH_CHECK(std::isfinite(alpha) && alpha >= 0.0, "alpha must be finite and >= 0, got ", alpha);
  const int64_t b = mask.size(0), q = mask.size(1);
  if (mask_debias || overall) check_same(mask, "mask", mask_biased, "mask_biased");
  if (reduce != kReduceMaxQuery) {
    TORCH_CHECK(probs.scalar_type() == at::kFloat && probs.dim() == 3 && probs.size(0) == b && probs.size(1) == q &&
                    probs.size(2) >= 1 && probs.size(2) < INT32_MAX,
                "probs must be a float32 [B,Q,K] tensor with B=", b, " and Q=", q, ", got ", probs.scalar_type(),
                " ", probs.sizes());
    TORCH_CHECK(probs.device() == mask.device(), "probs must be on the device of mask");
    if (overall) check_same(probs, "probs", probs_biased, "probs_biased");
  } else {
    TORCH_CHECK(!overall, "the overall scheme needs class probabilities");
  }
  if (reduce == kReduceForeground && foreground.numel() > 0) {  // empty: every class weighs 1
    TORCH_CHECK(foreground.scalar_type() == at::kFloat && foreground.dim() == 1 &&
                    foreground.size(0) == probs.size(2),
                "foreground must be a float32 [K] tensor with K=", probs.size(2), " (or empty), got ",
                foreground.scalar_type(), " ", foreground.sizes());
  }
  if (gate.numel() > 0) {
    TORCH_CHECK(gate.scalar_type() == at::kFloat && gate.dim() == 2 && gate.size(0) == b && gate.size(1) == q,
                "gate must be a float32 [B,Q] tensor with B=", b, " and Q=", q, ", got ", gate.scalar_type(), " ",
                gate.sizes());
  }
}

}  // namespace

at::Tensor semantic_inference_cpu(const at::Tensor& mask, const at::Tensor& mask_biased, const at::Tensor& probs,
                                  const at::Tensor& probs_biased, const at::Tensor& gate,
                                  const at::Tensor& foreground, int64_t height, int64_t width, double alpha,
                                  bool uncertainty, bool mask_debias, bool overall, int64_t reduce) {
  check_semantic_inputs(mask, mask_biased, probs, probs_biased, gate, foreground, height, width, alpha, mask_debias,
                        overall, reduce);
  const int64_t batch = mask.size(0), q_count = mask.size(1), in_h = mask.size(2), in_w = mask.size(3);
  const int64_t pixels = height * width;
  auto out = at::empty({batch, height, width}, mask.options().dtype(reduce == kReduceArgmax ? at::kLong : at::kFloat));
  if (batch == 0) return out;

  const auto m = mask.contiguous();
  const auto mb = (mask_debias || overall) ? mask_biased.contiguous() : at::Tensor();
  const auto p = reduce != kReduceMaxQuery ? probs.contiguous() : at::Tensor();
  const auto pb = overall ? probs_biased.contiguous() : at::Tensor();
  const auto g = gate.numel() > 0 ? gate.contiguous() : at::Tensor();
  const auto fg = reduce == kReduceForeground && foreground.numel() > 0 ? foreground.contiguous() : at::Tensor();
  const int64_t classes = p.defined() ? p.size(2) : 0;
  const int branches = overall ? 2 : 1;
  const float a = static_cast<float>(alpha);
  // float32 logits that need no debias are read in place; others are converted per batch item.
  const bool convert = m.scalar_type() != at::kFloat || mask_debias;

  const auto ty = axis_taps(in_h, height);
  const auto tx = axis_taps(in_w, width);
  // The first (horizontal) pass of the resize once per batch item for all source rows when that buffer is
  // small (single branch); else per tile for the rows the tile reads.
  const bool whole = !overall && int64_t(sizeof(float)) * q_count * in_h * width <= kWholeAcrossBytes;
  // Tiles of whole output rows, sized so that the buffers below stay within kTileBudgetBytes.
  const int64_t rows_read_per_row = whole ? 0 : (in_h + height - 1) / height;
  const int64_t bytes_per_row =
      int64_t(sizeof(float)) * width * branches * (q_count * (1 + rows_read_per_row) + classes);
  const int64_t tile_rows = std::max<int64_t>(1, std::min(height, kTileBudgetBytes / bytes_per_row));
  const int64_t tile = tile_rows * width;
  const int64_t source_rows = max_source_rows(in_h, height, tile_rows);
  const auto f32 = mask.options().dtype(at::kFloat);
  auto src = convert ? at::empty({q_count, in_h, in_w}, f32) : at::Tensor();
  auto src_b = overall ? at::empty({q_count, in_h, in_w}, f32) : at::Tensor();
  auto across = at::empty({q_count, whole ? in_h : source_rows, width}, f32);
  auto sig = at::empty({q_count, tile}, f32);
  auto sig_b = overall ? at::empty({q_count, tile}, f32) : at::Tensor();
  auto scores = classes ? at::empty({classes, tile}, f32) : at::Tensor();  // [K, tile]: pixels contiguous
  auto scores_b = overall ? at::empty({classes, tile}, f32) : at::Tensor();
  const float* fg_ptr = fg.defined() ? fg.const_data_ptr<float>() : nullptr;

  // Gated sigmoids of one branch for output rows [r0, r1) of item b, into buffer[:, :n].
  auto gated_sigmoids = [&](const float* logits, at::Tensor& buffer, int64_t b, int64_t r0, int64_t r1) {
    resize_rows(logits, across.mutable_data_ptr<float>(), buffer.mutable_data_ptr<float>(), tile, q_count, in_h,
                in_w, width, ty, tx, r0, r1, whole);
    auto view = buffer.narrow(1, 0, (r1 - r0) * width);
    view.sigmoid_();  // ATen's vectorised sigmoid
    if (g.defined()) view.mul_(g[b].unsqueeze(1));
  };

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, m.scalar_type(), "semantic_inference_cpu", [&] {
    const scalar_t* m_ptr = m.const_data_ptr<scalar_t>();
    const scalar_t* mb_ptr = mb.defined() ? mb.const_data_ptr<scalar_t>() : nullptr;
    const int64_t plane = q_count * in_h * in_w;
    const float* probs_ptr = p.defined() ? p.const_data_ptr<float>() : nullptr;
    const float* probs_b_ptr = pb.defined() ? pb.const_data_ptr<float>() : nullptr;
    const float* gate_ptr = g.defined() ? g.const_data_ptr<float>() : nullptr;
    for (int64_t b = 0; b < batch; ++b) {
      // An undefined sample (the op's non-finite policy): a NaN or ±inf in its mask logits (biased ones where
      // read), gates or class probabilities gives label -1 / score NaN on every pixel.
      const bool defined = all_finite(m_ptr + b * plane, plane) &&
                           (mb_ptr == nullptr || all_finite(mb_ptr + b * plane, plane)) &&
                           (gate_ptr == nullptr || all_finite(gate_ptr + b * q_count, q_count)) &&
                           (probs_ptr == nullptr || all_finite(probs_ptr + b * q_count * classes, q_count * classes)) &&
                           (probs_b_ptr == nullptr ||
                            all_finite(probs_b_ptr + b * q_count * classes, q_count * classes));
      if (!defined) {
        if (reduce == kReduceArgmax) {
          std::fill_n(out.mutable_data_ptr<int64_t>() + b * pixels, pixels, int64_t(-1));
        } else {
          std::fill_n(out.mutable_data_ptr<float>() + b * pixels, pixels, std::numeric_limits<float>::quiet_NaN());
        }
        continue;
      }
      const float* source = reinterpret_cast<const float*>(m_ptr) + b * plane;  // read in place when float32
      if (convert) {
        prepare_source(m_ptr + b * plane, mask_debias ? mb_ptr + b * plane : nullptr, src.mutable_data_ptr<float>(),
                       plane, a, uncertainty);
        source = src.const_data_ptr<float>();
      }
      if (overall) {
        prepare_source(mb_ptr + b * plane, static_cast<const scalar_t*>(nullptr), src_b.mutable_data_ptr<float>(),
                       plane, a, uncertainty);
      }
      if (whole) fill_across(source, across.mutable_data_ptr<float>(), q_count, in_h, in_w, width, ty, tx);
      // [K, Q] class probabilities of this item, row-major: the BLAS reads them once per tile (a transposed view
      // cost about 4% more GEMM time).
      const auto probs_t = p.defined() ? p[b].t().contiguous() : at::Tensor();
      const auto probs_b_t = pb.defined() ? pb[b].t().contiguous() : at::Tensor();
      for (int64_t r0 = 0; r0 < height; r0 += tile_rows) {
        const int64_t r1 = std::min(height, r0 + tile_rows);
        const int64_t p0 = r0 * width, n = (r1 - r0) * width;
        gated_sigmoids(source, sig, b, r0, r1);
        if (reduce == kReduceMaxQuery) {
          const float* s = sig.const_data_ptr<float>();
          float* o = out.mutable_data_ptr<float>() + b * pixels + p0;
          for_each_chunk(n, [&](int64_t begin, int64_t end) {
            for (int64_t j = begin; j < end; ++j) o[j] = s[j];
            for (int64_t q = 1; q < q_count; ++q) {
              const float* row = s + q * tile;
              for (int64_t j = begin; j < end; ++j) o[j] = std::max(o[j], row[j]);
            }
          });
          continue;
        }
        auto scores_n = scores.narrow(1, 0, n);
        at::mm_out(scores_n, probs_t, sig.narrow(1, 0, n));
        if (overall) {
          gated_sigmoids(src_b.const_data_ptr<float>(), sig_b, b, r0, r1);
          auto scores_b_n = scores_b.narrow(1, 0, n);
          at::mm_out(scores_b_n, probs_b_t, sig_b.narrow(1, 0, n));
        }
        const float* sc = scores.const_data_ptr<float>();
        auto* argmax = &argmax_pixels;
#if COAVS_HAVE_AVX2_KERNELS
        if (cpu::use_avx2()) argmax = &argmax_pixels_avx2;
#endif
        const float* sc_b = overall ? scores_b.const_data_ptr<float>() : nullptr;
        // Scores of class k for pixels [begin, end) of the tile (debiased under the overall scheme).
        auto class_scores = [&](int64_t k, int64_t begin, int64_t end, float* dst) {
          const float* row = sc + k * tile;
          if (sc_b == nullptr) {
            for (int64_t j = begin; j < end; ++j) dst[j - begin] = row[j];
          } else {
            const float* row_b = sc_b + k * tile;
            for (int64_t j = begin; j < end; ++j) {
              dst[j - begin] = debias_overall_score(row[j], row_b[j], a, uncertainty);
            }
          }
        };
        for_each_chunk(n, [&](int64_t begin, int64_t end) {
          const int64_t len = end - begin;
          float best[kPixelChunk], value[kPixelChunk];
          if (reduce == kReduceArgmax && sc_b == nullptr) {
            int64_t* o = out.mutable_data_ptr<int64_t>() + b * pixels + p0 + begin;
            argmax(sc + begin, tile, classes, len, o);
          } else if (reduce == kReduceArgmax) {
            int32_t best_k[kPixelChunk];  // 32-bit, like the scores, so the compare-and-select vectorises
            class_scores(0, begin, end, best);
            for (int64_t j = 0; j < len; ++j) best_k[j] = 0;
            for (int64_t k = 1; k < classes; ++k) {
              class_scores(k, begin, end, value);
              const int32_t k32 = static_cast<int32_t>(k);
              for (int64_t j = 0; j < len; ++j) {
                const bool higher = value[j] > best[j];  // strict: ties keep the lower class, as torch.argmax
                best[j] = higher ? value[j] : best[j];
                best_k[j] = higher ? k32 : best_k[j];
              }
            }
            int64_t* o = out.mutable_data_ptr<int64_t>() + b * pixels + p0 + begin;
            for (int64_t j = 0; j < len; ++j) o[j] = best_k[j];
          } else {
            for (int64_t j = 0; j < len; ++j) best[j] = 0.0f;  // the running foreground sum
            for (int64_t k = 0; k < classes; ++k) {
              class_scores(k, begin, end, value);
              const float weight = fg_ptr != nullptr ? fg_ptr[k] : 1.0f;
              for (int64_t j = 0; j < len; ++j) best[j] += weight * value[j];
            }
            float* o = out.mutable_data_ptr<float>() + b * pixels + p0 + begin;
            for (int64_t j = 0; j < len; ++j) o[j] = best[j];
          }
        });
      }
    }
  });
  return out;
}

}  // namespace coavs

// The CPU kernels of these ops; their schemas are in csrc/torch_bindings.cpp.
TORCH_LIBRARY_IMPL(coavs_C, CPU, m) {
  m.impl("semantic_inference", &coavs::semantic_inference_cpu);
}
