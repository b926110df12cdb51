// Plain C++ checks of the host/device arithmetic of assign_queries and matching_cost (csrc/common).
#include <cmath>
#include <cstdio>
#include <vector>

#include "common/assign_queries.h"
#include "common/matching_cost.h"

static int failures = 0;

static void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL %s\n", what);
    ++failures;
  }
}

static void expect_near(double got, double want, double tol, const char* what) {
  if (!(std::fabs(got - want) <= tol)) {
    std::printf("FAIL %s: got %.12g want %.12g\n", what, got, want);
    ++failures;
  }
}

// The presence state of a whole row, by add() alone and by merging two interleaved halves.
static void presence_of(const std::vector<float>& row, float threshold, coavs::PresenceState<float>& whole,
                        coavs::PresenceState<float>& merged) {
  coavs::PresenceState<float> even, odd;
  for (size_t i = 0; i < row.size(); ++i) {
    whole.add(row[i], static_cast<int64_t>(i), threshold);
    (i % 2 ? odd : even).add(row[i], static_cast<int64_t>(i), threshold);
  }
  odd.merge(even);  // merge order must not matter for ties
  merged = odd;
}

int main() {
  // Dilated layout: S = 3, d = 2, Q = 7.
  const int64_t want_marker[7] = {0, 0, 1, 1, 2, 2, -1};
  for (int64_t q = 0; q < 7; ++q) expect(coavs::marker_of_query(q, 3, 2) == want_marker[q], "marker_of_query");

  // Some marker reaches the threshold: no fallback.
  coavs::PresenceState<float> whole, merged;
  presence_of({0.1f, 0.5f, 0.4f, 0.2f}, 0.4f, whole, merged);
  expect(whole.fallback_marker() == -1 && merged.fallback_marker() == -1, "threshold reached: no fallback");
  expect(coavs::marker_present(0.4f, 0.4f, 2, -1), "score == threshold is present");
  expect(!coavs::marker_present(0.39f, 0.4f, 3, -1), "below threshold is absent");
  expect(!coavs::marker_present(0.9f, 0.4f, -1, -1), "a query without a marker is never present");

  // None reaches it: the top marker, the first one on ties, whatever the merge order.
  coavs::PresenceState<float> whole2, merged2;
  presence_of({0.1f, 0.3f, 0.2f, 0.3f, 0.05f}, 0.4f, whole2, merged2);
  expect(whole2.fallback_marker() == 1, "fallback = first top marker (add)");
  expect(merged2.fallback_marker() == 1, "fallback = first top marker (merge)");
  expect(coavs::marker_present(0.3f, 0.4f, 1, 1) && !coavs::marker_present(0.3f, 0.4f, 3, 1),
         "only the fallback marker is present");
  coavs::PresenceState<float> empty, one;
  one.add(0.2f, 4, 0.4f);
  empty.merge(one);
  expect(empty.fallback_marker() == 4, "merging into an empty state");

  expect(coavs::gate_value(true, false, 0.7f, 0.1f) == 1.0f, "hard gate");
  expect(coavs::gate_value(true, true, 0.7f, 0.1f) == 0.7f, "soft gate");
  expect(coavs::gate_value(false, true, 0.7f, 0.1f) == 0.1f, "dormant gate");
  expect_near(coavs::prompted_query(1.0, 0.5, 4.0), 3.0, 0, "prompted query");

  // matching_cost arithmetic.
  for (double x : {-80.0, -5.0, -1e-3, 0.0, 2.5, 40.0}) {
    expect_near(coavs::softplus(x), std::log1p(std::exp(-std::fabs(x))) + std::fmax(x, 0.0), 1e-12,
                "softplus");
    expect_near(coavs::sigmoid(x), 1.0 / (1.0 + std::exp(-x)), 1e-15, "sigmoid");
    double sig = 0, soft = 0;
    coavs::sigmoid_softplus(x, sig, soft);
    expect_near(sig, 1.0 / (1.0 + std::exp(-x)), 1e-15, "sigmoid from one exp");
    expect_near(soft, coavs::softplus(x), 1e-13, "softplus from one exp");
  }
  const std::vector<double> logits = {0.5, -2.0, 3.0, 3.0, -INFINITY};
  coavs::matching::LogSumExp<double> lse;
  double direct = 0;
  for (double v : logits) {
    lse.add(v);
    direct += std::exp(v);
  }
  expect_near(lse.value(), std::log(direct), 1e-12, "log-sum-exp");
  expect_near(coavs::matching::class_probability(3.0, lse.value()), std::exp(3.0) / direct, 1e-12, "softmax");

  // pair_cost from sums equals the direct Mask2Former formulas.
  const std::vector<double> x = {2.0, -1.0, 0.5, -3.0}, t = {1.0, 0.0, 0.25, 1.0};
  double sp = 0, xt = 0, sg = 0, st = 0, ts = 0, ce = 0;
  for (size_t p = 0; p < x.size(); ++p) {
    const double s = 1.0 / (1.0 + std::exp(-x[p]));
    sp += coavs::softplus(x[p]);
    xt += x[p] * t[p];
    sg += s;
    st += s * t[p];
    ts += t[p];
    ce += -t[p] * std::log(s) - (1 - t[p]) * std::log(1 - s);
  }
  const double dice = 1 - (2 * st + 1) / (sg + ts + 1);
  const coavs::matching::CostWeights<double> w{2.0, 5.0, 5.0};
  expect_near(coavs::matching::pair_cost(0.3, sp, xt, sg, st, ts, 4, w), -2.0 * 0.3 + 5.0 * ce / 4 + 5.0 * dice,
              1e-12, "pair cost");

  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
