/*
 * hetadam: the Adam update in OpenCL C, one source for GPUs (through pyopencl,
 * host/hetadam/backends/opencl.py), the PoCL CPU device and FPGA OpenCL flows
 * (Intel FPGA SDK for OpenCL / oneAPI, Xilinx Vitis).
 *
 * Two kernels:
 *
 *   hetadam_adam_fp32  float32 Adam / AdamW as torch.optim computes it, bit for
 *                      bit with torch's fused CPU kernel (torch._fused_adam_):
 *                      the same operations in the same order in IEEE single
 *                      precision, fused multiply-adds exactly where the compiled
 *                      torch kernel has them (weight decay, the lerp of exp_avg,
 *                      exp_avg_sq) and nowhere else (FP_CONTRACT OFF). (torch
 *                      rounds the last numel % 16 elements of a tensor in a
 *                      scalar loop, which can differ from its vector code by
 *                      an ulp; this kernel matches the vector code everywhere.)
 *   hetadam_adam       the `fixed` update, bit-exact with the golden model
 *                      host/hetadam/numerics/fixed.py, on the kernel memory
 *                      layout of host/hetadam/regmap.py (p int32, g int16,
 *                      ms uint32 = M | S << 16, ex uint32 = eg | em << 8 | es << 16).
 *
 * Both read the committed state and write the new state into separate
 * buffers, so the host can commit (swap) or discard a step. The fp32 kernel
 * may also update in place (the *_out arguments the same buffers as *_in:
 * each element is read before it is written), which saves the memory traffic
 * of fresh output lines when a step need not be undone.
 *
 * Every kernel is a loop over "units" (VEC floats for fp32, one block of
 * FX_BLOCK elements for fixed) with a grid stride: an NDRange launch with one
 * work-item per unit runs each body once, a single work-item launch (an FPGA
 * task, global size 1) pipelines the loop over all units.
 *
 * Build options (-D):
 *   HETADAM_VEC=n          floats per fp32 work-item: 1, 2, 4, 8 or 16 (default 8;
 *                          PoCL 3.0 on CPUs without AVX-512 fails on 16)
 *   HETADAM_NO_FMA         fp32 without fused multiply-adds (see ADAM_FMA)
 *   HETADAM_FP64           the device has cl_khr_fp64: the fixed kernel takes the
 *                          integer square root and quotient from correctly rounded
 *                          double sqrt and division (exact for its operand ranges,
 *                          see fixed.py); otherwise integer arithmetic only
 *   HETADAM_BLOCK, HETADAM_G_BITS, HETADAM_M_BITS, HETADAM_S_BITS
 *                          the fixed format's widths (default: DEFAULT's); the
 *                          format's constants are in adam_format.h, generated
 *                          from host/hetadam/numerics/formats.py (build with
 *                          -I hw/opencl, or put its text before this file's, as
 *                          host/hetadam/backends/opencl.py does)
 *   HETADAM_WG=n           __attribute__((reqd_work_group_size(n, 1, 1)))
 *   HETADAM_INTEL_FPGA     single work-item kernels (max_global_work_dim(0)),
 *                          loops pipelined at II=1
 *   HETADAM_XILINX         single work-item kernels (reqd_work_group_size(1,1,1)),
 *                          loops pipelined with xcl_pipeline_loop
 */

#pragma OPENCL FP_CONTRACT OFF

#ifdef HETADAM_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

/* ---- target attributes ------------------------------------------------ */

#if defined(HETADAM_INTEL_FPGA)
#define HETADAM_KERNEL __kernel __attribute__((max_global_work_dim(0)))
#define HETADAM_PIPELINE _Pragma("ii 1")
#elif defined(HETADAM_XILINX)
#define HETADAM_KERNEL __kernel __attribute__((reqd_work_group_size(1, 1, 1)))
#define HETADAM_PIPELINE __attribute__((xcl_pipeline_loop(1)))
#elif defined(HETADAM_WG)
#define HETADAM_KERNEL __kernel __attribute__((reqd_work_group_size(HETADAM_WG, 1, 1)))
#define HETADAM_PIPELINE
#else
#define HETADAM_KERNEL __kernel
#define HETADAM_PIPELINE
#endif

/* ---- fp32 --------------------------------------------------------------- */

