// One lane of the fixed-point Adam datapath (host/hetadam/numerics/fixed.py):
// one element per clock, no stalls, fixed latency. Stage numbers below are the
// clock at whose edge a register is loaded (_tK: valid K clocks after the inputs).
//
//   t1      align G, M, S to the block's working exponent; u_p = xs(x0); P * LWD
//   t2-t4   m' = rshr(B1*Mw + (1-B1)*Gw, 10); V = B2*Sw^2 + (1-B2)*Gw^2; P - decay
//   t5-t30  s' = isqrt(V)                      -> M_T (m', s', u_m, u_s to the block store)
//   t31     den = s' + (Ew << 10)
//   t32-t60 quotient |m'| * 2**20 / den
//   t61     ratio r, clamped to +-ratio_max
//   t62-t64 ALPHA_M * r, rounded right shift by ALPHA_SH (nearest even or stochastic)
//   t65     P' = sat(P - decay - step)          -> P_T
//
// The format's widths (G_BITS, M_BITS, S_BITS) set only the alignment shifts at t1
// and the width of the rounding bits u_m, u_s; the datapath itself works at the
// spec's fixed working precision (adam_format_pkg: WORK_FRAC, EXTRA_FRAC, ...).
`default_nettype none

module adam_lane #(
    parameter int G_BITS = adam_format_pkg::G_BITS,  // gradient mantissa bits
    parameter int M_BITS = adam_format_pkg::M_BITS,  // first-moment mantissa bits
    parameter int S_BITS = adam_format_pkg::S_BITS   // root-second-moment mantissa bits
) (
    input  wire logic               clk,

    // scalars, constant during a run
    input  wire logic [19:0]        beta1,
    input  wire logic [19:0]        beta2,
    input  wire logic [adam_format_pkg::ALPHA_BITS-1:0] alpha_m,
    input  wire logic [5:0]         alpha_sh,
    input  wire logic [26:0]        ratio_max,
    input  wire logic [31:0]        lwd,
    input  wire logic               stochastic,

    // one element and its block's constants (t0)
    input  wire logic signed [31:0] p,
    input  wire logic signed [15:0] g,
    input  wire logic signed [15:0] m,
    input  wire logic [15:0]        s,
    input  wire logic [4:0]         dg,        // min(ew - eg, 31)
    input  wire logic [4:0]         dm,
    input  wire logic [4:0]         ds,
    input  wire logic [25:0]        eweps,     // align(EPS_M) << 10
    input  wire logic [31:0]        x0,        // seed ^ index * 0x9E3779B9

    // the new moments (t30)
    output      logic signed [26:0] m_new,
    output      logic [25:0]        s_new,
    // the bits the block store rounds m' and s' with: their widest shift from 26 bits to M_BITS - 1 or S_BITS
    output      logic [adam_format_pkg::WORK_FRAC + adam_format_pkg::EXTRA_FRAC - M_BITS:0]     u_m,
    output      logic [adam_format_pkg::WORK_FRAC + adam_format_pkg::EXTRA_FRAC - S_BITS - 1:0] u_s,

    // the new parameter (t65)
    output      logic signed [31:0] p_new,
    output      logic               sat
);

  localparam int M_T = 30;          // adam_core assumes M_T = 30 and P_T = 65
  localparam int UM_W = adam_format_pkg::WORK_FRAC + adam_format_pkg::EXTRA_FRAC + 1 - M_BITS;  // u_m's width
  localparam int US_W = adam_format_pkg::WORK_FRAC + adam_format_pkg::EXTRA_FRAC - S_BITS;      // u_s's width
  localparam int G_UP = adam_format_pkg::WORK_FRAC - (G_BITS - 1);  // step 2: align(X, w, e) shifts X up
  localparam int M_UP = adam_format_pkg::WORK_FRAC - (M_BITS - 1);  // by WORK_FRAC - w first
  localparam int S_UP = adam_format_pkg::WORK_FRAC - S_BITS;
  localparam int M_SH = adam_format_pkg::COEF_FRAC - adam_format_pkg::EXTRA_FRAC;  // step 3: rshr(..., 10)

`ifndef __ICARUS__  // Icarus 11 reads no elaboration-time $fatal (a syntax error); Verilator and Vivado do
  if (adam_format_pkg::WORK_FRAC != 16 || adam_format_pkg::EXTRA_FRAC != 10 || adam_format_pkg::COEF_FRAC != 20 ||
      adam_format_pkg::RATIO_FRAC != 20 || adam_format_pkg::ALPHA_BITS != 24) begin : g_check_spec
    $fatal(0, "Error: the lane's registers are sized for WORK_FRAC 16, EXTRA_FRAC 10, COEF_FRAC 20, RATIO_FRAC 20, ALPHA_BITS 24 (instance %m)");
  end
