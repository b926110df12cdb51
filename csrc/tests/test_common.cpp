// Plain C++ checks of the host/device arithmetic in csrc/common (run by ctest and by tests/test_build.py).
#include <cmath>
#include <cstdio>
#include <vector>

#include "common/debias_logits.h"
#include "common/semantic_inference.h"

static int failures = 0;

static void expect_near(double got, double want, double tol, const char* what) {
  if (!(std::fabs(got - want) <= tol)) {
    std::printf("FAIL %s: got %.9g want %.9g\n", what, got, want);
    ++failures;
  }
}

static double direct_entropy(const std::vector<double>& x) {
  double m = -INFINITY;
  for (double v : x) m = std::fmax(m, v);
  double z = 0;
  for (double v : x) z += std::exp(v - m);
  double h = 0;
  for (double v : x) {
    const double p = std::exp(v - m) / z;
    if (p > 0) h -= p * std::log(p);
  }
  return h;
}

int main() {
  expect_near(coavs::debias_value(2.0f, 0.5f, 1.0f), 3.5, 1e-6, "fixed alpha=1 is 2x - x_b");
  expect_near(coavs::debias_value(2.0, 0.5, 0.0), 2.0, 0, "alpha=0 is identity");
  for (double m : {-30.0, -2.0, -0.1, 0.0, 0.3, 5.0, 40.0}) {
    const double sig = 1.0 / (1.0 + std::exp(-m));
    expect_near(coavs::mask_confidence(m), std::fabs(2 * sig - 1), 1e-12, "mask confidence = |2 sigmoid - 1|");
  }
  // Streaming entropy equals the direct formula, including when the maximum arrives late and on merge.
  const std::vector<double> row = {-3.0, 0.5, 2.0, 2.0, -1e3, 7.5, 1.0};
  coavs::EntropyState<double> whole, left, right;
  for (size_t i = 0; i < row.size(); ++i) {
    whole.add(row[i]);
    (i % 2 ? left : right).add(row[i]);
  }
  left.merge(right);
  expect_near(whole.entropy(), direct_entropy(row), 1e-12, "streaming entropy");
  expect_near(left.entropy(), direct_entropy(row), 1e-12, "merged entropy");
  coavs::EntropyState<float> with_neg_inf;
  with_neg_inf.add(-INFINITY);
  with_neg_inf.add(1.0f);
  with_neg_inf.add(1.0f);
  expect_near(with_neg_inf.entropy(), std::log(2.0), 1e-6, "-inf logits contribute nothing");
  coavs::EntropyState<double> uniform;
  for (int i = 0; i < 71; ++i) uniform.add(0.25);
  expect_near(coavs::class_confidence(uniform.entropy(), 71), 0.0, 1e-12, "uniform row has zero confidence");
  expect_near(coavs::class_confidence(0.0, 1), 1.0, 0, "single class is confident");
  // semantic_inference: F.interpolate's align_corners=False taps (2 -> 4: scale 0.5, src = 0.5 (i + 0.5) - 0.5).
  const coavs::LinearTap t0 = coavs::bilinear_tap(0, 2, 4), t1 = coavs::bilinear_tap(1, 2, 4);
  const coavs::LinearTap t3 = coavs::bilinear_tap(3, 2, 4), same = coavs::bilinear_tap(5, 9, 9);
  expect_near(t0.i0 * 10 + t0.i1 + t0.l1, 1.0, 0, "first output clamps src to 0");
  expect_near(t1.i0 * 10 + t1.i1 + t1.l1, 1.25, 0, "src 0.25 mixes 0 and 1");
  expect_near(t3.i0 * 10 + t3.i1 + t3.l0, 11.75, 0, "last output stays on the last input");
  expect_near(same.i0 * 10 + same.i1 + same.l1, 55.0, 0, "equal sizes copy");
  expect_near(coavs::bilinear_mix(1.f, 2.f, 3.f, 4.f, t1, t1), 0.75 * (1 + 0.25) + 0.25 * (3 + 0.25), 1e-6,
              "bilinear mix");
  expect_near(coavs::debias_overall_score(0.6f, 0.9f, 1.0f, true), 1.8 * 0.6 - 0.8 * 0.9, 1e-6,
              "overall score debias, uncertainty weight |2 S_b - 1|");
  expect_near(coavs::debias_mask_logit(2.0f, 0.0f, 1.0f, true), 2.0, 0, "an unsure biased logit removes nothing");
  if (failures) return 1;
  std::printf("test_common: all checks passed\n");
  return 0;
}
