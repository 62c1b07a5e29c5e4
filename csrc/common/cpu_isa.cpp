#include "cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>

namespace pointsparse {

Isa cpu_isa() {
#if defined(__x86_64__) || defined(__i386__)
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  const bool avx512 = false, avx2 = false;
#endif
  const char* cap_env = std::getenv("POINTSPARSE_CPU_ISA");
  const std::string cap = cap_env ? cap_env : "";
  TORCH_CHECK_VALUE(cap.empty() || cap == "avx512" || cap == "avx2" || cap == "baseline",
                    "POINTSPARSE_CPU_ISA must be avx512, avx2 or baseline, got '", cap, "'");
  if (avx512 && (cap.empty() || cap == "avx512")) return Isa::kAvx512;
  if (avx2 && cap != "baseline") return Isa::kAvx2;
  return Isa::kBaseline;
}

std::string isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "baseline";
}

}  // namespace pointsparse
