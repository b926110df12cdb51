// The CUDA kernels of csrc/cuda, compiled by the host compiler and run over an emulated grid
// (common/cuda_emulation.h: every block of the grid, every thread of a block as a fiber, __syncthreads and warp
// shuffles included), checked against direct double-precision computations of the op.
//
// The kernels are the very code that nvcc compiles (csrc/cuda/*_kernel.cuh, included by the .cu files), so this
// executes the GPU's index arithmetic: tiles and tails, grid-stride loops, whole-warp early exits, the block
// reduction through shared memory. Inputs live in guarded buffers that end at an inaccessible page, so a read or
// write past the end of any array crashes the test; outputs start as NaN (or 2 for bool), so an element that no
// thread writes fails it.
//
// Run by ctest (csrc/build.json "header_tests"), tests/test_build.py and tests/test_native_device_code.py.
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/assign_queries_kernel.cuh"
#include "cuda/debias_logits_kernel.cuh"

namespace {

int failures = 0;
int checks = 0;
long long blocks_run = 0;

void fail(const std::string& what) {
  std::printf("FAIL %s\n", what.c_str());
  if (++failures == 20) {
    std::printf("stopping after %d failures\n", failures);
    std::exit(1);
  }
}

// A 16-bit storage type like bfloat16 (round to nearest even), so that narrow storage and float arithmetic are
// exercised without ATen. opmath_t<Bf16> is float, as for at::BFloat16.
struct Bf16 {
  uint16_t bits = 0;
  Bf16() = default;
  explicit Bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (std::isnan(f)) {
      bits = 0x7fc0;
      return;
    }
    u += 0x7fff + ((u >> 16) & 1);
    bits = static_cast<uint16_t>(u >> 16);
  }
  operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

template <typename T>
const char* type_name() {
  if (std::is_same<T, double>::value) return "double";
  if (std::is_same<T, float>::value) return "float";
  return "bf16";
}

template <typename T>
double tolerance() {
  if (std::is_same<T, double>::value) return 1e-11;
  if (std::is_same<T, float>::value) return 2e-5;
  return 1.2e-2;
}

template <typename T>
T nan_value() {
  return static_cast<T>(NAN);
}

// n elements that end exactly at a PROT_NONE page (and start after another one).
template <typename T>
class Guarded {
 public:
  explicit Guarded(size_t n) : n_(n) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t data_pages = (n * sizeof(T) + page - 1) / page;
    bytes_ = (data_pages + 2) * page;
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) std::abort();
    base_ = static_cast<char*>(p);
    mprotect(base_, page, PROT_NONE);
    mprotect(base_ + (data_pages + 1) * page, page, PROT_NONE);
    data_ = reinterpret_cast<T*>(base_ + (data_pages + 1) * page - n * sizeof(T));
  }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  ~Guarded() { munmap(base_, bytes_); }
  T* data() { return data_; }
  T& operator[](size_t i) { return data_[i]; }
  size_t size() const { return n_; }
  void fill(T v) {
    for (size_t i = 0; i < n_; ++i) data_[i] = v;
  }

 private:
  size_t n_;
  size_t bytes_;
  char* base_;
  T* data_;
};

template <typename T>
void fill_random(Guarded<T>& buf, std::mt19937& rng, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<T>(dist(rng));
}

// got (storage type) against a double reference.
template <typename T>
void expect_close(T got, double want, const std::string& what) {
  ++checks;
  const double g = static_cast<double>(got);
  if (std::isnan(g)) return fail(what + ": not written (still NaN)");
  if (std::isinf(want)) {
    if (g != want) fail(what + ": got " + std::to_string(g) + " want " + std::to_string(want));
    return;
  }
  const double tol = tolerance<T>() * (1.0 + std::fabs(want));
  if (!(std::fabs(g - want) <= tol)) fail(what + ": got " + std::to_string(g) + " want " + std::to_string(want));
}

template <typename Kernel, typename... Args>
void run(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  coavs::emulation::launch(grid, block, kernel, args...);
  blocks_run += static_cast<long long>(grid.x) * grid.y * grid.z;
}

