// Hand-vectorised CPU paths with a runtime CPU-feature check (x86-64 with GCC or Clang).
//
// Why not global -mavx2 flags: the whole extension would then need AVX2, and a wheel would die with SIGILL on an
// older CPU. Why not at::vec: without CPU_CAPABILITY_AVX2 (which needs the global flags, one copy of each source
// per capability as ATen builds them) at::vec falls back to its scalar emulation. So only the functions marked
// COAVS_TARGET_AVX2 use AVX2 + F16C instructions, and callers run them only when use_avx2() says the CPU has
// both; every other CPU takes the portable scalar loop. COAVS_CPU_CAPABILITY=default in the environment forces
// the scalar loops (cpu_isa.h, read once per process), which the tests use to compare both paths.
//
// Everything here has internal linkage (static or anonymous namespace), so no AVX2 copy of an inline function
// can be chosen by the linker for a caller on the portable path. The helpers only load, convert and store;
// the arithmetic stays in the kernels, which use separate multiplies and adds (no FMA: the "fma" target is not
// enabled, so the compiler cannot contract them) and round exactly like their scalar loops.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#include "cpu/cpu_isa.h"

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define COAVS_HAVE_AVX2_KERNELS 1
#include <immintrin.h>
#define COAVS_TARGET_AVX2 __attribute__((target("avx2,f16c")))
#else
#define COAVS_HAVE_AVX2_KERNELS 0
#endif

namespace coavs {
namespace cpu {

// True when the CPU has AVX2 and F16C (cpu_isa.h; COAVS_CPU_CAPABILITY=default says no).
static inline bool use_avx2() {
#if COAVS_HAVE_AVX2_KERNELS
  return cpu_isa() != Isa::kBase;
#else
  return false;
#endif
}

// The element types with an AVX2 path (float arithmetic on 8 lanes).
template <typename T>
constexpr bool has_avx2_path() {
  return std::is_same<T, float>::value || std::is_same<T, c10::Half>::value ||
         std::is_same<T, c10::BFloat16>::value;
}

#if COAVS_HAVE_AVX2_KERNELS
namespace {

// 8 consecutive elements as 8 floats.
COAVS_TARGET_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
COAVS_TARGET_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
COAVS_TARGET_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// 8 floats rounded to nearest-even into 8 consecutive elements (NaN as c10 writes it for bfloat16).
COAVS_TARGET_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
COAVS_TARGET_AVX2 inline void store8(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
COAVS_TARGET_AVX2 inline void store8(c10::BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc0), nan);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

// The last n % 8 elements go through an 8-element stack copy, so they round exactly like the others.
template <typename T>
struct Tail8 {
  T data[8];
  COAVS_TARGET_AVX2 explicit Tail8(const T* src, int64_t count) {
    std::memset(static_cast<void*>(data), 0, sizeof(data));
    std::memcpy(static_cast<void*>(data), src, sizeof(T) * count);
  }
};

}  // namespace
#endif

}  // namespace cpu
}  // namespace coavs
