// hetadam_adam: one step of the `fixed` Adam update over n elements in memory.
//
// The numerics are specified by host/hetadam/numerics/fixed.py (the golden
// model) and implemented here bit for bit, with integer types only so that the
// same source builds with g++/clang (C simulation, the `hls-csim` backend) and
// with Vitis HLS (the IP). The interface (argument names and order, AXI4-Lite
// offsets, AXI4 master bundles) is the one of host/hetadam/regmap.py, shared
// with the RTL IP.
#pragma once

#include <cstdint>

#include "adam_format.h"

namespace hetadam {

// The format: hw/hls/adam_format.h, generated from host/hetadam/numerics/formats.py. Its widths are
// DEFAULT's unless the build defines them (-DHETADAM_BLOCK=... and so on: the hls-csim backend builds one
// library per format, `make hls FORMAT=...` passes them to Vitis HLS).
constexpr int BLOCK = HETADAM_BLOCK;            // elements per shared exponent
constexpr int G_MAG = HETADAM_G_MAG;            // g_bits - 1
constexpr int M_MAG = HETADAM_M_MAG;            // m_bits - 1
constexpr int S_BITS = HETADAM_S_BITS;          // s_bits
constexpr int EPS_BITS = HETADAM_EPS_BITS;      // eps mantissa width
constexpr int WORK_FRAC = HETADAM_WORK_FRAC;    // aligned moments lie below 2**WORK_FRAC
constexpr int EXTRA_FRAC = HETADAM_EXTRA_FRAC;  // m' and s' keep EXTRA_FRAC more fraction bits
constexpr int COEF_FRAC = HETADAM_COEF_FRAC;    // beta1, beta2 are Q0.COEF_FRAC
constexpr int RATIO_FRAC = HETADAM_RATIO_FRAC;  // the ratio has RATIO_FRAC fraction bits
constexpr int EXP_ZERO = HETADAM_EXP_ZERO;      // exponent of an all-zero block
constexpr int32_t M_MAX = HETADAM_M_MAX;
constexpr int32_t S_MAX = HETADAM_S_MAX;
constexpr int64_t P_MAX = (int64_t(1) << 31) - 1;
constexpr uint32_t MODE_STOCHASTIC = 1;

// The stochastic-rounding LFSR of host/hetadam/numerics/lfsr.py.
constexpr uint32_t INDEX_MUL = HETADAM_INDEX_MUL;

// Largest run the co-simulation exercises: the m_axi `depth` of the element
// arrays (p, g, ms) and of the block array (ex). The testbench allocates
// arrays of at least this size (co-simulation transfers `depth` words).
constexpr uint32_t COSIM_DEPTH = HETADAM_COSIM_DEPTH;
constexpr uint32_t COSIM_DEPTH_BLOCKS = HETADAM_COSIM_DEPTH_BLOCKS;
static_assert(COSIM_DEPTH_BLOCKS * BLOCK == COSIM_DEPTH, "the cosim depth is whole blocks");

}  // namespace hetadam

// The top function (regmap.KERNEL_NAME). C linkage so that the C simulation
// library exports it under its own name. Arguments in regmap.ARGS order; the
// scalars are register values (see host/hetadam/numerics/scalars.py).
extern "C" void hetadam_adam(uint32_t n, uint32_t idx0, uint32_t seed, uint32_t beta1, uint32_t beta2,
                             uint32_t eps_m, int32_t eps_e, uint32_t alpha_m, uint32_t alpha_sh,
                             uint32_t ratio_max, uint32_t lwd, uint32_t mode, uint32_t *sat_count, int32_t *p,
                             const int16_t *g, uint32_t *ms, uint32_t *ex);
