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

namespace hetadam {

// The DEFAULT format of host/hetadam/numerics/formats.py.
constexpr int BLOCK = 32;        // elements per shared exponent
constexpr int G_MAG = 15;        // g_bits - 1
constexpr int M_MAG = 15;        // m_bits - 1
constexpr int S_BITS = 16;       // s_bits
constexpr int EPS_BITS = 15;     // eps mantissa width
constexpr int WORK_FRAC = 16;    // aligned moments lie below 2**WORK_FRAC
constexpr int EXTRA_FRAC = 10;   // m' and s' keep 10 more fraction bits
constexpr int COEF_FRAC = 20;    // beta1, beta2 are Q0.20
constexpr int RATIO_FRAC = 20;   // the ratio is Q7.20
constexpr int EXP_ZERO = -128;   // exponent of an all-zero block
constexpr int32_t M_MAX = (1 << M_MAG) - 1;
constexpr int32_t S_MAX = (1 << S_BITS) - 1;
constexpr int64_t P_MAX = (int64_t(1) << 31) - 1;
constexpr uint32_t MODE_STOCHASTIC = 1;

// The stochastic-rounding LFSR of host/hetadam/numerics/lfsr.py.
constexpr uint32_t INDEX_MUL = 0x9E3779B9u;

// Largest run the co-simulation exercises: the m_axi `depth` of the element
// arrays (p, g, ms) and of the block array (ex). The testbench allocates
// arrays of at least this size (co-simulation transfers `depth` words).
constexpr uint32_t COSIM_DEPTH = 4128;
constexpr uint32_t COSIM_DEPTH_BLOCKS = COSIM_DEPTH / BLOCK;

}  // namespace hetadam

// The top function (regmap.KERNEL_NAME). C linkage so that the C simulation
// library exports it under its own name. Arguments in regmap.ARGS order; the
// scalars are register values (see host/hetadam/numerics/scalars.py).
extern "C" void hetadam_adam(uint32_t n, uint32_t idx0, uint32_t seed, uint32_t beta1, uint32_t beta2,
                             uint32_t eps_m, int32_t eps_e, uint32_t alpha_m, uint32_t alpha_sh,
                             uint32_t ratio_max, uint32_t lwd, uint32_t mode, uint32_t *sat_count, int32_t *p,
                             const int16_t *g, uint32_t *ms, uint32_t *ex);