`endif

  // rshr(x, d) = (x + 2**(d-1)) >> d, arithmetic
  function automatic logic signed [16:0] rshr17(input logic signed [16:0] x, input logic [4:0] d);
    logic signed [47:0] t;
    logic signed [47:0] half;
    t = {{31{x[16]}}, x};
    half = (d == 5'd0) ? 48'sd0 : (48'sd1 <<< (d - 5'd1));
    t = t + half;
    t = t >>> d;
    rshr17 = t[16:0];
  endfunction

  function automatic logic [15:0] rshr16u(input logic [15:0] x, input logic [4:0] d);
    logic [47:0] t;
    t = {32'd0, x} + ((d == 5'd0) ? 48'd0 : (48'd1 << (d - 5'd1)));
    t = t >> d;
    rshr16u = t[15:0];
  endfunction

  function automatic logic [31:0] xs32(input logic [31:0] x);
    logic [31:0] y;
    y = x ^ (x << 13);
    y = y ^ (y >> 17);
    xs32 = y ^ (y << 5);
  endfunction

  // ---------------------------------------------------------------- t1
  logic signed [16:0] gw_t1, mw_t1;
  logic [15:0] sw_t1;
  logic [31:0] up_t1;
  logic signed [64:0] pl_t1;
  logic signed [31:0] p_t1;

  always_ff @(posedge clk) begin
    gw_t1 <= rshr17(17'(g) <<< G_UP, dg);
    mw_t1 <= rshr17(17'(m) <<< M_UP, dm);
    sw_t1 <= rshr16u(s << S_UP, ds);
    up_t1 <= xs32(x0);
    pl_t1 <= 65'(p) * $signed({33'd0, lwd});
    p_t1 <= p;
  end

  // ---------------------------------------------------------------- t2
  wire logic signed [20:0] b1_s = {1'b0, beta1};
  wire logic signed [21:0] ob1_s = {1'b0, 21'h100000 - {1'b0, beta1}};
  wire logic [20:0] ob2 = 21'h100000 - {1'b0, beta2};

  logic signed [38:0] pm_t2, pg_t2;
  logic [31:0] ss_t2, gg_t2;
  logic [31:0] um_t2;
  logic signed [33:0] pd_t2;

  /* verilator lint_off UNUSEDSIGNAL */  // values are narrower than the arithmetic
  wire logic signed [64:0] decay_t1 = (pl_t1 + 65'sh80000000) >>> 32;
  /* verilator lint_on UNUSEDSIGNAL */
  /* verilator lint_off UNUSEDSIGNAL */  // values are narrower than the arithmetic
  wire logic signed [33:0] gg_full = gw_t1 * gw_t1;
  /* verilator lint_on UNUSEDSIGNAL */

  always_ff @(posedge clk) begin
    pm_t2 <= 39'(b1_s) * 39'(mw_t1);
    pg_t2 <= 39'(ob1_s) * 39'(gw_t1);
    ss_t2 <= {16'd0, sw_t1} * {16'd0, sw_t1};
    gg_t2 <= gg_full[31:0];
    um_t2 <= xs32(up_t1);
    pd_t2 <= 34'(p_t1) - decay_t1[33:0];
  end

  // ---------------------------------------------------------------- t3
  logic signed [39:0] acc_t3;
  logic [52:0] vs_t3, vg_t3;
  /* verilator lint_off UNUSEDSIGNAL */
  logic [31:0] us_t3;         // the store rounds with its low bits only
  /* verilator lint_on UNUSEDSIGNAL */

  always_ff @(posedge clk) begin
    acc_t3 <= 40'(pm_t2) + 40'(pg_t2);
    vs_t3 <= {33'd0, beta2} * {21'd0, ss_t2};
    vg_t3 <= {32'd0, ob2} * {21'd0, gg_t2};
    us_t3 <= xs32(um_t2);
  end

  // ---------------------------------------------------------------- t4
  logic signed [26:0] m_t4;
  logic [51:0] v_t4;
  /* verilator lint_off UNUSEDSIGNAL */  // values are narrower than the arithmetic
  wire logic signed [39:0] m_round = (acc_t3 + (40'sd1 <<< (M_SH - 1))) >>> M_SH;
  /* verilator lint_on UNUSEDSIGNAL */
  /* verilator lint_off UNUSEDSIGNAL */  // values are narrower than the arithmetic
  wire logic [52:0] v_sum = vs_t3 + vg_t3;
  /* verilator lint_on UNUSEDSIGNAL */

  always_ff @(posedge clk) begin
    m_t4 <= m_round[26:0];
    v_t4 <= v_sum[51:0];
  end

  // ---------------------------------------------------------------- t5..t30
  logic [25:0] s_t30;
  logic signed [26:0] m_t30;
  logic [25:0] eweps_t30;

  adam_isqrt #(.RW(26)) u_isqrt (.clk(clk), .x(v_t4), .root(s_t30));
  adam_delay #(.WIDTH(27), .DEPTH(M_T - 4)) u_dly_m (.clk(clk), .d(m_t4), .q(m_t30));
  adam_delay #(.WIDTH(26), .DEPTH(M_T)) u_dly_eps (.clk(clk), .d(eweps), .q(eweps_t30));
  adam_delay #(.WIDTH(UM_W), .DEPTH(M_T - 2)) u_dly_um (.clk(clk), .d(um_t2[UM_W-1:0]), .q(u_m));
  adam_delay #(.WIDTH(US_W), .DEPTH(M_T - 3)) u_dly_us (.clk(clk), .d(us_t3[US_W-1:0]), .q(u_s));

  assign m_new = m_t30;
  assign s_new = s_t30;

  // ---------------------------------------------------------------- t31
  logic [26:0] den_t31;
  logic [25:0] am_t31;
  logic neg_t31, nz_t31;
  /* verilator lint_off UNUSEDSIGNAL */  // values are narrower than the arithmetic
  wire logic [26:0] m_abs = m_t30[26] ? 27'(-m_t30) : 27'(m_t30);
  /* verilator lint_on UNUSEDSIGNAL */

  always_ff @(posedge clk) begin
    den_t31 <= {1'b0, s_t30} + {1'b0, eweps_t30};
    am_t31 <= m_abs[25:0];
    neg_t31 <= m_t30[26];
    nz_t31 <= m_t30 != 27'sd0;
  end

  // ---------------------------------------------------------------- t32..t60
  logic [27:0] q_t60;
  logic ovf_t60, neg_t60, nz_t60;

  adam_div #(.AW(26), .DW(27), .SH(adam_format_pkg::RATIO_FRAC), .QW(28)) u_div (
      .clk(clk), .am(am_t31), .den(den_t31), .q(q_t60), .ovf(ovf_t60));
  adam_delay #(.WIDTH(2), .DEPTH(29)) u_dly_sign (
      .clk(clk), .d({neg_t31, nz_t31}), .q({neg_t60, nz_t60}));

  // ---------------------------------------------------------------- t61
  logic signed [27:0] r_t61;
  logic satr_t61;
  wire logic over = ovf_t60 || (q_t60 > {1'b0, ratio_max});
  wire logic [26:0] mag = !nz_t60 ? 27'd0 : (over ? ratio_max : q_t60[26:0]);

  always_ff @(posedge clk) begin
    r_t61 <= neg_t60 ? -$signed({1'b0, mag}) : $signed({1'b0, mag});
    satr_t61 <= nz_t60 && over;
  end

  // ---------------------------------------------------------------- t62..t64
  logic signed [63:0] prod_t62, sum_t63, step_t64;
  logic [31:0] up_t62;
  logic signed [33:0] pd_t64;
  logic satr_t64;

  adam_delay #(.WIDTH(32), .DEPTH(61)) u_dly_up (.clk(clk), .d(up_t1), .q(up_t62));
  adam_delay #(.WIDTH(34), .DEPTH(62)) u_dly_pd (.clk(clk), .d(pd_t2), .q(pd_t64));
  adam_delay #(.WIDTH(1), .DEPTH(3)) u_dly_satr (.clk(clk), .d(satr_t61), .q(satr_t64));

  logic signed [63:0] addend;
  always_comb begin
    if (alpha_sh == 6'd0) begin
      addend = '0;
    end else if (stochastic) begin
      if (alpha_sh <= 6'd32) begin
        addend = $signed({32'd0, up_t62 & 32'(({33'd0, 32'hFFFFFFFF} >> (6'd32 - alpha_sh)))});
      end else begin
        addend = $signed({32'd0, up_t62} << (alpha_sh - 6'd32));
      end
    end else begin
      addend = (64'sd1 <<< (alpha_sh - 6'd1)) - 64'sd1 + 64'((prod_t62 >>> alpha_sh) & 64'sd1);
    end
  end

  always_ff @(posedge clk) begin
    prod_t62 <= 64'($signed({1'b0, alpha_m})) * 64'(r_t61);
    sum_t63 <= prod_t62 + addend;
    step_t64 <= sum_t63 >>> alpha_sh;
  end

  // ---------------------------------------------------------------- t65
  localparam logic signed [63:0] P_MAX = 64'sh7FFFFFFF;
  wire logic signed [63:0] pn = 64'(pd_t64) - step_t64;

  always_ff @(posedge clk) begin
    if (pn > P_MAX) begin
      p_new <= 32'h7FFFFFFF;
    end else if (pn < -P_MAX) begin
      p_new <= 32'h80000001;
    end else begin
      p_new <= pn[31:0];
    end
    sat <= satr_t64 || (pn > P_MAX) || (pn < -P_MAX);
  end

endmodule

`default_nettype wire