// ---------------------------------------------------------------------------------------------------------------
// debias_logits

double direct_entropy(const double* x, int n) {
  double m = -INFINITY;
  for (int j = 0; j < n; ++j) m = std::fmax(m, x[j]);
  if (m == -INFINITY) return 0.0;
  double z = 0;
  for (int j = 0; j < n; ++j) z += std::exp(x[j] - m);
  double h = 0;
  for (int j = 0; j < n; ++j) {
    const double p = std::exp(x[j] - m) / z;
    if (p > 0) h -= p * std::log(p);
  }
  return h;
}

template <typename T, bool kBackward>
void check_debias(int64_t mask_numel, int64_t rows, int width, bool uncertainty, std::mt19937& rng) {
  namespace dk = coavs::debias_kernel;
  const std::string label = std::string("debias_logits_kernel<") + type_name<T>() + (kBackward ? ",bwd" : ",fwd") +
                            "> mask=" + std::to_string(mask_numel) + " cls=" + std::to_string(rows) + "x" +
                            std::to_string(width) + (uncertainty ? " uncertainty" : " fixed");
  const size_t cls_numel = static_cast<size_t>(rows) * width;
  Guarded<T> mask(mask_numel), mask_b(mask_numel), mask_out(mask_numel), mask_out_b(kBackward ? mask_numel : 0);
  Guarded<T> cls(cls_numel), cls_b(cls_numel), cls_out(cls_numel), cls_out_b(kBackward ? cls_numel : 0);
  fill_random(mask, rng, -6, 6);
  fill_random(mask_b, rng, -6, 6);
  fill_random(cls, rng, -4, 4);
  fill_random(cls_b, rng, -4, 4);
  if (cls_numel > 2) cls_b[1] = static_cast<T>(-INFINITY);  // an impossible class: probability 0
  for (Guarded<T>* out : {&mask_out, &mask_out_b, &cls_out, &cls_out_b}) out->fill(nan_value<T>());
  const double alpha = 0.75;
  const int64_t mask_blocks = dk::num_mask_blocks(mask_numel);
  const int64_t blocks = mask_blocks + dk::num_class_blocks(rows);
  if (blocks > 0) {
    run(dim3(static_cast<unsigned>(blocks)), dim3(dk::kThreads), dk::debias_logits_kernel<T, kBackward>, mask.data(),
        mask_b.data(), mask_out.data(), kBackward ? mask_out_b.data() : nullptr, mask_numel, mask_blocks, cls.data(),
        cls_b.data(), cls_out.data(), kBackward ? cls_out_b.data() : nullptr, rows, width,
        static_cast<coavs::opmath_t<T>>(alpha), uncertainty);
  }
  for (int64_t i = 0; i < mask_numel; ++i) {
    const double x = static_cast<double>(mask[i]), xb = static_cast<double>(mask_b[i]);
    const double a = uncertainty ? alpha * std::fabs(2.0 / (1.0 + std::exp(-xb)) - 1.0) : alpha;
    const std::string at = label + " mask[" + std::to_string(i) + "]";
    if (kBackward) {
      expect_close(mask_out[i], (1 + a) * x, at + " dx");
      expect_close(mask_out_b[i], -a * x, at + " dx_b");
    } else {
      expect_close(mask_out[i], (1 + a) * x - a * xb, at);
    }
  }
  std::vector<double> row(width);
  for (int64_t r = 0; r < rows; ++r) {
    for (int j = 0; j < width; ++j) row[j] = static_cast<double>(cls_b[r * width + j]);
    double a = alpha;
    if (uncertainty && width > 1) {
      const double c = 1.0 - direct_entropy(row.data(), width) / std::log(static_cast<double>(width));
      a = alpha * std::fmin(1.0, std::fmax(0.0, c));
    }
    for (int j = 0; j < width; ++j) {
      const size_t i = static_cast<size_t>(r) * width + j;
      const double x = static_cast<double>(cls[i]);
      const std::string at = label + " cls[" + std::to_string(r) + "," + std::to_string(j) + "]";
      if (kBackward) {
        expect_close(cls_out[i], (1 + a) * x, at + " dx");
        expect_close(cls_out_b[i], -a * x, at + " dx_b");
      } else {
        expect_close(cls_out[i], (1 + a) * x - a * row[j], at);
      }
    }
  }
}

