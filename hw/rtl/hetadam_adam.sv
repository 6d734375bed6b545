// hetadam_adam: the fixed-point Adam update as an AXI IP with the interface of
// the Vitis HLS kernel (ap_ctrl_hs over AXI4-Lite `control`, one AXI4 master
// per array). LANES elements per clock; the p, g and ms buses are LANES
// elements wide, ex is 32 bits, and no bus is narrower than 32 bits (AXI
// SmartConnect's narrowest endpoint): at LANES = 1 the g bus carries two
// gradients a beat. Each array base must be aligned to its bus width (64-byte
// alignment always is). The fixed format's widths are parameters too, DEFAULT's
// unless a build sets them (adam_format_pkg, generated from
// host/hetadam/numerics/formats.py; the memory layout is the same for every format).
`default_nettype none

module hetadam_adam #(
    parameter int LANES = 1,            // 1, 2, 4, 8 or 16 elements per clock
    parameter int BURST_LOG2 = 6,       // AXI bursts of up to 64 beats
    parameter int RD_FIFO_LOG2 = 7,     // read FIFOs (beats)
    parameter int BLOCK = adam_format_pkg::BLOCK,    // elements per shared exponent: a power of two, 32 to 4096
    parameter int G_BITS = adam_format_pkg::G_BITS,  // gradient mantissa bits, 2 to 16
    parameter int M_BITS = adam_format_pkg::M_BITS,  // first-moment mantissa bits, 2 to 16
    parameter int S_BITS = adam_format_pkg::S_BITS   // root-second-moment mantissa bits, 1 to 16
) (
    input  wire logic         ap_clk,
    input  wire logic         ap_rst_n,
    /* verilator lint_off SYMRSVDWORD */  // the Vitis HLS port name
    output      logic         interrupt,
    /* verilator lint_on SYMRSVDWORD */

    // AXI4-Lite slave: control
    input  wire logic [7:0]   s_axi_control_AWADDR,
    input  wire logic         s_axi_control_AWVALID,
    output      logic         s_axi_control_AWREADY,
    input  wire logic [31:0]  s_axi_control_WDATA,
    input  wire logic [3:0]   s_axi_control_WSTRB,
    input  wire logic         s_axi_control_WVALID,
    output      logic         s_axi_control_WREADY,
    output      logic [1:0]   s_axi_control_BRESP,
    output      logic         s_axi_control_BVALID,
    input  wire logic         s_axi_control_BREADY,
    input  wire logic [7:0]   s_axi_control_ARADDR,
    input  wire logic         s_axi_control_ARVALID,
    output      logic         s_axi_control_ARREADY,
    output      logic [31:0]  s_axi_control_RDATA,
    output      logic [1:0]   s_axi_control_RRESP,
    output      logic         s_axi_control_RVALID,
    input  wire logic         s_axi_control_RREADY,

    // AXI4 master: p
    output      logic [0:0]          m_axi_gmem_p_AWID,
    output      logic [63:0]         m_axi_gmem_p_AWADDR,
    output      logic [7:0]          m_axi_gmem_p_AWLEN,
    output      logic [2:0]          m_axi_gmem_p_AWSIZE,
    output      logic [1:0]          m_axi_gmem_p_AWBURST,
    output      logic [0:0]          m_axi_gmem_p_AWLOCK,
    output      logic [3:0]          m_axi_gmem_p_AWCACHE,
    output      logic [2:0]          m_axi_gmem_p_AWPROT,
    output      logic [3:0]          m_axi_gmem_p_AWQOS,
    output      logic [3:0]          m_axi_gmem_p_AWREGION,
    output      logic                m_axi_gmem_p_AWVALID,
    input  wire logic                m_axi_gmem_p_AWREADY,
    output      logic [32*LANES-1:0]   m_axi_gmem_p_WDATA,
    output      logic [32*LANES/8-1:0] m_axi_gmem_p_WSTRB,
    output      logic                m_axi_gmem_p_WLAST,
    output      logic                m_axi_gmem_p_WVALID,
    input  wire logic                m_axi_gmem_p_WREADY,
    input  wire logic [0:0]          m_axi_gmem_p_BID,
    input  wire logic [1:0]          m_axi_gmem_p_BRESP,
    input  wire logic                m_axi_gmem_p_BVALID,
    output      logic                m_axi_gmem_p_BREADY,
    output      logic [0:0]          m_axi_gmem_p_ARID,
    output      logic [63:0]         m_axi_gmem_p_ARADDR,
    output      logic [7:0]          m_axi_gmem_p_ARLEN,
    output      logic [2:0]          m_axi_gmem_p_ARSIZE,
    output      logic [1:0]          m_axi_gmem_p_ARBURST,
    output      logic [0:0]          m_axi_gmem_p_ARLOCK,
    output      logic [3:0]          m_axi_gmem_p_ARCACHE,
    output      logic [2:0]          m_axi_gmem_p_ARPROT,
    output      logic [3:0]          m_axi_gmem_p_ARQOS,
    output      logic [3:0]          m_axi_gmem_p_ARREGION,
    output      logic                m_axi_gmem_p_ARVALID,
    input  wire logic                m_axi_gmem_p_ARREADY,
    input  wire logic [0:0]          m_axi_gmem_p_RID,
    input  wire logic [32*LANES-1:0]   m_axi_gmem_p_RDATA,
    input  wire logic [1:0]          m_axi_gmem_p_RRESP,
    input  wire logic                m_axi_gmem_p_RLAST,
    input  wire logic                m_axi_gmem_p_RVALID,
    output      logic                m_axi_gmem_p_RREADY,
    // AXI4 master: g
    output      logic [0:0]          m_axi_gmem_g_AWID,
    output      logic [63:0]         m_axi_gmem_g_AWADDR,
    output      logic [7:0]          m_axi_gmem_g_AWLEN,
    output      logic [2:0]          m_axi_gmem_g_AWSIZE,
    output      logic [1:0]          m_axi_gmem_g_AWBURST,
    output      logic [0:0]          m_axi_gmem_g_AWLOCK,
    output      logic [3:0]          m_axi_gmem_g_AWCACHE,
    output      logic [2:0]          m_axi_gmem_g_AWPROT,
    output      logic [3:0]          m_axi_gmem_g_AWQOS,
    output      logic [3:0]          m_axi_gmem_g_AWREGION,
    output      logic                m_axi_gmem_g_AWVALID,
    /* verilator lint_off UNUSEDSIGNAL */  // g is read only
    input  wire logic                m_axi_gmem_g_AWREADY,
    output      logic [(LANES > 1 ? 16*LANES : 32)-1:0]   m_axi_gmem_g_WDATA,
    output      logic [(LANES > 1 ? 16*LANES : 32)/8-1:0] m_axi_gmem_g_WSTRB,
    output      logic                m_axi_gmem_g_WLAST,
    output      logic                m_axi_gmem_g_WVALID,
    input  wire logic                m_axi_gmem_g_WREADY,
    input  wire logic [0:0]          m_axi_gmem_g_BID,
    input  wire logic [1:0]          m_axi_gmem_g_BRESP,
    input  wire logic                m_axi_gmem_g_BVALID,
    /* verilator lint_on UNUSEDSIGNAL */
    output      logic                m_axi_gmem_g_BREADY,
    output      logic [0:0]          m_axi_gmem_g_ARID,
    output      logic [63:0]         m_axi_gmem_g_ARADDR,
    output      logic [7:0]          m_axi_gmem_g_ARLEN,
    output      logic [2:0]          m_axi_gmem_g_ARSIZE,
    output      logic [1:0]          m_axi_gmem_g_ARBURST,
    output      logic [0:0]          m_axi_gmem_g_ARLOCK,
    output      logic [3:0]          m_axi_gmem_g_ARCACHE,
    output      logic [2:0]          m_axi_gmem_g_ARPROT,
    output      logic [3:0]          m_axi_gmem_g_ARQOS,
    output      logic [3:0]          m_axi_gmem_g_ARREGION,
    output      logic                m_axi_gmem_g_ARVALID,
    input  wire logic                m_axi_gmem_g_ARREADY,
    input  wire logic [0:0]          m_axi_gmem_g_RID,
    input  wire logic [(LANES > 1 ? 16*LANES : 32)-1:0]   m_axi_gmem_g_RDATA,
    input  wire logic [1:0]          m_axi_gmem_g_RRESP,
    input  wire logic                m_axi_gmem_g_RLAST,
    input  wire logic                m_axi_gmem_g_RVALID,
    output      logic                m_axi_gmem_g_RREADY,
    // AXI4 master: ms
    output      logic [0:0]          m_axi_gmem_ms_AWID,
    output      logic [63:0]         m_axi_gmem_ms_AWADDR,
    output      logic [7:0]          m_axi_gmem_ms_AWLEN,
    output      logic [2:0]          m_axi_gmem_ms_AWSIZE,
    output      logic [1:0]          m_axi_gmem_ms_AWBURST,
    output      logic [0:0]          m_axi_gmem_ms_AWLOCK,
    output      logic [3:0]          m_axi_gmem_ms_AWCACHE,
    output      logic [2:0]          m_axi_gmem_ms_AWPROT,
    output      logic [3:0]          m_axi_gmem_ms_AWQOS,
    output      logic [3:0]          m_axi_gmem_ms_AWREGION,
    output      logic                m_axi_gmem_ms_AWVALID,
    input  wire logic                m_axi_gmem_ms_AWREADY,
    output      logic [32*LANES-1:0]   m_axi_gmem_ms_WDATA,
    output      logic [32*LANES/8-1:0] m_axi_gmem_ms_WSTRB,
    output      logic                m_axi_gmem_ms_WLAST,
    output      logic                m_axi_gmem_ms_WVALID,
    input  wire logic                m_axi_gmem_ms_WREADY,
    input  wire logic [0:0]          m_axi_gmem_ms_BID,
    input  wire logic [1:0]          m_axi_gmem_ms_BRESP,
    input  wire logic                m_axi_gmem_ms_BVALID,
    output      logic                m_axi_gmem_ms_BREADY,
    output      logic [0:0]          m_axi_gmem_ms_ARID,
    output      logic [63:0]         m_axi_gmem_ms_ARADDR,
    output      logic [7:0]          m_axi_gmem_ms_ARLEN,
    output      logic [2:0]          m_axi_gmem_ms_ARSIZE,
    output      logic [1:0]          m_axi_gmem_ms_ARBURST,
    output      logic [0:0]          m_axi_gmem_ms_ARLOCK,
    output      logic [3:0]          m_axi_gmem_ms_ARCACHE,
    output      logic [2:0]          m_axi_gmem_ms_ARPROT,
    output      logic [3:0]          m_axi_gmem_ms_ARQOS,
    output      logic [3:0]          m_axi_gmem_ms_ARREGION,
    output      logic                m_axi_gmem_ms_ARVALID,
    input  wire logic                m_axi_gmem_ms_ARREADY,
    input  wire logic [0:0]          m_axi_gmem_ms_RID,
    input  wire logic [32*LANES-1:0]   m_axi_gmem_ms_RDATA,
    input  wire logic [1:0]          m_axi_gmem_ms_RRESP,
    input  wire logic                m_axi_gmem_ms_RLAST,
    input  wire logic                m_axi_gmem_ms_RVALID,
    output      logic                m_axi_gmem_ms_RREADY,
    // AXI4 master: ex
    output      logic [0:0]          m_axi_gmem_ex_AWID,
    output      logic [63:0]         m_axi_gmem_ex_AWADDR,
    output      logic [7:0]          m_axi_gmem_ex_AWLEN,
    output      logic [2:0]          m_axi_gmem_ex_AWSIZE,
    output      logic [1:0]          m_axi_gmem_ex_AWBURST,
    output      logic [0:0]          m_axi_gmem_ex_AWLOCK,
    output      logic [3:0]          m_axi_gmem_ex_AWCACHE,
    output      logic [2:0]          m_axi_gmem_ex_AWPROT,
    output      logic [3:0]          m_axi_gmem_ex_AWQOS,
    output      logic [3:0]          m_axi_gmem_ex_AWREGION,
    output      logic                m_axi_gmem_ex_AWVALID,
    input  wire logic                m_axi_gmem_ex_AWREADY,
    output      logic [32-1:0]   m_axi_gmem_ex_WDATA,
    output      logic [32/8-1:0] m_axi_gmem_ex_WSTRB,
    output      logic                m_axi_gmem_ex_WLAST,
    output      logic                m_axi_gmem_ex_WVALID,
    input  wire logic                m_axi_gmem_ex_WREADY,
    input  wire logic [0:0]          m_axi_gmem_ex_BID,
    input  wire logic [1:0]          m_axi_gmem_ex_BRESP,
    input  wire logic                m_axi_gmem_ex_BVALID,
    output      logic                m_axi_gmem_ex_BREADY,
    output      logic [0:0]          m_axi_gmem_ex_ARID,
    output      logic [63:0]         m_axi_gmem_ex_ARADDR,
    output      logic [7:0]          m_axi_gmem_ex_ARLEN,
    output      logic [2:0]          m_axi_gmem_ex_ARSIZE,
    output      logic [1:0]          m_axi_gmem_ex_ARBURST,
    output      logic [0:0]          m_axi_gmem_ex_ARLOCK,
    output      logic [3:0]          m_axi_gmem_ex_ARCACHE,
    output      logic [2:0]          m_axi_gmem_ex_ARPROT,
    output      logic [3:0]          m_axi_gmem_ex_ARQOS,
    output      logic [3:0]          m_axi_gmem_ex_ARREGION,
    output      logic                m_axi_gmem_ex_ARVALID,
    input  wire logic                m_axi_gmem_ex_ARREADY,
    input  wire logic [0:0]          m_axi_gmem_ex_RID,
    input  wire logic [32-1:0]   m_axi_gmem_ex_RDATA,
    input  wire logic [1:0]          m_axi_gmem_ex_RRESP,
    input  wire logic                m_axi_gmem_ex_RLAST,
    input  wire logic                m_axi_gmem_ex_RVALID,
    output      logic                m_axi_gmem_ex_RREADY
);

  localparam int OUT_DEPTH_LOG2 = 8;
  localparam int EX_DEPTH_LOG2 = 5;
  // a writer needs a whole burst in its FIFO before the address goes out
  localparam int EX_BURST_LOG2 = (BURST_LOG2 < EX_DEPTH_LOG2 - 1) ? BURST_LOG2 : EX_DEPTH_LOG2 - 1;
  localparam int LANE_LOG2 = $clog2(LANES);
  // the g bus (its width in the port list): LANES gradients a beat, two at LANES = 1
  localparam int G_W = (LANES > 1) ? 16 * LANES : 32;
  localparam int G_ELEMS = G_W / 16;

`ifndef __ICARUS__  // Icarus 11 reads no elaboration-time $fatal (a syntax error); Verilator and Vivado do
  if (LANES != 1 && LANES != 2 && LANES != 4 && LANES != 8 && LANES != 16) begin : g_check_lanes
    $fatal(0, "Error: LANES = %0d; it must be 1, 2, 4, 8 or 16 (instance %m)", LANES);
  end
  if (BURST_LOG2 < 0 || BURST_LOG2 > 8) begin : g_check_burst
    $fatal(0, "Error: BURST_LOG2 = %0d; AXI4 bursts are 1 to 256 beats, so 0 to 8 (instance %m)", BURST_LOG2);
  end
  if (BLOCK < adam_format_pkg::BLOCK_MIN || BLOCK > adam_format_pkg::BLOCK_MAX || (BLOCK & (BLOCK - 1)) != 0)
  begin : g_check_block
    $fatal(0, "Error: BLOCK = %0d; it must be a power of two from %0d to %0d (instance %m)", BLOCK,
           adam_format_pkg::BLOCK_MIN, adam_format_pkg::BLOCK_MAX);
  end
  if (G_BITS < 2 || G_BITS > adam_format_pkg::CONTAINER_BITS || M_BITS < 2 || M_BITS > adam_format_pkg::CONTAINER_BITS
      || S_BITS < 1 || S_BITS > adam_format_pkg::CONTAINER_BITS) begin : g_check_bits
    $fatal(0, "Error: G_BITS = %0d, M_BITS = %0d, S_BITS = %0d; G and M take 2 to %0d bits, S 1 to %0d (instance %m)",
           G_BITS, M_BITS, S_BITS, adam_format_pkg::CONTAINER_BITS, adam_format_pkg::CONTAINER_BITS);
  end
  if (RD_FIFO_LOG2 < BURST_LOG2) begin : g_check_fifo
    $fatal(0, "Error: RD_FIFO_LOG2 = %0d is below BURST_LOG2 = %0d: a read FIFO must hold a whole burst (instance %m)",
           RD_FIFO_LOG2, BURST_LOG2);
  end
