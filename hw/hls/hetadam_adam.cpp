// hetadam_adam: the `fixed` Adam update as a Vitis HLS kernel.
//
// Spec: host/hetadam/numerics/fixed.py (step numbers below refer to its
// docstring). Three dataflow processes joined by FIFOs stream the arrays:
//
//   load     reads ex[b] at each block start, then p[i], g[i], ms[i]
//   compute  aligns to the block's working exponent and computes m', s', the
//            ratio and p' (steps 1-6); at each block end it emits the block's
//            peaks |m'| and s'
//   store    waits for a block's peaks, then quantises its m' and s' to the
//            new exponents (step 7) and writes p, ms and ex
//
// The new exponents depend on the whole block, so the m'/s' FIFO between
// compute and store is two blocks deep: compute runs one block ahead of store
// and every loop keeps II=1.
#include "hetadam_adam.h"

#include "adam_regmap.h"
#include "hetadam_fifo.h"

// Pragmas whose values come from macros (the register offsets generated from
// host/hetadam/regmap.py, the sizes of adam_format.h): the argument is expanded before it is stringised.
#define HETADAM_PRAGMA_SUB(x) _Pragma(#x)
#define HETADAM_PRAGMA(x) HETADAM_PRAGMA_SUB(x)

namespace hetadam {
namespace {

struct elem_in {
  int32_t p;
  int16_t g;
  uint32_t ms;
};

struct elem_out {
  int32_t p;  // the new parameter, saturated
  int32_t m;  // m', 26 fraction bits relative to the working exponent: |m'| < 2**26
  int32_t s;  // s', likewise: 0 <= s' < 2**26
};

struct block_out {
  uint8_t eg;   // the gradient's exponent, copied back to ex bits 7:0
  int16_t ew;   // the working exponent
  int32_t m_peak;
  int32_t s_peak;
};

inline int32_t exp_field(uint32_t word, int shift) { return static_cast<int8_t>((word >> shift) & 0xFF); }

inline int64_t shl(int64_t x, int k) { return static_cast<int64_t>(static_cast<uint64_t>(x) << k); }

// rshr: shift right by k >= 0 rounding half up.
inline int64_t rshr(int64_t x, int k) { return k > 0 ? (x + (int64_t(1) << (k - 1))) >> k : x; }

// Step 2: a mantissa with `mag` magnitude bits and exponent distance d = ew - e >= 0.
inline int64_t align(int64_t mant, int mag, int32_t d) { return rshr(shl(mant, WORK_FRAC - mag), d > 31 ? 31 : d); }

// round(x, k, u): to nearest even, or stochastically with the random word u.
inline int64_t round_shift(int64_t x, int k, bool stochastic, uint32_t u) {
  if (k == 0) return x;
  if (stochastic) {
    const int64_t add = k <= 32 ? static_cast<int64_t>(u & static_cast<uint32_t>((uint64_t(1) << k) - 1))
                                : static_cast<int64_t>(static_cast<uint64_t>(u) << (k - 32));
    return (x + add) >> k;
  }
  return (x + (int64_t(1) << (k - 1)) - 1 + ((x >> k) & 1)) >> k;
}

// Exact floor(sqrt(v)) for v < 2**52: a restoring digit recurrence, one result bit per
// stage. The partial remainder stays below 2**27 and the root below 2**26, so 32-bit
// registers hold both.
inline int64_t isqrt52(uint64_t v) {
#if defined(HETADAM_HOST_ISQRT) && !defined(__SYNTHESIS__)
  // The hls-csim backend's build (backends/hls_csim.py): on a CPU the 26 dependent stages
  // below cost ~85% of the kernel. v < 2**53 is exact in a double and IEEE sqrt rounds
  // correctly, so the truncated root is floor(sqrt(v)) (below 2**52) or one above it; the
  // corrections make it exact (tests/test_hls_csim_host.py). `make csim` and synthesis keep
  // the recurrence.
  int64_t r = static_cast<int64_t>(__builtin_sqrt(static_cast<double>(v)));
  r -= static_cast<uint64_t>(r) * static_cast<uint64_t>(r) > v ? 1 : 0;
  r += static_cast<uint64_t>(r + 1) * static_cast<uint64_t>(r + 1) <= v ? 1 : 0;
  return r;
#endif
  uint32_t rem = 0;
  uint32_t root = 0;
isqrt_digits:
  for (int i = 25; i >= 0; --i) {
#pragma HLS UNROLL
    const uint32_t x = (rem << 2) | static_cast<uint32_t>((v >> (2 * i)) & 3);
    const uint32_t trial = (root << 2) | 1;
    const uint32_t fits = x >= trial ? 1u : 0u;
    rem = x - (trial & (0u - fits));  // subtract when the trial digit fits: a mask, not a branch
    root = (root << 1) | fits;
  }
  return root;
}

// Bit length of 0 <= x < 2**31.
inline int bit_length(int32_t x) {
  int length = 0;
bit_length_scan:
  for (int k = 0; k < 31; ++k) {
#pragma HLS UNROLL
    if ((x >> k) & 1) length = k + 1;
  }
  return length;
}

// The LFSR clock: xorshift32 (13, 17, 5).
inline uint32_t xorshift32(uint32_t x) {
  x ^= x << 13;
  x ^= x >> 17;
  return x ^ (x << 5);
}

inline uint32_t lfsr_start(uint32_t seed, uint32_t index) { return seed ^ (index * INDEX_MUL); }

// Step 7 for one element: the mantissa of working value x in a block whose peak has bit length `length`.
inline int32_t quantise(int64_t x, int length, int mag, int32_t lo, int32_t hi, bool stochastic, uint32_t u) {
  const int64_t v = length <= mag ? shl(x, mag - length) : round_shift(x, length - mag, stochastic, u);
  return static_cast<int32_t>(v < lo ? lo : (v > hi ? hi : v));
}

// Step 7 for the block: the new exponent (EXP_ZERO for an all-zero block).
inline int32_t block_exp(int16_t ew, int length) {
  return length == 0 ? EXP_ZERO : ew - WORK_FRAC - EXTRA_FRAC + length;
}

void load(uint32_t n, const int32_t *p, const int16_t *g, const uint32_t *ms, const uint32_t *ex,
          fifo<uint32_t> &ex_in, fifo<elem_in> &elems) {
load_elems:
  for (uint32_t i = 0; i < n; ++i) {
#pragma HLS PIPELINE II=1
    HETADAM_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=HETADAM_COSIM_DEPTH)
    if (i % BLOCK == 0) ex_in.write(ex[i / BLOCK]);
    elem_in e;
    e.p = p[i];
    e.g = g[i];
    e.ms = ms[i];
    elems.write(e);
  }
}

void compute(uint32_t n, uint32_t idx0, uint32_t seed, uint32_t beta1, uint32_t beta2, uint32_t eps_m,
             int32_t eps_e, uint32_t alpha_m, uint32_t alpha_sh, uint32_t ratio_max, uint32_t lwd, uint32_t mode,
             uint32_t *sat_count, fifo<uint32_t> &ex_in, fifo<elem_in> &elems, fifo<elem_out> &moments,
             fifo<block_out> &blocks) {
  const bool stochastic = (mode & MODE_STOCHASTIC) != 0;
  const int64_t b1 = beta1, b2 = beta2;
  const int64_t c1 = (int64_t(1) << COEF_FRAC) - b1, c2 = (int64_t(1) << COEF_FRAC) - b2;
  block_out blk = {0, 0, 0, 0};
  int32_t d_g = 0, d_m = 0, d_s = 0;
  int64_t eps_w = 0;
  uint32_t sat = 0;
compute_elems:
  for (uint32_t i = 0; i < n; ++i) {
#pragma HLS PIPELINE II=1
    HETADAM_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=HETADAM_COSIM_DEPTH)
    if (i % BLOCK == 0) {  // step 1: the block's working exponent
      const uint32_t word = ex_in.read();
      const int32_t eg = exp_field(word, 0), em = exp_field(word, 8), es = exp_field(word, 16);
      int32_t ew = eg > em ? eg : em;
      ew = ew > es ? ew : es;
      ew = ew > eps_e ? ew : eps_e;
      blk.eg = static_cast<uint8_t>(word & 0xFF);
      blk.ew = static_cast<int16_t>(ew);
      blk.m_peak = 0;
      blk.s_peak = 0;
      d_g = ew - eg;
      d_m = ew - em;
      d_s = ew - es;
      eps_w = shl(align(eps_m, EPS_BITS, ew - eps_e), EXTRA_FRAC);
    }
    const elem_in e = elems.read();
    // Step 2: align to ew.
    const int64_t gw = align(e.g, G_MAG, d_g);
    const int64_t mw = align(static_cast<int16_t>(e.ms & 0xFFFF), M_MAG, d_m);
    const int64_t sw = align(static_cast<int64_t>(e.ms >> 16), S_BITS, d_s);
    // Steps 3-4: the new moments.
    const int64_t m_new = rshr(b1 * mw + c1 * gw, COEF_FRAC - EXTRA_FRAC);
    const int64_t s_new = isqrt52(static_cast<uint64_t>(b2 * sw * sw + c2 * gw * gw));
    // Step 5: the ratio, bounded by ratio_max.
    const int64_t m_abs = m_new < 0 ? -m_new : m_new;
    const int64_t denom = s_new + eps_w;
    bool clamped = false;
    int64_t ratio = 0;
    if (m_abs != 0) {
      if (denom == 0) {
        ratio = ratio_max;
        clamped = true;
      } else {
        ratio = static_cast<int64_t>(static_cast<uint64_t>(m_abs << RATIO_FRAC) / static_cast<uint64_t>(denom));
        if (ratio > static_cast<int64_t>(ratio_max)) {
          ratio = ratio_max;
          clamped = true;
        }
      }
    }
    if (m_new < 0) ratio = -ratio;
    // Step 6: decoupled weight decay and the parameter step, saturated.
    const uint32_t u_p = stochastic ? xorshift32(lfsr_start(seed, idx0 + i)) : 0;
    const int64_t p_old = e.p;
    const int64_t decay = rshr(p_old * static_cast<int64_t>(lwd), 32);
    int64_t p_new = p_old - decay - round_shift(static_cast<int64_t>(alpha_m) * ratio, alpha_sh, stochastic, u_p);
    if (p_new > P_MAX || p_new < -P_MAX) {
      p_new = p_new > P_MAX ? P_MAX : -P_MAX;
      clamped = true;
    }
    sat += clamped ? 1 : 0;
    elem_out out;
    out.p = static_cast<int32_t>(p_new);
    out.m = static_cast<int32_t>(m_new);
    out.s = static_cast<int32_t>(s_new);
    moments.write(out);
    if (m_abs > blk.m_peak) blk.m_peak = static_cast<int32_t>(m_abs);
    if (s_new > blk.s_peak) blk.s_peak = static_cast<int32_t>(s_new);
    if (i % BLOCK == BLOCK - 1 || i == n - 1) blocks.write(blk);
  }
  *sat_count = sat;
}