template <typename T>
void debias_suite(std::mt19937& rng) {
  // (mask elements, class rows, classes): empty parts, one element, a tile +- 1 (2048 = 256 threads x 8), several
  // tiles with a tail; rows below, at and above a block's 8 rows; widths below, at and above a warp.
  const struct {
    int64_t mask_numel, rows;
    int width;
  } shapes[] = {{0, 1, 1}, {1, 0, 3}, {17, 3, 5}, {2047, 8, 32}, {2048, 9, 33}, {3 * 2048 + 17, 17, 72}, {5, 2, 100}};
  for (const auto& s : shapes) {
    for (bool uncertainty : {false, true}) {
      check_debias<T, false>(s.mask_numel, s.rows, s.width, uncertainty, rng);
      check_debias<T, true>(s.mask_numel, s.rows, s.width, uncertainty, rng);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// assign_queries

struct AssignShape {
  int64_t batch, markers, dilation, queries, width;
};

std::string shape_label(const AssignShape& s) {
  return "B=" + std::to_string(s.batch) + " S=" + std::to_string(s.markers) + " d=" + std::to_string(s.dilation) +
         " Q=" + std::to_string(s.queries) + " D=" + std::to_string(s.width);
}

// Scores per sample, quantised to 1/16 so that ties are common: sample b % 4 == 0 has markers over the
// threshold 0.5, b % 4 == 1 has none (fallback to the first top marker, which is tied), b % 4 == 2 is flat,
// b % 4 == 3 has one top marker below the threshold at (13 b + 20) % S (a lane >= 16 for S >= 40: the warp
// reduction must reach every lane).
template <typename score_t>
void fill_scores(Guarded<score_t>& scores, const AssignShape& s, std::mt19937& rng) {
  std::uniform_int_distribution<int> level(0, 15);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t m = 0; m < s.markers; ++m) {
      double v = level(rng) / 16.0;
      if (b % 4 == 1) v = std::fmin(v, 0.375);
      if (b % 4 == 2) v = 0.25;
      if (b % 4 == 3) v = m == (13 * b + 20) % s.markers ? 0.3125 : 0.125;
      scores[b * s.markers + m] = static_cast<score_t>(v);
    }
  }
}

// The direct forward: gate (as double) and active for every (b, q).
template <typename score_t>
void direct_gates(Guarded<score_t>& scores, const AssignShape& s, double threshold, score_t dormant, bool soft,
                  std::vector<double>& gate, std::vector<char>& active) {
  gate.assign(s.batch * s.queries, 0);
  active.assign(s.batch * s.queries, 0);
  for (int64_t b = 0; b < s.batch; ++b) {
    const score_t* row = scores.data() + b * s.markers;
    bool any = false;
    int64_t top = 0;
    for (int64_t m = 0; m < s.markers; ++m) {
      any = any || static_cast<double>(row[m]) >= threshold;
      if (static_cast<double>(row[m]) > static_cast<double>(row[top])) top = m;
    }
    for (int64_t q = 0; q < s.queries; ++q) {
      const int64_t m = q < s.markers * s.dilation ? q / s.dilation : -1;
      const bool on = m >= 0 && (static_cast<double>(row[m]) >= threshold || (!any && m == top));
      gate[b * s.queries + q] = on ? (soft ? static_cast<double>(row[m]) : 1.0) : static_cast<double>(dormant);
      active[b * s.queries + q] = on;
    }
  }
}

template <typename scalar_t, typename score_t>
void check_assign_forward(const AssignShape& s, bool soft, std::mt19937& rng) {
  namespace ak = coavs::assign_kernel;
  const std::string label = std::string("assign_queries_kernel<") + type_name<scalar_t>() + "," +
                            type_name<score_t>() + "> " + shape_label(s) + (soft ? " soft" : " hard");
  Guarded<score_t> scores(s.batch * s.markers), gate(s.batch * s.queries);
  Guarded<scalar_t> audio(s.batch * s.width), feat(s.queries * s.width), queries(s.batch * s.queries * s.width);
  Guarded<bool> active(s.batch * s.queries);
  fill_scores(scores, s, rng);
  fill_random(audio, rng, -2, 2);
  fill_random(feat, rng, -2, 2);
  queries.fill(nan_value<scalar_t>());
  gate.fill(nan_value<score_t>());
  std::memset(static_cast<void*>(active.data()), 2, active.size());
  const double threshold = 0.5;
  const score_t dormant = static_cast<score_t>(0.1);
  const dim3 grid(static_cast<unsigned>(ak::ceil_div(s.queries, ak::kRowsPerBlock)), static_cast<unsigned>(s.batch));
  run(grid, dim3(ak::kThreads), ak::assign_queries_kernel<scalar_t, score_t>, scores.data(), audio.data(),
      feat.data(), queries.data(), gate.data(), active.data(), s.markers, s.queries, s.width, s.dilation,
      static_cast<coavs::opmath_t<score_t>>(threshold), dormant, soft);
  std::vector<double> want_gate;
  std::vector<char> want_active;
  direct_gates(scores, s, threshold, dormant, soft, want_gate, want_active);
  for (int64_t r = 0; r < s.batch * s.queries; ++r) {
    const std::string at = label + " row " + std::to_string(r);
    unsigned char act;
    std::memcpy(&act, reinterpret_cast<unsigned char*>(active.data()) + r, 1);
    ++checks;
    if (act != static_cast<unsigned char>(want_active[r])) fail(at + ": active " + std::to_string(act));
    ++checks;
    if (!(static_cast<double>(gate[r]) == want_gate[r])) {
      fail(at + ": gate " + std::to_string(static_cast<double>(gate[r])) + " want " + std::to_string(want_gate[r]));
    }
    const int64_t b = r / s.queries, q = r % s.queries;
    for (int64_t j = 0; j < s.width; ++j) {
      const double want = static_cast<double>(feat[q * s.width + j]) +
                          want_gate[r] * static_cast<double>(audio[b * s.width + j]);
      expect_close(queries[r * s.width + j], want, at + " queries[" + std::to_string(j) + "]");
    }
  }
}

template <typename scalar_t, typename score_t>
void check_assign_backward(const AssignShape& s, bool soft, std::mt19937& rng) {
  namespace ak = coavs::assign_kernel;
  const std::string label = std::string("assign_queries_backward_kernel<") + type_name<scalar_t>() + "," +
                            type_name<score_t>() + "> " + shape_label(s) + (soft ? " soft" : " hard");
  Guarded<score_t> scores(s.batch * s.markers), gate(s.batch * s.queries), grad_gate(s.batch * s.queries);
  Guarded<score_t> d_scores(s.batch * s.markers);
  Guarded<scalar_t> grad(s.batch * s.queries * s.width), audio(s.batch * s.width);
  Guarded<scalar_t> d_feat(s.queries * s.width), d_audio(s.batch * s.width);
  Guarded<bool> active(s.batch * s.queries);
  fill_scores(scores, s, rng);
  std::vector<double> gate_v;
  std::vector<char> active_v;
  direct_gates(scores, s, 0.5, static_cast<score_t>(0.1), soft, gate_v, active_v);
  for (size_t r = 0; r < gate_v.size(); ++r) {
    gate[r] = static_cast<score_t>(gate_v[r]);
    active[r] = active_v[r] != 0;
  }
  fill_random(grad, rng, -1, 1);
  fill_random(grad_gate, rng, -1, 1);
  fill_random(audio, rng, -2, 2);
  d_scores.fill(nan_value<score_t>());
  d_feat.fill(nan_value<scalar_t>());
  d_audio.fill(nan_value<scalar_t>());
  const ak::BackwardBlocks parts = ak::backward_blocks(s.batch, s.queries, s.width, s.markers);
  run(dim3(static_cast<unsigned>(parts.total())), dim3(ak::kThreads),
      ak::assign_queries_backward_kernel<scalar_t, score_t>, grad.data(), grad_gate.data(), audio.data(), gate.data(),
      active.data(), d_feat.data(), d_audio.data(), d_scores.data(), s.batch, s.queries, s.width, s.markers,
      s.dilation, soft, parts.feat, parts.audio);
  for (int64_t q = 0; q < s.queries; ++q) {
    for (int64_t j = 0; j < s.width; ++j) {
      double want = 0;
      for (int64_t b = 0; b < s.batch; ++b) want += static_cast<double>(grad[(b * s.queries + q) * s.width + j]);
      expect_close(d_feat[q * s.width + j], want, label + " d_query_feat");
    }
  }
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t j = 0; j < s.width; ++j) {
      double want = 0;
      for (int64_t q = 0; q < s.queries; ++q) {
        want += static_cast<double>(gate[b * s.queries + q]) *
                static_cast<double>(grad[(b * s.queries + q) * s.width + j]);
      }
      expect_close(d_audio[b * s.width + j], want, label + " d_audio");
    }
    for (int64_t m = 0; m < s.markers; ++m) {
      double want = 0;
      for (int64_t q = m * s.dilation; soft && q < (m + 1) * s.dilation; ++q) {
        if (!active_v[b * s.queries + q]) continue;
        for (int64_t j = 0; j < s.width; ++j) {
          want += static_cast<double>(grad[(b * s.queries + q) * s.width + j]) *
                  static_cast<double>(audio[b * s.width + j]);
        }
        want += static_cast<double>(grad_gate[b * s.queries + q]);
      }
      expect_close(d_scores[b * s.markers + m], want, label + " d_scores[" + std::to_string(m) + "]");
    }
  }
}

