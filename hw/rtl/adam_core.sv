// The streaming Adam core: joins the input streams (p, g, ms beats of LANES
// elements; one ex word per block of BLOCK), runs LANES adam_lane pipelines and
// quantises each block's new moments through a two-bank block store to
// M_BITS and S_BITS (step 7 of the spec).
//
// The pipeline never stalls: a beat enters only when every output FIFO has a
// credit for it (credits = FIFO depth - beats in flight or queued), so the
// outputs always have room when the beat arrives.
`default_nettype none

module adam_core #(
    parameter int LANES = 1,
    parameter int OUT_DEPTH_LOG2 = 7,   // p and ms output FIFOs (beats)
    parameter int EX_DEPTH_LOG2 = 5,    // ex output FIFO (blocks)
    parameter int BLOCK = adam_format_pkg::BLOCK,    // the format (hetadam_adam checks it)
    parameter int G_BITS = adam_format_pkg::G_BITS,
    parameter int M_BITS = adam_format_pkg::M_BITS,
    parameter int S_BITS = adam_format_pkg::S_BITS
) (
    input  wire logic                  clk,
    input  wire logic                  rst,

    // run arguments: start pulses once; the rest hold during the run
    input  wire logic                  start,
    input  wire logic [31:0]           n,
    input  wire logic [31:0]           idx0,
    input  wire logic [31:0]           seed,
    /* verilator lint_off UNUSEDSIGNAL */  // 32-bit registers; the low bits are the fields
    input  wire logic [31:0]           beta1,
    input  wire logic [31:0]           beta2,
    input  wire logic [31:0]           eps_m,
    input  wire logic [31:0]           eps_e,
    input  wire logic [31:0]           alpha_m,
    input  wire logic [31:0]           alpha_sh,
    input  wire logic [31:0]           ratio_max,
    input  wire logic [31:0]           lwd,
    input  wire logic [31:0]           mode,
    /* verilator lint_on UNUSEDSIGNAL */

    // input streams
    /* verilator lint_off UNUSEDSIGNAL */  // ex bits 31:24 are unused
    input  wire logic [31:0]           ex_in_data,
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire logic                  ex_in_valid,
    output      logic                  ex_in_ready,
    input  wire logic [32*LANES-1:0]   p_in_data,
    input  wire logic                  p_in_valid,
    output      logic                  p_in_ready,
    input  wire logic [16*LANES-1:0]   g_in_data,
    input  wire logic                  g_in_valid,
    output      logic                  g_in_ready,
    input  wire logic [32*LANES-1:0]   ms_in_data,
    input  wire logic                  ms_in_valid,
    output      logic                  ms_in_ready,

    // output streams (FIFO heads) and their occupancy
    output      logic [32*LANES-1:0]   p_out_data,
    output      logic                  p_out_valid,
    input  wire logic                  p_out_ready,
    output      logic [OUT_DEPTH_LOG2:0] p_out_count,
    output      logic [32*LANES-1:0]   ms_out_data,
    output      logic                  ms_out_valid,
    input  wire logic                  ms_out_ready,
    output      logic [OUT_DEPTH_LOG2:0] ms_out_count,
    output      logic [31:0]           ex_out_data,
    output      logic                  ex_out_valid,
    input  wire logic                  ex_out_ready,
    output      logic [EX_DEPTH_LOG2:0] ex_out_count,

    output      logic [31:0]           sat_count
);

  localparam int NB = BLOCK / LANES;                 // beats per block
  localparam int NB_W = $clog2(NB) + 1;
  localparam int LANE_W = $clog2(LANES) + 1;
  localparam int M_T = 30;                           // adam_lane: new moments
  localparam int P_T = 65;                           // adam_lane: new parameter
  localparam int MS_W = adam_format_pkg::WORK_FRAC + adam_format_pkg::EXTRA_FRAC;  // |m'|, s' < 2**26
  localparam int M_MAG = M_BITS - 1;
  localparam int UM_W = MS_W - M_MAG;                // rounding bits of m' and s' (adam_lane's u_m, u_s)
  localparam int US_W = MS_W - S_BITS;
  localparam int ST_W = (MS_W + 1) + MS_W + UM_W + US_W;  // block-store word per lane: m', s', u_m, u_s
  localparam logic signed [31:0] M_MAX = 32'((1 << M_MAG) - 1);
  localparam logic signed [31:0] S_MAX = 32'((1 << S_BITS) - 1);
  localparam logic signed [8:0] EXP_OFF = 9'(MS_W);  // em' = ew - 26 + L
  localparam logic [7:0] EXP_ZERO = 8'(adam_format_pkg::EXP_ZERO);
  localparam logic [31:0] INDEX_MUL = adam_format_pkg::INDEX_MUL;
  localparam logic [OUT_DEPTH_LOG2:0] OUT_CRED = 1 << OUT_DEPTH_LOG2;
  localparam logic [EX_DEPTH_LOG2:0] EX_CRED = 1 << EX_DEPTH_LOG2;

`ifndef __ICARUS__  // Icarus 11 reads no elaboration-time $fatal (a syntax error); Verilator and Vivado do
  if (LANES < 1 || 2 * LANES > BLOCK || BLOCK % LANES != 0 || (LANES & (LANES - 1)) != 0) begin : g_check_lanes
    $fatal(0, "Error: LANES = %0d; it must be a power of two, at most half the block of %0d (instance %m)", LANES,
           BLOCK);
  end
  if (adam_format_pkg::WORK_FRAC != 16 || adam_format_pkg::EXTRA_FRAC != 10 || adam_format_pkg::EPS_BITS != 15)
  begin : g_check_spec
    $fatal(0, "Error: the block header and store are sized for WORK_FRAC 16, EXTRA_FRAC 10, EPS_BITS 15 (instance %m)");
  end
