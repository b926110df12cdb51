// matching_cost on the CPU: at::parallel_for over (sample, query) rows. Each row converts its mask logits once,
// then takes two dot products over the points with every allowed ground truth of its sample.
// The arithmetic is csrc/common/matching_cost.h.
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/matching_cost.h"
#include "common/tensor_checks.h"

namespace coavs {
namespace {

using matching::CostWeights;
using matching::LogSumExp;

// sum_p x[p] t[p] and sum_p s[p] t[p] in kLanes independent partial sums (the compiler vectorises the lanes;
// the partial sums also keep long sums accurate).
template <typename T>
void two_dots(const T* x, const T* s, const T* t, int64_t n, T& xt, T& st) {
  constexpr int kLanes = 16;
  T ax[kLanes] = {}, as[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      ax[l] += x[i + l] * t[i + l];
      as[l] += s[i + l] * t[i + l];
    }
  }
  T rx = 0, rs = 0;
  for (int l = 0; l < kLanes; ++l) {
    rx += ax[l];
    rs += as[l];
  }
  for (; i < n; ++i) {
    rx += x[i] * t[i];
    rs += s[i] * t[i];
  }
  xt = rx;
  st = rs;
}

}  // namespace

at::Tensor matching_cost_cpu(const at::Tensor& mask_logits, const at::Tensor& target_masks,
                             const at::Tensor& class_logits, const at::Tensor& target_labels,
                             const at::Tensor& allowed, const at::Tensor& num_targets, double cost_class,
                             double cost_mask, double cost_dice) {
  check_matching_inputs(mask_logits, target_masks, class_logits, target_labels, allowed, num_targets);
  const auto acc_type = opmath_scalar_type(mask_logits.scalar_type());
  const int64_t batch = mask_logits.size(0), num_queries = mask_logits.size(1), num_points = mask_logits.size(2);
  const int64_t num_gt = target_masks.size(1), num_classes = class_logits.size(2);
  auto cost = at::empty({batch, num_queries, num_gt}, mask_logits.options().dtype(acc_type));
  const auto labels = target_labels.contiguous(), counts = num_targets.contiguous();
  if (cost.numel() == 0) return cost;

  const auto x = mask_logits.contiguous();
  // Small next to the logits (G <= a few per sample, K+1 per query): converted once to the arithmetic type.
  const auto t = target_masks.to(acc_type).contiguous();
  const auto c = class_logits.to(acc_type).contiguous();
  const auto allow = allowed.contiguous();

  AT_DISPATCH_FLOATING_TYPES(acc_type, "matching_cost_cpu_acc", [&] {
    using acc_t = scalar_t;
    const acc_t* tp = t.const_data_ptr<acc_t>();
    const acc_t* cp = c.const_data_ptr<acc_t>();
    const int64_t* lab = labels.const_data_ptr<int64_t>();
    const int64_t* cnt = counts.const_data_ptr<int64_t>();
    const bool* ok = allow.const_data_ptr<bool>();
    acc_t* out = cost.mutable_data_ptr<acc_t>();
    const CostWeights<acc_t> weights{static_cast<acc_t>(cost_class), static_cast<acc_t>(cost_mask),
                                     static_cast<acc_t>(cost_dice)};

    // sum_p t for every ground truth.
    std::vector<acc_t> target_sum(batch * num_gt);
    at::parallel_for(0, batch * num_gt, std::max<int64_t>(1, (1 << 16) / num_points), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        double sum = 0;  // long sums of float terms: double keeps them exact enough for any P
        for (int64_t p = 0; p < num_points; ++p) sum += tp[r * num_points + p];
        // A NaN or ±inf value makes every pair of this ground truth NaN (see the policy in the header).
        target_sum[r] = std::isfinite(sum) ? static_cast<acc_t>(sum) : std::numeric_limits<acc_t>::quiet_NaN();
      }
    });

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "matching_cost_cpu", [&] {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const int64_t work_per_row = num_points * (num_gt + 1);
      at::parallel_for(0, batch * num_queries, std::max<int64_t>(1, (1 << 16) / work_per_row),
                       [&](int64_t begin, int64_t end) {
        std::vector<acc_t> logits(num_points), probs(num_points);
        for (int64_t r = begin; r < end; ++r) {
          const int64_t b = r / num_queries;
          acc_t* row_out = out + r * num_gt;
          // The value policy (see the header): a count outside [0, G] makes every column real and every allowed
          // pair NaN; a real ground truth's label outside [0, K+1) makes its allowed pairs NaN.
          const bool count_ok = cnt[b] >= 0 && cnt[b] <= num_gt;
          const int64_t real = count_ok ? cnt[b] : num_gt;
          bool any_allowed = false;
          for (int64_t g = 0; g < real; ++g) any_allowed = any_allowed || ok[r * num_gt + g];
          if (!any_allowed) {
            std::fill(row_out, row_out + num_gt, std::numeric_limits<acc_t>::infinity());
            continue;
          }
          LogSumExp<acc_t> lse;
          const acc_t* class_row = cp + r * num_classes;
          for (int64_t k = 0; k < num_classes; ++k) lse.add(class_row[k]);
          double softplus_total = 0, sigmoid_total = 0;
          bool finite_row = true;
          for (int64_t p = 0; p < num_points; ++p) {
            const auto v = static_cast<acc_t>(xp[r * num_points + p]);
            acc_t soft;
            finite_row = finite_row && std::isfinite(v);
            logits[p] = v;
            sigmoid_softplus(v, probs[p], soft);
            softplus_total += soft;
            sigmoid_total += probs[p];
          }
          // A NaN or ±inf mask logit makes every pair of this query NaN (see the policy in the header).
          const auto softplus_sum = finite_row ? static_cast<acc_t>(softplus_total)
                                               : std::numeric_limits<acc_t>::quiet_NaN();
          const auto sigmoid_sum = static_cast<acc_t>(sigmoid_total);
          for (int64_t g = 0; g < num_gt; ++g) {
            if (g >= real || !ok[r * num_gt + g]) {
              row_out[g] = std::numeric_limits<acc_t>::infinity();
              continue;
            }
            const int64_t label = lab[b * num_gt + g];
            if (!count_ok || label < 0 || label >= num_classes) {
              row_out[g] = std::numeric_limits<acc_t>::quiet_NaN();
              continue;
            }
            acc_t logit_target = 0, sigmoid_target = 0;
            two_dots(logits.data(), probs.data(), tp + (b * num_gt + g) * num_points, num_points, logit_target,
                     sigmoid_target);
            const acc_t prob = lse.probability(class_row[label]);
            row_out[g] = matching::pair_cost(prob, softplus_sum, logit_target, sigmoid_sum, sigmoid_target,
                                             target_sum[b * num_gt + g], num_points, weights);
          }
        }
      });
    });
  });
  return cost;
}

}  // namespace coavs

// The CPU kernels of these ops; their schemas are in csrc/torch_bindings.cpp.
TORCH_LIBRARY_IMPL(coavs_C, CPU, m) {
  m.impl("matching_cost", &coavs::matching_cost_cpu);
}