`endif

  wire logic rst = !ap_rst_n;

  // ------------------------------------------------------------ control
  logic ap_start, ap_done, ap_idle;
  logic [31:0] c_n, c_idx0, c_seed, c_beta1, c_beta2, c_eps_m, c_eps_e, c_alpha_m, c_alpha_sh;
  logic [31:0] c_ratio_max, c_lwd, c_mode;
  logic [63:0] c_p, c_g, c_ms, c_ex;
  logic [31:0] sat_count;

  adam_ctrl_s_axi u_ctrl (
      .clk(ap_clk), .rst(rst),
      .s_axi_awaddr(s_axi_control_AWADDR), .s_axi_awvalid(s_axi_control_AWVALID),
      .s_axi_awready(s_axi_control_AWREADY),
      .s_axi_wdata(s_axi_control_WDATA), .s_axi_wstrb(s_axi_control_WSTRB),
      .s_axi_wvalid(s_axi_control_WVALID), .s_axi_wready(s_axi_control_WREADY),
      .s_axi_bresp(s_axi_control_BRESP), .s_axi_bvalid(s_axi_control_BVALID),
      .s_axi_bready(s_axi_control_BREADY),
      .s_axi_araddr(s_axi_control_ARADDR), .s_axi_arvalid(s_axi_control_ARVALID),
      .s_axi_arready(s_axi_control_ARREADY),
      .s_axi_rdata(s_axi_control_RDATA), .s_axi_rresp(s_axi_control_RRESP),
      .s_axi_rvalid(s_axi_control_RVALID), .s_axi_rready(s_axi_control_RREADY),
      .interrupt(interrupt),
      .ap_start(ap_start), .ap_done(ap_done), .ap_idle(ap_idle), .ap_ready(ap_done),
      .n(c_n), .idx0(c_idx0), .seed(c_seed), .beta1(c_beta1), .beta2(c_beta2),
      .eps_m(c_eps_m), .eps_e(c_eps_e), .alpha_m(c_alpha_m), .alpha_sh(c_alpha_sh),
      .ratio_max(c_ratio_max), .lwd(c_lwd), .mode(c_mode),
      .p(c_p), .g(c_g), .ms(c_ms), .ex(c_ex),
      .sat_count(sat_count), .sat_count_ap_vld(ap_done));

  // ------------------------------------------------------------ run sequencing
  // IDLE -> LATCH (arguments copied) -> GO (one clock: movers and core start) -> RUN
  typedef enum logic [1:0] {S_IDLE, S_LATCH, S_GO, S_RUN} state_t;
  state_t state;

  logic [31:0] r_n, r_idx0, r_seed, r_beta1, r_beta2, r_eps_m, r_eps_e, r_alpha_m, r_alpha_sh;
  logic [31:0] r_ratio_max, r_lwd, r_mode;
  logic [63:0] r_p, r_g, r_ms, r_ex;
  logic [32:0] nbeat, nblk, gbeat;
  logic [4*LANES-1:0] last_strb_32;

  logic p_wr_busy, ms_wr_busy, ex_wr_busy;
  wire logic go = state == S_GO;

  assign ap_idle = state == S_IDLE;
  assign ap_done = (state == S_RUN) && !p_wr_busy && !ms_wr_busy && !ex_wr_busy;

  always_ff @(posedge ap_clk) begin
    case (state)
      S_IDLE: if (ap_start) state <= S_LATCH;
      S_LATCH: state <= S_GO;
      S_GO: state <= S_RUN;
      S_RUN: if (ap_done) state <= S_IDLE;
      default: state <= S_IDLE;
    endcase
    if (state == S_IDLE) begin
      r_n <= c_n;
      r_idx0 <= c_idx0;
      r_seed <= c_seed;
      r_beta1 <= c_beta1;
      r_beta2 <= c_beta2;
      r_eps_m <= c_eps_m;
      r_eps_e <= c_eps_e;
      r_alpha_m <= c_alpha_m;
      r_alpha_sh <= c_alpha_sh;
      r_ratio_max <= c_ratio_max;
      r_lwd <= c_lwd;
      r_mode <= c_mode;
      r_p <= c_p;
      r_g <= c_g;
      r_ms <= c_ms;
      r_ex <= c_ex;
    end
    if (state == S_LATCH) begin
      nbeat <= ({1'b0, r_n} + 33'(LANES - 1)) >> LANE_LOG2;
      gbeat <= ({1'b0, r_n} + 33'(G_ELEMS - 1)) >> $clog2(G_ELEMS);
      nblk <= ({1'b0, r_n} + 33'(BLOCK - 1)) >> $clog2(BLOCK);
      for (int l = 0; l < LANES; l++) begin
        // lanes of the last beat that hold elements
        last_strb_32[4*l +: 4] <= (LANE_LOG2 == 0 || 32'(l) <= ((r_n - 32'd1) & 32'(LANES - 1))) ? 4'hF : 4'h0;
      end
    end
    if (rst) begin
      state <= S_IDLE;
    end
  end

  // ------------------------------------------------------------ data movers and core
  logic [31:0] ex_rd_data;
  logic ex_rd_valid, ex_rd_ready;
  logic [32*LANES-1:0] p_rd_data, ms_rd_data;
  logic [16*LANES-1:0] g_rd_data;
  logic [G_W-1:0] g_bus_data;
  logic g_bus_valid, g_bus_ready;
  logic p_rd_valid, p_rd_ready, g_rd_valid, g_rd_ready, ms_rd_valid, ms_rd_ready;

  logic [32*LANES-1:0] p_wr_data, ms_wr_data;
  logic [31:0] ex_wr_data;
  logic p_wr_valid, p_wr_ready, ms_wr_valid, ms_wr_ready, ex_wr_valid, ex_wr_ready;
  logic [OUT_DEPTH_LOG2:0] p_wr_count, ms_wr_count;
  logic [EX_DEPTH_LOG2:0] ex_wr_count;

  adam_core #(
      .LANES(LANES), .OUT_DEPTH_LOG2(OUT_DEPTH_LOG2), .EX_DEPTH_LOG2(EX_DEPTH_LOG2),
      .BLOCK(BLOCK), .G_BITS(G_BITS), .M_BITS(M_BITS), .S_BITS(S_BITS)
  ) u_core (
      .clk(ap_clk), .rst(rst), .start(go),
      .n(r_n), .idx0(r_idx0), .seed(r_seed), .beta1(r_beta1), .beta2(r_beta2),
      .eps_m(r_eps_m), .eps_e(r_eps_e), .alpha_m(r_alpha_m), .alpha_sh(r_alpha_sh),
      .ratio_max(r_ratio_max), .lwd(r_lwd), .mode(r_mode),
      .ex_in_data(ex_rd_data), .ex_in_valid(ex_rd_valid), .ex_in_ready(ex_rd_ready),
      .p_in_data(p_rd_data), .p_in_valid(p_rd_valid), .p_in_ready(p_rd_ready),
      .g_in_data(g_rd_data), .g_in_valid(g_rd_valid), .g_in_ready(g_rd_ready),
      .ms_in_data(ms_rd_data), .ms_in_valid(ms_rd_valid), .ms_in_ready(ms_rd_ready),
      .p_out_data(p_wr_data), .p_out_valid(p_wr_valid), .p_out_ready(p_wr_ready), .p_out_count(p_wr_count),
      .ms_out_data(ms_wr_data), .ms_out_valid(ms_wr_valid), .ms_out_ready(ms_wr_ready),
      .ms_out_count(ms_wr_count),
      .ex_out_data(ex_wr_data), .ex_out_valid(ex_wr_valid), .ex_out_ready(ex_wr_ready),
      .ex_out_count(ex_wr_count),
      .sat_count(sat_count));

  adam_axi_rd #(.DATA_W(32*LANES), .BURST_LOG2(BURST_LOG2), .FIFO_LOG2(RD_FIFO_LOG2)) u_rd_p (
      .clk(ap_clk), .rst(rst), .start(go), .base(r_p), .beats(nbeat),
      .m_axi_arid(m_axi_gmem_p_ARID),
      .m_axi_araddr(m_axi_gmem_p_ARADDR),
      .m_axi_arlen(m_axi_gmem_p_ARLEN),
      .m_axi_arsize(m_axi_gmem_p_ARSIZE),
      .m_axi_arburst(m_axi_gmem_p_ARBURST),
      .m_axi_arlock(m_axi_gmem_p_ARLOCK),
      .m_axi_arcache(m_axi_gmem_p_ARCACHE),
      .m_axi_arprot(m_axi_gmem_p_ARPROT),
      .m_axi_arqos(m_axi_gmem_p_ARQOS),
      .m_axi_arregion(m_axi_gmem_p_ARREGION),
      .m_axi_arvalid(m_axi_gmem_p_ARVALID),
      .m_axi_arready(m_axi_gmem_p_ARREADY),
      .m_axi_rid(m_axi_gmem_p_RID),
      .m_axi_rdata(m_axi_gmem_p_RDATA),
      .m_axi_rresp(m_axi_gmem_p_RRESP),
      .m_axi_rlast(m_axi_gmem_p_RLAST),
      .m_axi_rvalid(m_axi_gmem_p_RVALID),
      .m_axi_rready(m_axi_gmem_p_RREADY),
      .out_data(p_rd_data), .out_valid(p_rd_valid), .out_ready(p_rd_ready));

  adam_axi_wr #(.DATA_W(32*LANES), .BURST_LOG2(BURST_LOG2), .CNT_W(OUT_DEPTH_LOG2 + 1)) u_wr_p (
      .clk(ap_clk), .rst(rst), .start(go), .base(r_p), .beats(nbeat),
      .last_strb(last_strb_32), .busy(p_wr_busy),
      .in_data(p_wr_data), .in_valid(p_wr_valid), .in_ready(p_wr_ready), .in_count(p_wr_count),
      .m_axi_awid(m_axi_gmem_p_AWID),
      .m_axi_awaddr(m_axi_gmem_p_AWADDR),
      .m_axi_awlen(m_axi_gmem_p_AWLEN),
      .m_axi_awsize(m_axi_gmem_p_AWSIZE),
      .m_axi_awburst(m_axi_gmem_p_AWBURST),
      .m_axi_awlock(m_axi_gmem_p_AWLOCK),
      .m_axi_awcache(m_axi_gmem_p_AWCACHE),
      .m_axi_awprot(m_axi_gmem_p_AWPROT),
      .m_axi_awqos(m_axi_gmem_p_AWQOS),
      .m_axi_awregion(m_axi_gmem_p_AWREGION),
      .m_axi_awvalid(m_axi_gmem_p_AWVALID),
      .m_axi_awready(m_axi_gmem_p_AWREADY),
      .m_axi_wdata(m_axi_gmem_p_WDATA),
      .m_axi_wstrb(m_axi_gmem_p_WSTRB),
      .m_axi_wlast(m_axi_gmem_p_WLAST),
      .m_axi_wvalid(m_axi_gmem_p_WVALID),
      .m_axi_wready(m_axi_gmem_p_WREADY),
      .m_axi_bid(m_axi_gmem_p_BID),
      .m_axi_bresp(m_axi_gmem_p_BRESP),
      .m_axi_bvalid(m_axi_gmem_p_BVALID),
      .m_axi_bready(m_axi_gmem_p_BREADY));

  adam_axi_rd #(.DATA_W(G_W), .BURST_LOG2(BURST_LOG2), .FIFO_LOG2(RD_FIFO_LOG2)) u_rd_g (
      .clk(ap_clk), .rst(rst), .start(go), .base(r_g), .beats(gbeat),
      .m_axi_arid(m_axi_gmem_g_ARID),
      .m_axi_araddr(m_axi_gmem_g_ARADDR),
      .m_axi_arlen(m_axi_gmem_g_ARLEN),
      .m_axi_arsize(m_axi_gmem_g_ARSIZE),
      .m_axi_arburst(m_axi_gmem_g_ARBURST),
      .m_axi_arlock(m_axi_gmem_g_ARLOCK),
      .m_axi_arcache(m_axi_gmem_g_ARCACHE),
      .m_axi_arprot(m_axi_gmem_g_ARPROT),
      .m_axi_arqos(m_axi_gmem_g_ARQOS),
      .m_axi_arregion(m_axi_gmem_g_ARREGION),
      .m_axi_arvalid(m_axi_gmem_g_ARVALID),
      .m_axi_arready(m_axi_gmem_g_ARREADY),
      .m_axi_rid(m_axi_gmem_g_RID),
      .m_axi_rdata(m_axi_gmem_g_RDATA),
      .m_axi_rresp(m_axi_gmem_g_RRESP),
      .m_axi_rlast(m_axi_gmem_g_RLAST),
      .m_axi_rvalid(m_axi_gmem_g_RVALID),
      .m_axi_rready(m_axi_gmem_g_RREADY),
      .out_data(g_bus_data), .out_valid(g_bus_valid), .out_ready(g_bus_ready));

  if (G_W == 16 * LANES) begin : g_g_beats
    assign g_rd_data = g_bus_data;
    assign g_rd_valid = g_bus_valid;
    assign g_bus_ready = g_rd_ready;
  end else begin : g_g_split
    // a bus word holds more gradients than a beat of the core takes
    adam_downsize #(.IN_W(G_W), .OUT_W(16 * LANES)) u_g_split (
        .clk(ap_clk), .rst(rst), .start(go), .count(nbeat),
        .in_data(g_bus_data), .in_valid(g_bus_valid), .in_ready(g_bus_ready),
        .out_data(g_rd_data), .out_valid(g_rd_valid), .out_ready(g_rd_ready));
  end

  assign m_axi_gmem_g_AWID = '0;
  assign m_axi_gmem_g_AWADDR = '0;
  assign m_axi_gmem_g_AWLEN = '0;
  assign m_axi_gmem_g_AWSIZE = '0;
  assign m_axi_gmem_g_AWBURST = '0;
  assign m_axi_gmem_g_AWLOCK = '0;
  assign m_axi_gmem_g_AWCACHE = '0;
  assign m_axi_gmem_g_AWPROT = '0;
  assign m_axi_gmem_g_AWQOS = '0;
  assign m_axi_gmem_g_AWREGION = '0;
  assign m_axi_gmem_g_AWVALID = '0;
  assign m_axi_gmem_g_WDATA = '0;
  assign m_axi_gmem_g_WSTRB = '0;
  assign m_axi_gmem_g_WLAST = '0;
  assign m_axi_gmem_g_WVALID = '0;
  assign m_axi_gmem_g_BREADY = 1'b1;

  adam_axi_rd #(.DATA_W(32*LANES), .BURST_LOG2(BURST_LOG2), .FIFO_LOG2(RD_FIFO_LOG2)) u_rd_ms (
      .clk(ap_clk), .rst(rst), .start(go), .base(r_ms), .beats(nbeat),
      .m_axi_arid(m_axi_gmem_ms_ARID),
      .m_axi_araddr(m_axi_gmem_ms_ARADDR),
      .m_axi_arlen(m_axi_gmem_ms_ARLEN),
      .m_axi_arsize(m_axi_gmem_ms_ARSIZE),
      .m_axi_arburst(m_axi_gmem_ms_ARBURST),
      .m_axi_arlock(m_axi_gmem_ms_ARLOCK),
      .m_axi_arcache(m_axi_gmem_ms_ARCACHE),
      .m_axi_arprot(m_axi_gmem_ms_ARPROT),
      .m_axi_arqos(m_axi_gmem_ms_ARQOS),
      .m_axi_arregion(m_axi_gmem_ms_ARREGION),
      .m_axi_arvalid(m_axi_gmem_ms_ARVALID),
      .m_axi_arready(m_axi_gmem_ms_ARREADY),
      .m_axi_rid(m_axi_gmem_ms_RID),
      .m_axi_rdata(m_axi_gmem_ms_RDATA),
      .m_axi_rresp(m_axi_gmem_ms_RRESP),
      .m_axi_rlast(m_axi_gmem_ms_RLAST),
      .m_axi_rvalid(m_axi_gmem_ms_RVALID),
      .m_axi_rready(m_axi_gmem_ms_RREADY),
      .out_data(ms_rd_data), .out_valid(ms_rd_valid), .out_ready(ms_rd_ready));

  adam_axi_wr #(.DATA_W(32*LANES), .BURST_LOG2(BURST_LOG2), .CNT_W(OUT_DEPTH_LOG2 + 1)) u_wr_ms (
      .clk(ap_clk), .rst(rst), .start(go), .base(r_ms), .beats(nbeat),
      .last_strb(last_strb_32), .busy(ms_wr_busy),
      .in_data(ms_wr_data), .in_valid(ms_wr_valid), .in_ready(ms_wr_ready), .in_count(ms_wr_count),
      .m_axi_awid(m_axi_gmem_ms_AWID),
      .m_axi_awaddr(m_axi_gmem_ms_AWADDR),
      .m_axi_awlen(m_axi_gmem_ms_AWLEN),
      .m_axi_awsize(m_axi_gmem_ms_AWSIZE),
      .m_axi_awburst(m_axi_gmem_ms_AWBURST),
      .m_axi_awlock(m_axi_gmem_ms_AWLOCK),
      .m_axi_awcache(m_axi_gmem_ms_AWCACHE),
      .m_axi_awprot(m_axi_gmem_ms_AWPROT),
      .m_axi_awqos(m_axi_gmem_ms_AWQOS),
      .m_axi_awregion(m_axi_gmem_ms_AWREGION),
      .m_axi_awvalid(m_axi_gmem_ms_AWVALID),
      .m_axi_awready(m_axi_gmem_ms_AWREADY),
      .m_axi_wdata(m_axi_gmem_ms_WDATA),
      .m_axi_wstrb(m_axi_gmem_ms_WSTRB),
      .m_axi_wlast(m_axi_gmem_ms_WLAST),
      .m_axi_wvalid(m_axi_gmem_ms_WVALID),
      .m_axi_wready(m_axi_gmem_ms_WREADY),
      .m_axi_bid(m_axi_gmem_ms_BID),
      .m_axi_bresp(m_axi_gmem_ms_BRESP),
      .m_axi_bvalid(m_axi_gmem_ms_BVALID),
      .m_axi_bready(m_axi_gmem_ms_BREADY));

  adam_axi_rd #(.DATA_W(32), .BURST_LOG2(BURST_LOG2), .FIFO_LOG2(RD_FIFO_LOG2)) u_rd_ex (
      .clk(ap_clk), .rst(rst), .start(go), .base(r_ex), .beats(nblk),
      .m_axi_arid(m_axi_gmem_ex_ARID),
      .m_axi_araddr(m_axi_gmem_ex_ARADDR),
      .m_axi_arlen(m_axi_gmem_ex_ARLEN),
      .m_axi_arsize(m_axi_gmem_ex_ARSIZE),
      .m_axi_arburst(m_axi_gmem_ex_ARBURST),
      .m_axi_arlock(m_axi_gmem_ex_ARLOCK),
      .m_axi_arcache(m_axi_gmem_ex_ARCACHE),
      .m_axi_arprot(m_axi_gmem_ex_ARPROT),
      .m_axi_arqos(m_axi_gmem_ex_ARQOS),
      .m_axi_arregion(m_axi_gmem_ex_ARREGION),
      .m_axi_arvalid(m_axi_gmem_ex_ARVALID),
      .m_axi_arready(m_axi_gmem_ex_ARREADY),
      .m_axi_rid(m_axi_gmem_ex_RID),
      .m_axi_rdata(m_axi_gmem_ex_RDATA),
      .m_axi_rresp(m_axi_gmem_ex_RRESP),
      .m_axi_rlast(m_axi_gmem_ex_RLAST),
      .m_axi_rvalid(m_axi_gmem_ex_RVALID),
      .m_axi_rready(m_axi_gmem_ex_RREADY),
      .out_data(ex_rd_data), .out_valid(ex_rd_valid), .out_ready(ex_rd_ready));

  adam_axi_wr #(.DATA_W(32), .BURST_LOG2(EX_BURST_LOG2), .CNT_W(EX_DEPTH_LOG2 + 1)) u_wr_ex (
      .clk(ap_clk), .rst(rst), .start(go), .base(r_ex), .beats(nblk),
      .last_strb(4'hF), .busy(ex_wr_busy),
      .in_data(ex_wr_data), .in_valid(ex_wr_valid), .in_ready(ex_wr_ready), .in_count(ex_wr_count),
      .m_axi_awid(m_axi_gmem_ex_AWID),
      .m_axi_awaddr(m_axi_gmem_ex_AWADDR),
      .m_axi_awlen(m_axi_gmem_ex_AWLEN),
      .m_axi_awsize(m_axi_gmem_ex_AWSIZE),
      .m_axi_awburst(m_axi_gmem_ex_AWBURST),
      .m_axi_awlock(m_axi_gmem_ex_AWLOCK),
      .m_axi_awcache(m_axi_gmem_ex_AWCACHE),
      .m_axi_awprot(m_axi_gmem_ex_AWPROT),
      .m_axi_awqos(m_axi_gmem_ex_AWQOS),
      .m_axi_awregion(m_axi_gmem_ex_AWREGION),
      .m_axi_awvalid(m_axi_gmem_ex_AWVALID),
      .m_axi_awready(m_axi_gmem_ex_AWREADY),
      .m_axi_wdata(m_axi_gmem_ex_WDATA),
      .m_axi_wstrb(m_axi_gmem_ex_WSTRB),
      .m_axi_wlast(m_axi_gmem_ex_WLAST),
      .m_axi_wvalid(m_axi_gmem_ex_WVALID),
      .m_axi_wready(m_axi_gmem_ex_WREADY),
      .m_axi_bid(m_axi_gmem_ex_BID),
      .m_axi_bresp(m_axi_gmem_ex_BRESP),
      .m_axi_bvalid(m_axi_gmem_ex_BVALID),
      .m_axi_bready(m_axi_gmem_ex_BREADY));

endmodule

`default_nettype wire