template <typename scalar_t, typename score_t>
void assign_suite(std::mt19937& rng) {
  // One query; a partial query tile (Q % 8 != 0) with queries beyond S*d; S > 256 (the threads' stride loop over
  // markers); D > 256 with a partial tile (the threads' stride loop over rows x D); dilation 3.
  const AssignShape shapes[] = {{1, 1, 1, 1, 1}, {2, 3, 2, 7, 5}, {4, 5, 1, 9, 33}, {4, 300, 1, 301, 3},
                                {1, 4, 3, 13, 263}, {4, 40, 2, 85, 17}};
  for (const AssignShape& s : shapes) {
    for (bool soft : {false, true}) {
      check_assign_forward<scalar_t, score_t>(s, soft, rng);
      check_assign_backward<scalar_t, score_t>(s, soft, rng);
    }
  }
}

// The emulation itself refuses what a GPU would hang on: a full-warp shuffle after some lanes returned.
void broken_kernel(float* out) {
  if (threadIdx.x % 32 == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

void check_emulation_detects_divergent_shuffle() {
  ++checks;
  std::vector<float> out(64);
  try {
    coavs::emulation::launch(dim3(1), dim3(64), broken_kernel, out.data());
    fail("a shuffle with an exited lane was not detected");
  } catch (const std::logic_error&) {
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  check_emulation_detects_divergent_shuffle();
  debias_suite<double>(rng);
  debias_suite<float>(rng);
  debias_suite<Bf16>(rng);
  assign_suite<double, double>(rng);
  assign_suite<float, float>(rng);
  assign_suite<Bf16, float>(rng);
  assign_suite<float, Bf16>(rng);
  const auto& st = coavs::emulation::state();
  std::printf("test_device_code: %d checks, %lld emulated blocks, %lld block barriers, %lld lane shuffles\n", checks,
              blocks_run, st.barriers, st.shuffles);
  if (st.barriers == 0 || st.shuffles == 0) fail("the block barrier or the warp shuffles never ran");
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("test_device_code: all checks passed\n");
  return 0;
}
