// The instruction sets coavs' CPU kernels may run: the widest the CPU has, capped by the environment variable
// COAVS_CPU_CAPABILITY ("default": the portable loops; "avx2": no AVX-512; any other value or none: no cap).
// Read once per process; every kernel that picks an ISA copy asks here, so one variable caps them all.
#pragma once

#include <cstdlib>
#include <cstring>

namespace coavs {
namespace cpu {

enum class Isa { kBase, kAvx2, kAvx512 };  // kAvx2: AVX2 + FMA + F16C; kAvx512: F, DQ, BW and VL as well

static inline Isa cpu_isa() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  static const Isa isa = [] {
    const char* forced = std::getenv("COAVS_CPU_CAPABILITY");
    if (forced != nullptr && std::strcmp(forced, "default") == 0) return Isa::kBase;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c")) {
      return Isa::kBase;
    }
    const bool capped = forced != nullptr && std::strcmp(forced, "avx2") == 0;
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    return avx512 && !capped ? Isa::kAvx512 : Isa::kAvx2;
  }();
  return isa;
#else
  return Isa::kBase;
#endif
}

}  // namespace cpu
}  // namespace coavs