#ifndef HETADAM_VEC
#define HETADAM_VEC 8
#endif

#define HETADAM_CAT_(a, b) a##b
#define HETADAM_CAT(a, b) HETADAM_CAT_(a, b)

#if HETADAM_VEC == 1
typedef float floatv;
#else
typedef HETADAM_CAT(float, HETADAM_VEC) floatv;
#endif
/* Vector accesses through vector pointers (aligned: PoCL turns vloadn into
 * element loads, at half the speed). */
#define LOADV(i, p) (((__global const floatv *)(p))[i])
#define STOREV(x, i, p) (((__global floatv *)(p))[i] = (x))

/* torch's compiled kernel fuses these multiply-adds; HETADAM_NO_FMA rounds
 * product and sum apart (still float32 Adam, no longer bit-identical with
 * torch's fused kernel; faster where fma is a library call, as on PoCL). */
#ifdef HETADAM_NO_FMA
#define ADAM_FMA(a, b, c) ((a) * (b) + (c))
#else
#define ADAM_FMA(a, b, c) fma(a, b, c)
#endif

#define ADAM_MAXIMIZE 1
#define ADAM_COUPLED_DECAY 2   /* Adam: grad += weight_decay * param */
#define ADAM_DECOUPLED_DECAY 4 /* AdamW: param *= 1 - lr * weight_decay */
#define ADAM_AMSGRAD 8

/*
 * Units [0, units) of VEC floats starting at element `base` of the state
 * buffers (a multiple of VEC) and at unit `gbase` of the gradient buffer (a
 * staging chunk).
 * The scalars are computed on the host in double and rounded to float, as
 * torch's fused kernel does:
 *   lerp_w = 1 - beta1, beta2, sq_w = 1 - beta2, bc2_sqrt = sqrt(1 - beta2^t),
 *   neg_step = -lr / (1 - beta1^t), wd = weight_decay, p_scale = 1 - lr * wd.
 */
HETADAM_KERNEL void hetadam_adam_fp32(
    __global const float *p_in, __global const float *restrict g,
    __global const float *m_in, __global const float *v_in,
    __global const float *vmax_in, __global float *p_out, __global float *m_out,
    __global float *v_out, __global float *vmax_out, const uint base, const uint gbase, const uint units,
    const float lerp_w, const float beta2, const float sq_w, const float bc2_sqrt,
    const float eps, const float neg_step, const float wd, const float p_scale,
    const int flags) {
  HETADAM_PIPELINE
  for (uint u = get_global_id(0); u < units; u += get_global_size(0)) {
    floatv p = LOADV(u, p_in + base);
    floatv gr = LOADV(gbase + u, g);
    floatv m = LOADV(u, m_in + base);
    floatv v = LOADV(u, v_in + base);
    if (flags & ADAM_MAXIMIZE)
      gr = -gr;
    if (flags & ADAM_COUPLED_DECAY)
      gr = ADAM_FMA(p, (floatv)wd, gr);
    if (flags & ADAM_DECOUPLED_DECAY)
      p = p * p_scale;
    /* exp_avg.lerp_(grad, 1 - beta1), as ATen's vectorised lerp */
    const floatv d = gr - m;
    m = fabs(lerp_w) < 0.5f ? ADAM_FMA((floatv)lerp_w, d, m) : ADAM_FMA((floatv)(lerp_w - 1.0f), d, gr);
    v = ADAM_FMA(sq_w * gr, gr, v * beta2);
    floatv vd = v;
    if (flags & ADAM_AMSGRAD) {
      vd = fmax(LOADV(u, vmax_in + base), v);
      STOREV(vd, u, vmax_out + base);
    }
    const floatv denom = sqrt(vd) / bc2_sqrt + eps;
    p = p + neg_step * m / denom;
    STOREV(p, u, p_out + base);
    STOREV(m, u, m_out + base);
    STOREV(v, u, v_out + base);
  }
}

/* ---- fixed -------------------------------------------------------------- */

#ifndef HETADAM_ADAM_FORMAT_H
#include "adam_format.h"
#endif
#define FX_BLOCK HETADAM_BLOCK
#define FX_G_MAG HETADAM_G_MAG
#define FX_M_MAG HETADAM_M_MAG
#define FX_S_BITS HETADAM_S_BITS
#define FX_M_MAX ((long)HETADAM_M_MAX)
#define FX_S_MAX ((long)HETADAM_S_MAX)
#define FX_P_MAX 2147483647L

