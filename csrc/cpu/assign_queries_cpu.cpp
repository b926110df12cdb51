// assign_queries on the CPU: presence and gates per sample, then the prompted queries row by row
// (at::parallel_for). The arithmetic is csrc/common/assign_queries.h, shared with the CUDA kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/assign_queries.h"
#include "common/tensor_checks.h"

namespace coavs {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel chunk

int64_t rows_grain(int64_t width) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(width, 1)); }

// sum_j x[j] y[j] in acc_t, in independent partial sums so that the compiler can vectorise it.
template <typename acc_t, typename scalar_t>
acc_t lane_dot(const scalar_t* x, const scalar_t* y, int64_t n) {
  constexpr int kLanes = 8;
  acc_t lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += static_cast<acc_t>(x[j + l]) * static_cast<acc_t>(y[j + l]);
  }
  acc_t total = 0;
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  for (; j < n; ++j) total += static_cast<acc_t>(x[j]) * static_cast<acc_t>(y[j]);
  return total;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_queries_cpu(const at::Tensor& scores, const at::Tensor& audio,
                                                                  const at::Tensor& query_feat, int64_t dilation,
                                                                  double threshold, double dormant_gate, bool soft) {
  check_assign_inputs(scores, audio, query_feat, dilation);
  const auto sc = scores.contiguous(), au = audio.contiguous(), qf = query_feat.contiguous();
  const int64_t batch = sc.size(0), num_markers = sc.size(1), num_queries = qf.size(0), width = qf.size(1);
  auto queries = at::empty({batch, num_queries, width}, qf.options());
  auto gate = at::empty({batch, num_queries}, sc.options());
  auto active = at::empty({batch, num_queries}, sc.options().dtype(at::kBool));
  // The gate in the arithmetic type of the queries, read by the second pass.
  const auto query_acc = opmath_scalar_type(qf.scalar_type());
  auto gate_acc = at::empty({batch, num_queries}, sc.options().dtype(query_acc));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sc.scalar_type(), "assign_queries_cpu_gate", [&] {
    using score_acc = at::opmath_type<scalar_t>;
    const scalar_t* s = sc.const_data_ptr<scalar_t>();
    scalar_t* gate_out = gate.mutable_data_ptr<scalar_t>();
    bool* active_out = active.mutable_data_ptr<bool>();
    const auto thr = static_cast<score_acc>(threshold);
    const auto dormant = static_cast<scalar_t>(dormant_gate);
    AT_DISPATCH_FLOATING_TYPES(gate_acc.scalar_type(), "assign_queries_cpu_gate_acc", [&] {
      scalar_t* g_acc = gate_acc.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, batch, rows_grain(num_markers + num_queries), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const auto* row = s + b * num_markers;
          PresenceState<score_acc> presence;
          for (int64_t m = 0; m < num_markers; ++m) presence.add(static_cast<score_acc>(row[m]), m, thr);
          const int64_t fallback = presence.fallback_marker();
          for (int64_t q = 0; q < num_queries; ++q) {
            const auto qg = query_gate(row, q, num_markers, dilation, thr, fallback, dormant, soft);
            gate_out[b * num_queries + q] = qg.gate;
            active_out[b * num_queries + q] = qg.active;
            g_acc[b * num_queries + q] = static_cast<scalar_t>(static_cast<score_acc>(qg.gate));
          }
        }
      });
    });
  });

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qf.scalar_type(), "assign_queries_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* feat = qf.const_data_ptr<scalar_t>();
    const scalar_t* a = au.const_data_ptr<scalar_t>();
    const acc_t* g = gate_acc.const_data_ptr<acc_t>();
    scalar_t* out = queries.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * num_queries, rows_grain(width), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / num_queries, q = r % num_queries;
        const acc_t gr = g[r];
        for (int64_t j = 0; j < width; ++j) {
          out[r * width + j] = static_cast<scalar_t>(
              prompted_query(static_cast<acc_t>(feat[q * width + j]), gr, static_cast<acc_t>(a[b * width + j])));
        }
      }
    });
  });
  return {queries, gate, active};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_queries_backward_cpu(
    const at::Tensor& grad_queries, const at::Tensor& grad_gate, const at::Tensor& audio, const at::Tensor& gate,
    const at::Tensor& active, int64_t num_markers, int64_t dilation, bool soft) {
  check_assign_backward_inputs(grad_queries, grad_gate, audio, gate, active, num_markers, dilation);
  const auto g = grad_queries.contiguous(), gg = grad_gate.contiguous(), au = audio.contiguous();
  const auto gt = gate.contiguous(), ac = active.contiguous();
  const int64_t batch = g.size(0), num_queries = g.size(1), width = g.size(2);
  auto d_query_feat = at::empty({num_queries, width}, g.options());
  auto d_audio = at::empty({batch, width}, au.options());
  auto d_scores = at::empty({batch, num_markers}, gt.options());
  const bool* act = ac.const_data_ptr<bool>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "assign_queries_backward_cpu", [&] {
    using score_t = scalar_t;
    using score_acc = at::opmath_type<score_t>;
    const score_t* gate_p = gt.const_data_ptr<score_t>();
    const score_t* grad_gate_p = gg.const_data_ptr<score_t>();
    score_t* d_scores_p = d_scores.mutable_data_ptr<score_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "assign_queries_backward_cpu_q", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const scalar_t* ap = au.const_data_ptr<scalar_t>();
      // d_query_feat[q] = sum_b g[b, q]
      scalar_t* dq = d_query_feat.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, num_queries, rows_grain(width * std::max<int64_t>(batch, 1)), [&](int64_t begin,
                                                                                           int64_t end) {
        std::vector<acc_t> sum(width);
        for (int64_t q = begin; q < end; ++q) {
          std::fill(sum.begin(), sum.end(), acc_t(0));
          for (int64_t b = 0; b < batch; ++b) {
            const scalar_t* row = gp + (b * num_queries + q) * width;
            for (int64_t j = 0; j < width; ++j) sum[j] += static_cast<acc_t>(row[j]);
          }
          for (int64_t j = 0; j < width; ++j) dq[q * width + j] = static_cast<scalar_t>(sum[j]);
        }
      });
      // d_audio[b] = sum_q gate[b, q] g[b, q];  d_scores[b, s] = sum over active q of s of (<g, audio> + g_gate)
      scalar_t* da = d_audio.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, batch, rows_grain(width * num_queries), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> sum(width);
        std::vector<score_acc> marker_sum(num_markers);
        for (int64_t b = begin; b < end; ++b) {
          std::fill(sum.begin(), sum.end(), acc_t(0));
          std::fill(marker_sum.begin(), marker_sum.end(), score_acc(0));
          const scalar_t* a_row = ap + b * width;
          for (int64_t q = 0; q < num_queries; ++q) {
            const int64_t r = b * num_queries + q;
            const scalar_t* row = gp + r * width;
            const auto gate_r = static_cast<acc_t>(static_cast<score_acc>(gate_p[r]));
            for (int64_t j = 0; j < width; ++j) sum[j] += gate_r * static_cast<acc_t>(row[j]);
            const int64_t m = marker_of_query(q, num_markers, dilation);
            if (soft && act[r] && m >= 0) {
              const acc_t dot = lane_dot<acc_t>(row, a_row, width);
              marker_sum[m] += score_grad_term(dot, static_cast<score_acc>(grad_gate_p[r]));
            }
          }
          for (int64_t j = 0; j < width; ++j) da[b * width + j] = static_cast<scalar_t>(sum[j]);
          for (int64_t m = 0; m < num_markers; ++m) {
            d_scores_p[b * num_markers + m] = static_cast<score_t>(marker_sum[m]);
          }
        }
      });
    });
  });
  return {d_scores, d_audio, d_query_feat};
}

}  // namespace coavs

// The CPU kernels of these ops; their schemas are in csrc/torch_bindings.cpp.
TORCH_LIBRARY_IMPL(coavs_C, CPU, m) {
  m.impl("assign_queries", &coavs::assign_queries_cpu);
  m.impl("assign_queries_backward", &coavs::assign_queries_backward_cpu);
}