`endif

  // ------------------------------------------------------------ block header
  // working exponent and alignment shifts of a block, from its ex word
  function automatic logic [4:0] clamp31(input logic signed [9:0] d);
    clamp31 = (d > 10'sd31) ? 5'd31 : d[4:0];
  endfunction

  wire logic signed [9:0] h_eg = {{2{ex_in_data[7]}}, ex_in_data[7:0]};
  wire logic signed [9:0] h_em = {{2{ex_in_data[15]}}, ex_in_data[15:8]};
  wire logic signed [9:0] h_es = {{2{ex_in_data[23]}}, ex_in_data[23:16]};
  wire logic signed [9:0] h_ee = {{2{eps_e[7]}}, eps_e[7:0]};
  logic signed [9:0] h_ew;
  logic [4:0] h_de;
  logic [47:0] h_eps;

  always_comb begin
    h_ew = h_eg;
    if (h_em > h_ew) h_ew = h_em;
    if (h_es > h_ew) h_ew = h_es;
    if (h_ee > h_ew) h_ew = h_ee;
    h_de = clamp31(h_ew - h_ee);
    h_eps = {31'd0, eps_m[15:0], 1'b0} + ((h_de == 5'd0) ? 48'd0 : (48'd1 << (h_de - 5'd1)));
    h_eps = h_eps >> h_de;
  end

  // header: eg, ew, dg, dm, ds, eweps
  localparam int HDR_W = 8 + 8 + 15 + 26;
  wire logic [HDR_W-1:0] hdr_in = {ex_in_data[7:0], h_ew[7:0], clamp31(h_ew - h_eg),
                                   clamp31(h_ew - h_em), clamp31(h_ew - h_es), h_eps[15:0], 10'd0};
  logic [HDR_W-1:0] hdr;
  logic hdr_valid, hdr_pop;

  /* verilator lint_off PINCONNECTEMPTY */  // credits keep these FIFOs from overflowing
  adam_fifo #(.WIDTH(HDR_W), .DEPTH_LOG2(2)) u_hdr_fifo (
      .clk(clk), .rst(rst),
      .in_data(hdr_in), .in_valid(ex_in_valid), .in_ready(ex_in_ready),
      .out_data(hdr), .out_valid(hdr_valid), .out_ready(hdr_pop),
      .count());
  /* verilator lint_on PINCONNECTEMPTY */

  // ------------------------------------------------------------ run state
  logic [32:0] beats_left;
  logic [31:0] elem;             // index (from 0) of lane 0 of the next beat
  logic [NB_W-1:0] blk_beat;
  logic [31:0] idx_acc;          // (idx0 + elem) * INDEX_MUL mod 2**32
  logic [31:0] n_r;

  logic [OUT_DEPTH_LOG2:0] p_cred, ms_cred;
  logic [EX_DEPTH_LOG2:0] ex_cred;
  logic p_pop, ms_pop, ex_pop;

  wire logic first_of_block = blk_beat == '0;
  wire logic last_beat = beats_left == 33'd1;
  wire logic last_of_block = (blk_beat == NB_W'(NB - 1)) || last_beat;

  wire logic admit = (beats_left != '0) && hdr_valid && p_in_valid && g_in_valid && ms_in_valid &&
                     (p_cred < OUT_CRED) && (ms_cred < OUT_CRED) &&
                     (!first_of_block || (ex_cred < EX_CRED));

  assign p_in_ready = admit;
  assign g_in_ready = admit;
  assign ms_in_ready = admit;
  assign hdr_pop = admit && last_of_block;

  always_ff @(posedge clk) begin
    if (start) begin
      beats_left <= ({1'b0, n} + 33'(LANES - 1)) >> $clog2(LANES);
      elem <= '0;
      blk_beat <= '0;
      idx_acc <= idx0 * INDEX_MUL;
      n_r <= n;
    end else if (admit) begin
      beats_left <= beats_left - 1'b1;
      elem <= elem + 32'(LANES);
      blk_beat <= last_of_block ? '0 : blk_beat + 1'b1;
      idx_acc <= idx_acc + 32'(LANES) * INDEX_MUL;
    end
    p_cred <= p_cred + {{OUT_DEPTH_LOG2{1'b0}}, admit} - {{OUT_DEPTH_LOG2{1'b0}}, p_pop};
    ms_cred <= ms_cred + {{OUT_DEPTH_LOG2{1'b0}}, admit} - {{OUT_DEPTH_LOG2{1'b0}}, ms_pop};
    ex_cred <= ex_cred + {{EX_DEPTH_LOG2{1'b0}}, admit && first_of_block} - {{EX_DEPTH_LOG2{1'b0}}, ex_pop};
    if (rst) begin
      beats_left <= '0;
      p_cred <= '0;
      ms_cred <= '0;
      ex_cred <= '0;
    end
  end

  // ------------------------------------------------------------ stage 0
  logic v0;
  logic [LANES-1:0] mask0;
  logic last0;
  logic [HDR_W-1:0] hdr0;
  logic [32*LANES-1:0] p0, ms0, x0;
  logic [16*LANES-1:0] g0;

  always_ff @(posedge clk) begin
    v0 <= admit;
    last0 <= last_of_block;
    hdr0 <= hdr;
    p0 <= p_in_data;
    g0 <= g_in_data;
    ms0 <= ms_in_data;
    for (int l = 0; l < LANES; l++) begin
      mask0[l] <= (elem + 32'(l)) < n_r;
      x0[32*l +: 32] <= seed ^ (idx_acc + 32'(l) * INDEX_MUL);
    end
    if (rst) begin
      v0 <= 1'b0;
    end
  end

  // ------------------------------------------------------------ lanes
  wire logic [4:0] h0_dg = hdr0[40:36];
  wire logic [4:0] h0_dm = hdr0[35:31];
  wire logic [4:0] h0_ds = hdr0[30:26];
  wire logic [25:0] h0_eps = hdr0[25:0];

  logic [27*LANES-1:0] m_new;
  logic [26*LANES-1:0] s_new;
  logic [UM_W*LANES-1:0] u_m;
  logic [US_W*LANES-1:0] u_s;
  logic [32*LANES-1:0] p_new;
  logic [LANES-1:0] sat;

  for (genvar l = 0; l < LANES; l++) begin : g_lane
    adam_lane #(.G_BITS(G_BITS), .M_BITS(M_BITS), .S_BITS(S_BITS)) u_lane (
        .clk(clk),
        .beta1(beta1[19:0]), .beta2(beta2[19:0]), .alpha_m(alpha_m[adam_format_pkg::ALPHA_BITS-1:0]), .alpha_sh(alpha_sh[5:0]),
        .ratio_max(ratio_max[26:0]), .lwd(lwd), .stochastic(mode[0]),
        .p(p0[32*l +: 32]), .g(g0[16*l +: 16]), .m(ms0[32*l +: 16]), .s(ms0[32*l+16 +: 16]),
        .dg(h0_dg), .dm(h0_dm), .ds(h0_ds), .eweps(h0_eps), .x0(x0[32*l +: 32]),
        .m_new(m_new[27*l +: 27]), .s_new(s_new[26*l +: 26]), .u_m(u_m[UM_W*l +: UM_W]), .u_s(u_s[US_W*l +: US_W]),
        .p_new(p_new[32*l +: 32]), .sat(sat[l]));
  end

  // valid bits (reset) and side band (no reset) to the two taps
  logic [P_T:1] v_sr;
  always_ff @(posedge clk) begin
    v_sr <= {v_sr[P_T-1:1], v0};
    if (rst) begin
      v_sr <= '0;
    end
  end
  wire logic v_m = v_sr[M_T];
  wire logic v_p = v_sr[P_T];

  logic [LANES-1:0] mask_m, mask_p;
  logic last_m;
  logic [7:0] eg_m, ew_m;
  adam_delay #(.WIDTH(LANES + 17), .DEPTH(M_T)) u_dly_m (
      .clk(clk), .d({mask0, last0, hdr0[56:49], hdr0[48:41]}), .q({mask_m, last_m, eg_m, ew_m}));
  adam_delay #(.WIDTH(LANES), .DEPTH(P_T - M_T)) u_dly_p (.clk(clk), .d(mask_m), .q(mask_p));

  // ------------------------------------------------------------ parameters out, saturation count
  logic [LANE_W-1:0] sat_beat;
  always_comb begin
    sat_beat = '0;
    for (int l = 0; l < LANES; l++) begin
      sat_beat = sat_beat + LANE_W'(sat[l] && mask_p[l]);
    end
  end

  always_ff @(posedge clk) begin
    if (start) begin
      sat_count <= '0;
    end else if (v_p) begin
      sat_count <= sat_count + 32'(sat_beat);
    end
    if (rst) begin
      sat_count <= '0;
    end
  end

  /* verilator lint_off PINCONNECTEMPTY */  // credits keep these FIFOs from overflowing
  adam_fifo #(.WIDTH(32*LANES), .DEPTH_LOG2(OUT_DEPTH_LOG2)) u_p_fifo (
      .clk(clk), .rst(rst),
      .in_data(p_new), .in_valid(v_p), .in_ready(),
      .out_data(p_out_data), .out_valid(p_out_valid), .out_ready(p_out_ready),
      .count(p_out_count));
  /* verilator lint_on PINCONNECTEMPTY */
  assign p_pop = p_out_valid && p_out_ready;

  // ------------------------------------------------------------ block store
  // Bank wbank fills with the block at M_T while the other bank drains.
  logic [ST_W*LANES-1:0] store [2*NB];
  logic wbank;
  logic [NB_W-1:0] wbeat;
  logic [25:0] mmax_acc, smax_acc, mmax_beat, smax_beat;

  logic [ST_W*LANES-1:0] st_word;
  /* verilator lint_off UNUSEDSIGNAL */
  logic [26:0] ma;            // |m'| < 2**26
  /* verilator lint_on UNUSEDSIGNAL */
  always_comb begin
    mmax_beat = '0;
    smax_beat = '0;
    ma = '0;
    for (int l = 0; l < LANES; l++) begin
      ma = m_new[27*l + 26] ? 27'(-m_new[27*l +: 27]) : m_new[27*l +: 27];
      if (mask_m[l] && ma[25:0] > mmax_beat) mmax_beat = ma[25:0];
      if (mask_m[l] && s_new[26*l +: 26] > smax_beat) smax_beat = s_new[26*l +: 26];
      st_word[ST_W*l +: ST_W] = {m_new[27*l +: 27], s_new[26*l +: 26], u_m[UM_W*l +: UM_W], u_s[US_W*l +: US_W]};
    end
  end

  wire logic [25:0] mmax_fin = (mmax_beat > mmax_acc) ? mmax_beat : mmax_acc;
  wire logic [25:0] smax_fin = (smax_beat > smax_acc) ? smax_beat : smax_acc;

  // a finished block waiting for the drain
  logic req;
  logic req_bank;
  logic [NB_W-1:0] req_cnt;
  logic [25:0] req_mmax, req_smax;
  logic [7:0] req_eg, req_ew;

  always_ff @(posedge clk) begin
    if (v_m) begin
      store[{wbank, wbeat[NB_W-2:0]}] <= st_word;
    end
  end

  // drain
  logic d_busy;
  logic d_bank;
  logic [NB_W-1:0] d_beat, d_cnt;
  logic [4:0] d_lm, d_ls;

  function automatic logic [4:0] bitlen26(input logic [25:0] x);
    logic [4:0] r;
    r = '0;
    for (int i = 0; i < 26; i++) begin
      if (x[i]) r = 5'(i + 1);
    end
    bitlen26 = r;
  endfunction

  wire logic d_last = d_busy && (d_beat == d_cnt - 1'b1);
  wire logic d_start = req && (!d_busy || d_last);
  wire logic [4:0] lm = bitlen26(req_mmax);
  wire logic [4:0] ls = bitlen26(req_smax);
  /* verilator lint_off UNUSEDSIGNAL */  // new exponents lie in [-126, 127]
  wire logic signed [8:0] em_new = $signed({req_ew[7], req_ew}) - EXP_OFF + $signed({4'd0, lm});
  wire logic signed [8:0] es_new = $signed({req_ew[7], req_ew}) - EXP_OFF + $signed({4'd0, ls});
  /* verilator lint_on UNUSEDSIGNAL */
  wire logic [31:0] ex_word = {8'd0, (ls == 5'd0) ? EXP_ZERO : es_new[7:0], (lm == 5'd0) ? EXP_ZERO : em_new[7:0],
                               req_eg};

  always_ff @(posedge clk) begin
    if (v_m) begin
      if (last_m) begin
        req <= 1'b1;
        req_bank <= wbank;
        req_cnt <= wbeat + 1'b1;
        req_mmax <= mmax_fin;
        req_smax <= smax_fin;
        req_eg <= eg_m;
        req_ew <= ew_m;
        wbank <= !wbank;
        wbeat <= '0;
        mmax_acc <= '0;
        smax_acc <= '0;
      end else begin
        wbeat <= wbeat + 1'b1;
        mmax_acc <= mmax_fin;
        smax_acc <= smax_fin;
      end
    end
    if (d_start) begin
      if (!(v_m && last_m)) begin
        req <= 1'b0;
      end
      d_busy <= 1'b1;
      d_bank <= req_bank;
      d_cnt <= req_cnt;
      d_beat <= '0;
      d_lm <= lm;
      d_ls <= ls;
    end else if (d_busy) begin
      d_beat <= d_beat + 1'b1;
      if (d_last) begin
        d_busy <= 1'b0;
      end
    end
    if (rst || start) begin
      req <= 1'b0;
      wbank <= 1'b0;
      wbeat <= '0;
      mmax_acc <= '0;
      smax_acc <= '0;
      d_busy <= 1'b0;
    end
  end

  // ex word of a block, pushed when its drain starts
  /* verilator lint_off PINCONNECTEMPTY */  // credits keep these FIFOs from overflowing
  adam_fifo #(.WIDTH(32), .DEPTH_LOG2(EX_DEPTH_LOG2)) u_ex_fifo (
      .clk(clk), .rst(rst),
      .in_data(ex_word), .in_valid(d_start), .in_ready(),
      .out_data(ex_out_data), .out_valid(ex_out_valid), .out_ready(ex_out_ready),
      .count(ex_out_count));
  /* verilator lint_on PINCONNECTEMPTY */
  assign ex_pop = ex_out_valid && ex_out_ready;

  // read the store, then quantise
  logic rd_v;
  logic [ST_W*LANES-1:0] rd_word;
  logic [4:0] rd_lm, rd_ls;
  logic stoch_r;

  always_ff @(posedge clk) begin
    rd_word <= store[{d_bank, d_beat[NB_W-2:0]}];
  end

  always_ff @(posedge clk) begin
    rd_v <= d_busy;
    rd_lm <= d_lm;
    rd_ls <= d_ls;
    stoch_r <= mode[0];
    if (rst) begin
      rd_v <= 1'b0;
    end
  end

  // round(x, k, u): nearest even, or stochastic with the low k bits of u (k <= 25)
  function automatic logic signed [31:0] round_sh(input logic signed [31:0] x, input logic [4:0] k,
                                                  input logic [31:0] u, input logic stoch);
    logic signed [31:0] add;
    if (k == 5'd0) begin
      add = '0;
    end else if (stoch) begin
      add = $signed(u & ((32'd1 << k) - 32'd1));
    end else begin
      add = (32'sd1 <<< (k - 5'd1)) - 32'sd1 + ((x >>> k) & 32'sd1);
    end
    round_sh = (x + add) >>> k;
  endfunction

  logic [32*LANES-1:0] q_word;
  logic signed [26:0] mv;
  logic [25:0] sv;
  logic [UM_W-1:0] umv;
  logic [US_W-1:0] usv;
  logic signed [31:0] mq, sq;
  always_comb begin
    {mv, sv, umv, usv} = '0;
    mq = '0;
    sq = '0;
    for (int l = 0; l < LANES; l++) begin
      {mv, sv, umv, usv} = rd_word[ST_W*l +: ST_W];
      if (rd_lm <= 5'(M_MAG)) begin
        mq = {{5{mv[26]}}, mv} <<< (5'(M_MAG) - rd_lm);
      end else begin
        mq = round_sh({{5{mv[26]}}, mv}, rd_lm - 5'(M_MAG), 32'(umv), stoch_r);
        if (mq > M_MAX) mq = M_MAX;
        if (mq < -M_MAX) mq = -M_MAX;
      end
      if (rd_ls <= 5'(S_BITS)) begin
        sq = {6'd0, sv} << (5'(S_BITS) - rd_ls);
      end else begin
        sq = round_sh({6'd0, sv}, rd_ls - 5'(S_BITS), 32'(usv), stoch_r);
        if (sq > S_MAX) sq = S_MAX;
      end
      q_word[32*l +: 32] = {sq[15:0], mq[15:0]};
    end
  end

  /* verilator lint_off PINCONNECTEMPTY */  // credits keep these FIFOs from overflowing
  adam_fifo #(.WIDTH(32*LANES), .DEPTH_LOG2(OUT_DEPTH_LOG2)) u_ms_fifo (
      .clk(clk), .rst(rst),
      .in_data(q_word), .in_valid(rd_v), .in_ready(),
      .out_data(ms_out_data), .out_valid(ms_out_valid), .out_ready(ms_out_ready),
      .count(ms_out_count));
  /* verilator lint_on PINCONNECTEMPTY */
  assign ms_pop = ms_out_valid && ms_out_ready;

endmodule

`default_nettype wire