#define WORK_FRAC HETADAM_WORK_FRAC
#define EXTRA_FRAC HETADAM_EXTRA_FRAC
#define COEF_FRAC HETADAM_COEF_FRAC
#define RATIO_FRAC HETADAM_RATIO_FRAC
#define EPS_BITS HETADAM_EPS_BITS
#define EXP_ZERO HETADAM_EXP_ZERO
#define INDEX_MUL HETADAM_INDEX_MUL

/* Per-element clamps and maxima as plain selects: PoCL calls its library for
 * the 64-bit min/max/clamp builtins, at a third of the kernel's speed. */
inline long fx_clamp(long x, long lo, long hi) { return x < lo ? lo : x > hi ? hi : x; }
inline uint fx_umax(uint a, uint b) { return a > b ? a : b; }

/* rshr(x << up, min(d, 31)): align a mantissa to the working exponent */
inline long fx_align(long x, int up, int d) {
  x <<= up;
  d = d < 31 ? d : 31;
  return d > 0 ? (x + (1L << (d - 1))) >> d : x;
}

/* shift right by k >= 0: round to nearest even, or stochastically with bits u */
inline long fx_round(long x, int k, int stochastic, uint u) {
  if (k == 0)
    return x;
  if (stochastic)
    return (x + (k <= 32 ? (long)(u & (uint)((1UL << k) - 1)) : ((long)u << (k - 32)))) >> k;
  return (x + (1L << (k - 1)) - 1 + ((x >> k) & 1)) >> k;
}

inline uint fx_xorshift(uint x) {
  x ^= x << 13;
  x ^= x >> 17;
  return x ^ (x << 5);
}

/* floor(sqrt(v)), v < 2**52 */
inline long fx_isqrt(long v) {
#ifdef HETADAM_FP64
  long r = (long)sqrt((double)v);
  return r * r > v ? r - 1 : r;
#else
  ulong x = (ulong)v, r = 0, bit = 1UL << 52;
  while (bit > x)
    bit >>= 2;
  while (bit) {
    if (x >= r + bit) {
      x -= r + bit;
      r = (r >> 1) + bit;
    } else {
      r >>= 1;
    }
    bit >>= 2;
  }
  return (long)r;
#endif
}

/* floor(a / b), 0 <= a < 2**46, 0 < b < 2**53 */
inline long fx_quot(long a, long b) {
#ifdef HETADAM_FP64
  return (long)((double)a / (double)b); /* >= 0: truncation is the floor */
#else
  return a / b;
#endif
}

/* bit length of 0 <= x < 2**32 */
inline int fx_bit_length(uint x) { return 32 - (int)clz(x); }

/*
 * Blocks [0, blocks) starting at block `block0` of the state buffers; g and eg
 * hold just these blocks (a staging chunk). n: the element count of the state
 * (the last block may be partial); idx0: global index of state element 0.
 * sat[b - block0]: elements of block b whose ratio or parameter saturated.
 * ex_out carries eg in bits 7:0, as the hardware kernel leaves it.
 */