void store(uint32_t n, uint32_t idx0, uint32_t seed, uint32_t mode, fifo<elem_out> &moments,
           fifo<block_out> &blocks, int32_t *p, uint32_t *ms, uint32_t *ex) {
  const bool stochastic = (mode & MODE_STOCHASTIC) != 0;
  int m_len = 0, s_len = 0;
store_elems:
  for (uint32_t i = 0; i < n; ++i) {
#pragma HLS PIPELINE II=1
    HETADAM_PRAGMA(HLS LOOP_TRIPCOUNT min=1 max=HETADAM_COSIM_DEPTH)
    if (i % BLOCK == 0) {  // step 7: the block's new exponents, once its peaks are known
      const block_out blk = blocks.read();
      m_len = bit_length(blk.m_peak);
      s_len = bit_length(blk.s_peak);
      const uint32_t em = static_cast<uint32_t>(block_exp(blk.ew, m_len)) & 0xFF;
      const uint32_t es = static_cast<uint32_t>(block_exp(blk.ew, s_len)) & 0xFF;
      ex[i / BLOCK] = blk.eg | (em << 8) | (es << 16);
    }
    const elem_out e = moments.read();
    uint32_t u_m = 0, u_s = 0;
    if (stochastic) {
      u_m = xorshift32(xorshift32(lfsr_start(seed, idx0 + i)));
      u_s = xorshift32(u_m);
    }
    const int32_t m = quantise(e.m, m_len, M_MAG, -M_MAX, M_MAX, stochastic, u_m);
    const int32_t s = quantise(e.s, s_len, S_BITS, 0, S_MAX, stochastic, u_s);
    p[i] = e.p;
    ms[i] = (static_cast<uint32_t>(m) & 0xFFFF) | (static_cast<uint32_t>(s) << 16);
  }
}

}  // namespace
}  // namespace hetadam

