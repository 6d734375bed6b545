// AXI4 read master that streams `beats` consecutive bus words from `base` into
// a FIFO. INCR bursts of up to 2**BURST_LOG2 beats, never crossing a 4 KiB
// boundary, issued only when the FIFO has room for the whole burst (so RREADY
// stays high). `base` must be aligned to the bus width.
`default_nettype none

module adam_axi_rd #(
    parameter int DATA_W = 32,
    parameter int BURST_LOG2 = 4,
    parameter int FIFO_LOG2 = 6
) (
    input  wire logic                clk,
    input  wire logic                rst,

    input  wire logic                start,
    input  wire logic [63:0]         base,
    input  wire logic [32:0]         beats,

    output      logic [0:0]          m_axi_arid,
    output      logic [63:0]         m_axi_araddr,
    output      logic [7:0]          m_axi_arlen,
    output      logic [2:0]          m_axi_arsize,
    output      logic [1:0]          m_axi_arburst,
    output      logic [0:0]          m_axi_arlock,
    output      logic [3:0]          m_axi_arcache,
    output      logic [2:0]          m_axi_arprot,
    output      logic [3:0]          m_axi_arqos,
    output      logic [3:0]          m_axi_arregion,
    output      logic                m_axi_arvalid,
    input  wire logic                m_axi_arready,
    /* verilator lint_off UNUSEDSIGNAL */  // single ID, in-order; responses not checked
    input  wire logic [0:0]          m_axi_rid,
    input  wire logic [DATA_W-1:0]   m_axi_rdata,
    input  wire logic [1:0]          m_axi_rresp,
    input  wire logic                m_axi_rlast,
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire logic                m_axi_rvalid,
    output      logic                m_axi_rready,

    output      logic [DATA_W-1:0]   out_data,
    output      logic                out_valid,
    input  wire logic                out_ready
);

  localparam int BYTES = DATA_W / 8;
  localparam int SIZE = $clog2(BYTES);

`ifndef __ICARUS__  // Icarus 11 reads no elaboration-time $fatal (a syntax error); Verilator and Vivado do
  if (DATA_W < 32 || DATA_W > 1024 || (DATA_W & (DATA_W - 1)) != 0) begin : g_check_data_w
    $fatal(0, "Error: DATA_W = %0d; AXI SmartConnect takes 32 to 1024-bit buses, a power of two (instance %m)",
           DATA_W);
  end
  if (BURST_LOG2 < 0 || BURST_LOG2 > 8) begin : g_check_burst
    $fatal(0, "Error: BURST_LOG2 = %0d; AXI4 bursts are 1 to 256 beats, so 0 to 8 (instance %m)", BURST_LOG2);
  end
  if (FIFO_LOG2 < BURST_LOG2) begin : g_check_fifo
    $fatal(0, "Error: FIFO_LOG2 = %0d is below BURST_LOG2 = %0d: the FIFO must hold a whole burst (instance %m)",
           FIFO_LOG2, BURST_LOG2);
  end
`endif

  localparam logic [32:0] BURST_MAX = 33'(2 ** BURST_LOG2);
  localparam logic [FIFO_LOG2+1:0] DEPTH = (FIFO_LOG2+2)'(2 ** FIFO_LOG2);

  logic [63:0] addr;
  logic [32:0] left;
  logic [FIFO_LOG2+1:0] space;     // FIFO slots neither filled nor promised to a burst

  // beats to the next 4 KiB boundary, the burst length
  wire logic [12:0] to_4k = (13'h1000 - {1'b0, addr[11:0]}) >> SIZE;
  logic [32:0] len;
  always_comb begin
    len = (left < BURST_MAX) ? left : BURST_MAX;
    if ({20'd0, to_4k} < len) len = {20'd0, to_4k};
  end

  wire logic issue = !m_axi_arvalid && (left != '0) && ({{(31-FIFO_LOG2){1'b0}}, space} >= len);
  wire logic pop = out_valid && out_ready;

  assign m_axi_arid = '0;
  assign m_axi_arsize = 3'(SIZE);
  assign m_axi_arburst = 2'b01;
  assign m_axi_arlock = '0;
  assign m_axi_arcache = 4'b0011;
  assign m_axi_arprot = '0;
  assign m_axi_arqos = '0;
  assign m_axi_arregion = '0;
  assign m_axi_rready = 1'b1;

  always_ff @(posedge clk) begin
    if (m_axi_arready) begin
      m_axi_arvalid <= 1'b0;
    end
    if (start) begin
      addr <= base;
      left <= beats;
    end else if (issue) begin
      m_axi_arvalid <= 1'b1;
      m_axi_araddr <= addr;
      m_axi_arlen <= 8'(len - 1'b1);
      addr <= addr + 64'(len << SIZE);
      left <= left - len;
    end
    space <= space - (issue ? (FIFO_LOG2+2)'(len) : '0) + (FIFO_LOG2+2)'(pop);
    if (rst) begin
      m_axi_arvalid <= 1'b0;
      left <= '0;
      space <= DEPTH;
    end
  end

  /* verilator lint_off PINCONNECTEMPTY */  // room is reserved before a burst is asked for
  adam_fifo #(.WIDTH(DATA_W), .DEPTH_LOG2(FIFO_LOG2)) u_fifo (
      .clk(clk), .rst(rst),
      .in_data(m_axi_rdata), .in_valid(m_axi_rvalid), .in_ready(),
      .out_data(out_data), .out_valid(out_valid), .out_ready(out_ready),
      .count());
  /* verilator lint_on PINCONNECTEMPTY */

endmodule

`default_nettype wire