HETADAM_KERNEL void hetadam_adam(
    __global const int *restrict p_in, __global const short *restrict g,
    __global const char *restrict eg, __global const uint *restrict ms_in,
    __global const uint *restrict ex_in, __global int *restrict p_out,
    __global uint *restrict ms_out, __global uint *restrict ex_out,
    __global int *restrict sat, const uint n, const uint block0,
    const uint blocks, const uint idx0, const int beta1, const int beta2,
    const int eps_m, const int eps_e, const int alpha_m, const int alpha_sh,
    const int ratio_max, const uint lwd, const uint seed, const int mode) {
  const int stochastic = mode & 1;
  const long one = 1L << COEF_FRAC;
  HETADAM_PIPELINE
  for (uint c = get_global_id(0); c < blocks; c += get_global_size(0)) {
    const uint b = block0 + c;
    const uint lo = b * FX_BLOCK;
    const uint count = min((uint)FX_BLOCK, n - lo);
    const uint ex = ex_in[b];
    const int e_g = eg[c], e_m = (char)(ex >> 8), e_s = (char)(ex >> 16);
    const int ew = max(max(e_g, e_m), max(e_s, eps_e));
    const long ew_eps = fx_align(eps_m, WORK_FRAC - EPS_BITS, ew - eps_e) << EXTRA_FRAC;
    const int d_g = ew - e_g, d_m = ew - e_m, d_s = ew - e_s;
    int m_tmp[FX_BLOCK], s_tmp[FX_BLOCK];
    uint m_peak = 0, s_peak = 0;
    int sat_b = 0;
    for (uint j = 0; j < count; ++j) {
      const uint i = lo + j;
      const uint msv = ms_in[i];
      const long gw = fx_align(g[c * FX_BLOCK + j], WORK_FRAC - FX_G_MAG, d_g);
      const long mw = fx_align((short)(msv & 0xFFFF), WORK_FRAC - FX_M_MAG, d_m);
      const long sw = fx_align(msv >> 16, WORK_FRAC - FX_S_BITS, d_s);
      const long acc = beta1 * mw + (one - beta1) * gw;
      const long m_new = (acc + (1L << (COEF_FRAC - EXTRA_FRAC - 1))) >> (COEF_FRAC - EXTRA_FRAC);
      const long s_new = fx_isqrt(beta2 * sw * sw + (one - beta2) * gw * gw);
      const long denom = s_new + ew_eps;
      const long m_abs = m_new < 0 ? -m_new : m_new;
      int clamped = 0;
      long ratio = 0;
      if (m_abs != 0) {
        if (denom == 0) {
          ratio = ratio_max;
          clamped = 1;
        } else {
          ratio = fx_quot(m_abs << RATIO_FRAC, denom);
          if (ratio > ratio_max) {
            ratio = ratio_max;
            clamped = 1;
          }
        }
      }
      if (m_new < 0)
        ratio = -ratio;
      const uint u_p = stochastic ? fx_xorshift(seed ^ ((idx0 + i) * INDEX_MUL)) : 0u;
      const long p = p_in[i];
      const long decay = (p * (long)lwd + (1L << 31)) >> 32;
      long p_new = p - decay - fx_round(alpha_m * ratio, alpha_sh, stochastic, u_p);
      if (p_new > FX_P_MAX || p_new < -FX_P_MAX) {
        p_new = fx_clamp(p_new, -FX_P_MAX, FX_P_MAX);
        clamped = 1;
      }
      sat_b += clamped;
      p_out[i] = (int)p_new;
      m_tmp[j] = (int)m_new;
      s_tmp[j] = (int)s_new;
      m_peak = fx_umax(m_peak, (uint)m_abs);
      s_peak = fx_umax(s_peak, (uint)s_new);
    }
    /* storage: block-quantise m' and s' to the peak's bit length */
    const int len_m = fx_bit_length(m_peak), len_s = fx_bit_length(s_peak);
    for (uint j = 0; j < count; ++j) {
      const uint i = lo + j;
      uint u_m = 0, u_s = 0;
      if (stochastic) {
        u_m = fx_xorshift(fx_xorshift(seed ^ ((idx0 + i) * INDEX_MUL)));
        u_s = fx_xorshift(u_m);
      }
      long mq = 0, sq = 0;
      if (len_m)
        mq = len_m <= FX_M_MAG ? (long)m_tmp[j] << (FX_M_MAG - len_m)
                               : fx_round(m_tmp[j], len_m - FX_M_MAG, stochastic, u_m);
      if (len_s)
        sq = len_s <= FX_S_BITS ? (long)s_tmp[j] << (FX_S_BITS - len_s)
                                : fx_round(s_tmp[j], len_s - FX_S_BITS, stochastic, u_s);
      mq = fx_clamp(mq, -FX_M_MAX, FX_M_MAX);
      sq = fx_clamp(sq, 0L, FX_S_MAX);
      ms_out[i] = ((uint)mq & 0xFFFFu) | ((uint)sq << 16);
    }
    const int em_new = len_m ? ew - WORK_FRAC - EXTRA_FRAC + len_m : EXP_ZERO;
    const int es_new = len_s ? ew - WORK_FRAC - EXTRA_FRAC + len_s : EXP_ZERO;
    ex_out[b] = (uint)(uchar)e_g | ((uint)(uchar)em_new << 8) | ((uint)(uchar)es_new << 16);
    sat[c] = sat_b;
  }
}
