// AXI4-Lite control slave in the Vitis HLS ap_ctrl_hs layout. Offsets come from
// adam_regmap_pkg (generated from host/hetadam/regmap.py).
//
//   CTRL  bit 0 ap_start (R/W, cleared by ap_ready unless auto_restart)
//         bit 1 ap_done (R, clear on read)   bit 2 ap_idle (R; set in the clock ap_done is)
//         bit 3 ap_ready (R, clear on read)  bit 7 auto_restart (R/W)
//         bit 9 interrupt (R)
//   GIE   bit 0 global interrupt enable
//   IER   bit 0 ap_done, bit 1 ap_ready interrupt enable
//   ISR   bit 0 ap_done, bit 1 ap_ready status (R, toggle on write)
//   SAT_COUNT (R), SAT_COUNT_CTRL bit 0 valid (R, clear on read)
`default_nettype none

module adam_ctrl_s_axi (
    input  wire logic         clk,
    input  wire logic         rst,

    /* verilator lint_off UNUSEDSIGNAL */  // word addressed: bits 1:0 ignored
    input  wire logic [adam_regmap_pkg::ADDR_BITS-1:0] s_axi_awaddr,
    input  wire logic         s_axi_awvalid,
    output      logic         s_axi_awready,
    input  wire logic [31:0]  s_axi_wdata,
    input  wire logic [3:0]   s_axi_wstrb,
    input  wire logic         s_axi_wvalid,
    output      logic         s_axi_wready,
    output      logic [1:0]   s_axi_bresp,
    output      logic         s_axi_bvalid,
    input  wire logic         s_axi_bready,
    input  wire logic [adam_regmap_pkg::ADDR_BITS-1:0] s_axi_araddr,
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire logic         s_axi_arvalid,
    output      logic         s_axi_arready,
    output      logic [31:0]  s_axi_rdata,
    output      logic [1:0]   s_axi_rresp,
    output      logic         s_axi_rvalid,
    input  wire logic         s_axi_rready,

    output      logic         interrupt,

    // to and from the kernel
    output      logic         ap_start,
    input  wire logic         ap_done,
    input  wire logic         ap_idle,
    input  wire logic         ap_ready,
    output      logic [31:0]  n,
    output      logic [31:0]  idx0,
    output      logic [31:0]  seed,
    output      logic [31:0]  beta1,
    output      logic [31:0]  beta2,
    output      logic [31:0]  eps_m,
    output      logic [31:0]  eps_e,
    output      logic [31:0]  alpha_m,
    output      logic [31:0]  alpha_sh,
    output      logic [31:0]  ratio_max,
    output      logic [31:0]  lwd,
    output      logic [31:0]  mode,
    output      logic [63:0]  p,
    output      logic [63:0]  g,
    output      logic [63:0]  ms,
    output      logic [63:0]  ex,
    input  wire logic [31:0]  sat_count,
    input  wire logic         sat_count_ap_vld
);

  logic int_ap_done, int_ap_ready, int_auto_restart, int_gie;
  logic [1:0] int_ier, int_isr;
  logic int_sat_vld;

  function automatic logic [31:0] wmask(input logic [31:0] old, input logic [31:0] data,
                                        input logic [3:0] strb);
    logic [31:0] r;
    for (int i = 0; i < 4; i++) begin
      r[8*i +: 8] = strb[i] ? data[8*i +: 8] : old[8*i +: 8];
    end
    wmask = r;
  endfunction

  localparam int AW = adam_regmap_pkg::ADDR_BITS;
  wire logic [AW-1:0] waddr = {s_axi_awaddr[AW-1:2], 2'b00};
  wire logic [AW-1:0] raddr = {s_axi_araddr[AW-1:2], 2'b00};
  wire logic w_hs = s_axi_awvalid && s_axi_wvalid && !s_axi_awready && (!s_axi_bvalid || s_axi_bready);
  wire logic r_hs = s_axi_arvalid && !s_axi_arready && (!s_axi_rvalid || s_axi_rready);

  assign s_axi_bresp = 2'b00;
  assign s_axi_rresp = 2'b00;
  assign s_axi_wready = s_axi_awready;
  assign interrupt = int_gie && (int_isr != 2'b00);

  // write channel: address and data accepted together, one clock of ready
  always_ff @(posedge clk) begin
    s_axi_awready <= w_hs;
    if (w_hs) begin
      s_axi_bvalid <= 1'b1;
    end else if (s_axi_bready) begin
      s_axi_bvalid <= 1'b0;
    end
    if (rst) begin
      s_axi_awready <= 1'b0;
      s_axi_bvalid <= 1'b0;
    end
  end

  // read channel
  logic [31:0] rdata;
  always_comb begin
    rdata = '0;
    case (raddr)
      adam_regmap_pkg::REG_CTRL: rdata = {22'd0, interrupt, 1'b0, int_auto_restart, 3'd0,
                                          int_ap_ready, ap_idle, int_ap_done, ap_start};
      adam_regmap_pkg::REG_GIE: rdata = {31'd0, int_gie};
      adam_regmap_pkg::REG_IER: rdata = {30'd0, int_ier};
      adam_regmap_pkg::REG_ISR: rdata = {30'd0, int_isr};
      adam_regmap_pkg::REG_N: rdata = n;
      adam_regmap_pkg::REG_IDX0: rdata = idx0;
      adam_regmap_pkg::REG_SEED: rdata = seed;
      adam_regmap_pkg::REG_BETA1: rdata = beta1;
      adam_regmap_pkg::REG_BETA2: rdata = beta2;
      adam_regmap_pkg::REG_EPS_M: rdata = eps_m;
      adam_regmap_pkg::REG_EPS_E: rdata = eps_e;
      adam_regmap_pkg::REG_ALPHA_M: rdata = alpha_m;
      adam_regmap_pkg::REG_ALPHA_SH: rdata = alpha_sh;
      adam_regmap_pkg::REG_RATIO_MAX: rdata = ratio_max;
      adam_regmap_pkg::REG_LWD: rdata = lwd;
      adam_regmap_pkg::REG_MODE: rdata = mode;
      adam_regmap_pkg::REG_SAT_COUNT: rdata = sat_count;
      adam_regmap_pkg::REG_SAT_COUNT_CTRL: rdata = {31'd0, int_sat_vld};
      adam_regmap_pkg::REG_P_LO: rdata = p[31:0];
      adam_regmap_pkg::REG_P_HI: rdata = p[63:32];
      adam_regmap_pkg::REG_G_LO: rdata = g[31:0];
      adam_regmap_pkg::REG_G_HI: rdata = g[63:32];
      adam_regmap_pkg::REG_MS_LO: rdata = ms[31:0];
      adam_regmap_pkg::REG_MS_HI: rdata = ms[63:32];
      adam_regmap_pkg::REG_EX_LO: rdata = ex[31:0];
      adam_regmap_pkg::REG_EX_HI: rdata = ex[63:32];
      default: rdata = '0;
    endcase
  end

  always_ff @(posedge clk) begin
    s_axi_arready <= r_hs;
    if (r_hs) begin
      s_axi_rvalid <= 1'b1;
      s_axi_rdata <= rdata;
    end else if (s_axi_rready) begin
      s_axi_rvalid <= 1'b0;
    end
    if (rst) begin
      s_axi_arready <= 1'b0;
      s_axi_rvalid <= 1'b0;
    end
  end

  wire logic rd_ctrl = r_hs && (raddr == adam_regmap_pkg::REG_CTRL);

  // control and interrupt registers
  always_ff @(posedge clk) begin
    if (w_hs && waddr == adam_regmap_pkg::REG_CTRL && s_axi_wstrb[0] && s_axi_wdata[0]) begin
      ap_start <= 1'b1;
    end else if (ap_ready) begin
      ap_start <= int_auto_restart;
    end

    if (ap_done) begin
      int_ap_done <= 1'b1;
    end else if (rd_ctrl) begin
      int_ap_done <= 1'b0;
    end

    if (ap_ready) begin
      int_ap_ready <= 1'b1;
    end else if (rd_ctrl) begin
      int_ap_ready <= 1'b0;
    end

    if (w_hs && waddr == adam_regmap_pkg::REG_CTRL && s_axi_wstrb[0]) begin
      int_auto_restart <= s_axi_wdata[7];
    end
    if (w_hs && waddr == adam_regmap_pkg::REG_GIE && s_axi_wstrb[0]) begin
      int_gie <= s_axi_wdata[0];
    end
    if (w_hs && waddr == adam_regmap_pkg::REG_IER && s_axi_wstrb[0]) begin
      int_ier <= s_axi_wdata[1:0];
    end

    if (int_ier[0] && ap_done) begin
      int_isr[0] <= 1'b1;
    end else if (w_hs && waddr == adam_regmap_pkg::REG_ISR && s_axi_wstrb[0]) begin
      int_isr[0] <= int_isr[0] ^ s_axi_wdata[0];
    end
    if (int_ier[1] && ap_ready) begin
      int_isr[1] <= 1'b1;
    end else if (w_hs && waddr == adam_regmap_pkg::REG_ISR && s_axi_wstrb[0]) begin
      int_isr[1] <= int_isr[1] ^ s_axi_wdata[1];
    end

    if (sat_count_ap_vld) begin
      int_sat_vld <= 1'b1;
    end else if (r_hs && raddr == adam_regmap_pkg::REG_SAT_COUNT_CTRL) begin
      int_sat_vld <= 1'b0;
    end

    if (rst) begin
      ap_start <= 1'b0;
      int_ap_done <= 1'b0;
      int_ap_ready <= 1'b0;
      int_auto_restart <= 1'b0;
      int_gie <= 1'b0;
      int_ier <= '0;
      int_isr <= '0;
      int_sat_vld <= 1'b0;
    end
  end

  // arguments
  always_ff @(posedge clk) begin
    if (w_hs) begin
      case (waddr)
        adam_regmap_pkg::REG_N: n <= wmask(n, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_IDX0: idx0 <= wmask(idx0, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_SEED: seed <= wmask(seed, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_BETA1: beta1 <= wmask(beta1, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_BETA2: beta2 <= wmask(beta2, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_EPS_M: eps_m <= wmask(eps_m, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_EPS_E: eps_e <= wmask(eps_e, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_ALPHA_M: alpha_m <= wmask(alpha_m, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_ALPHA_SH: alpha_sh <= wmask(alpha_sh, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_RATIO_MAX: ratio_max <= wmask(ratio_max, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_LWD: lwd <= wmask(lwd, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_MODE: mode <= wmask(mode, s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_P_LO: p[31:0] <= wmask(p[31:0], s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_P_HI: p[63:32] <= wmask(p[63:32], s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_G_LO: g[31:0] <= wmask(g[31:0], s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_G_HI: g[63:32] <= wmask(g[63:32], s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_MS_LO: ms[31:0] <= wmask(ms[31:0], s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_MS_HI: ms[63:32] <= wmask(ms[63:32], s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_EX_LO: ex[31:0] <= wmask(ex[31:0], s_axi_wdata, s_axi_wstrb);
        adam_regmap_pkg::REG_EX_HI: ex[63:32] <= wmask(ex[63:32], s_axi_wdata, s_axi_wstrb);
        default: ;
      endcase
    end
    if (rst) begin
      n <= '0;
      idx0 <= '0;
      seed <= '0;
      beta1 <= '0;
      beta2 <= '0;
      eps_m <= '0;
      eps_e <= '0;
      alpha_m <= '0;
      alpha_sh <= '0;
      ratio_max <= '0;
      lwd <= '0;
      mode <= '0;
      p <= '0;
      g <= '0;
      ms <= '0;
      ex <= '0;
    end
  end

endmodule

`default_nettype wire
