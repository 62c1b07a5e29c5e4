// The widest vector instruction set the CPU kernels may use: the fused conv kernels (one variant
// per ISA) and the vectorised kernel-map loops pick their code with it.
#pragma once

#include <string>

namespace pointsparse {

enum class Isa { kAvx512, kAvx2, kBaseline };

// The widest ISA this CPU runs. POINTSPARSE_CPU_ISA=avx2|baseline caps it, so that one machine can
// test every variant (read on every call: tests set it between calls).
Isa cpu_isa();

std::string isa_name(Isa isa);

}  // namespace pointsparse