extern "C" void hetadam_adam(uint32_t n, uint32_t idx0, uint32_t seed, uint32_t beta1, uint32_t beta2,
                             uint32_t eps_m, int32_t eps_e, uint32_t alpha_m, uint32_t alpha_sh,
                             uint32_t ratio_max, uint32_t lwd, uint32_t mode, uint32_t *sat_count, int32_t *p,
                             const int16_t *g, uint32_t *ms, uint32_t *ex) {
  // AXI4-Lite control at the offsets of the register map, with the block protocol stated rather than
  // left to the flow's default (ap_ctrl_chain in the Vitis kernel flow): the driver speaks ap_ctrl_hs.
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=return bundle=control)
#pragma HLS INTERFACE ap_ctrl_hs port=return bundle=control
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=n offset=HETADAM_REG_N bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=idx0 offset=HETADAM_REG_IDX0 bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=seed offset=HETADAM_REG_SEED bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=beta1 offset=HETADAM_REG_BETA1 bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=beta2 offset=HETADAM_REG_BETA2 bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=eps_m offset=HETADAM_REG_EPS_M bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=eps_e offset=HETADAM_REG_EPS_E bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=alpha_m offset=HETADAM_REG_ALPHA_M bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=alpha_sh offset=HETADAM_REG_ALPHA_SH bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=ratio_max offset=HETADAM_REG_RATIO_MAX bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=lwd offset=HETADAM_REG_LWD bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=mode offset=HETADAM_REG_MODE bundle=control)
  // An output scalar: its register carries the ap_vld bit at offset + 4.
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=sat_count offset=HETADAM_REG_SAT_COUNT bundle=control)
  // The arrays: one AXI4 master per array, bursts of up to 64 beats, the base addresses in the control registers.
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=p offset=HETADAM_REG_P bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=g offset=HETADAM_REG_G bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=ms offset=HETADAM_REG_MS bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE s_axilite port=ex offset=HETADAM_REG_EX bundle=control)
  HETADAM_PRAGMA(HLS INTERFACE m_axi port=p bundle=gmem_p offset=slave depth=HETADAM_COSIM_DEPTH max_read_burst_length=64 max_write_burst_length=64 num_read_outstanding=16 num_write_outstanding=16 latency=64)
  HETADAM_PRAGMA(HLS INTERFACE m_axi port=g bundle=gmem_g offset=slave depth=HETADAM_COSIM_DEPTH max_read_burst_length=64 max_write_burst_length=64 num_read_outstanding=16 num_write_outstanding=16 latency=64)
  HETADAM_PRAGMA(HLS INTERFACE m_axi port=ms bundle=gmem_ms offset=slave depth=HETADAM_COSIM_DEPTH max_read_burst_length=64 max_write_burst_length=64 num_read_outstanding=16 num_write_outstanding=16 latency=64)
  HETADAM_PRAGMA(HLS INTERFACE m_axi port=ex bundle=gmem_ex offset=slave depth=HETADAM_COSIM_DEPTH_BLOCKS max_read_burst_length=16 max_write_burst_length=16 num_read_outstanding=4 num_write_outstanding=4 latency=64)
#pragma HLS DATAFLOW
  using namespace hetadam;
  fifo<uint32_t> ex_in;
  fifo<elem_in> elems;
  fifo<elem_out> moments;
  fifo<block_out> blocks;
#pragma HLS STREAM variable=ex_in depth=4
#pragma HLS STREAM variable=elems depth=64
  HETADAM_PRAGMA(HLS STREAM variable=moments depth=HETADAM_MOMENTS_DEPTH)
#pragma HLS STREAM variable=blocks depth=2
  load(n, p, g, ms, ex, ex_in, elems);
  compute(n, idx0, seed, beta1, beta2, eps_m, eps_e, alpha_m, alpha_sh, ratio_max, lwd, mode, sat_count, ex_in,
          elems, moments, blocks);
  store(n, idx0, seed, mode, moments, blocks, p, ms, ex);
}
