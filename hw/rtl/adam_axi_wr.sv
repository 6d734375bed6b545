// AXI4 write master that writes `beats` consecutive bus words from a FIFO to
// `base`. INCR bursts of up to 2**BURST_LOG2 beats, never crossing a 4 KiB
// boundary; a burst's address goes out only once the FIFO holds all of its
// data. The last beat of the run writes only the byte lanes in `last_strb`.
`default_nettype none

module adam_axi_wr #(
    parameter int DATA_W = 32,
    parameter int BURST_LOG2 = 4,
    parameter int CNT_W = 8            // width of in_count
) (
    input  wire logic                clk,
    input  wire logic                rst,

    input  wire logic                start,
    input  wire logic [63:0]         base,
    input  wire logic [32:0]         beats,
    input  wire logic [DATA_W/8-1:0] last_strb,
    output      logic                busy,

    input  wire logic [DATA_W-1:0]   in_data,
    input  wire logic                in_valid,
    output      logic                in_ready,
    input  wire logic [CNT_W-1:0]    in_count,

    output      logic [0:0]          m_axi_awid,
    output      logic [63:0]         m_axi_awaddr,
    output      logic [7:0]          m_axi_awlen,
    output      logic [2:0]          m_axi_awsize,
    output      logic [1:0]          m_axi_awburst,
    output      logic [0:0]          m_axi_awlock,
    output      logic [3:0]          m_axi_awcache,
    output      logic [2:0]          m_axi_awprot,
    output      logic [3:0]          m_axi_awqos,
    output      logic [3:0]          m_axi_awregion,
    output      logic                m_axi_awvalid,
    input  wire logic                m_axi_awready,
    output      logic [DATA_W-1:0]   m_axi_wdata,
    output      logic [DATA_W/8-1:0] m_axi_wstrb,
    output      logic                m_axi_wlast,
    output      logic                m_axi_wvalid,
    input  wire logic                m_axi_wready,
    /* verilator lint_off UNUSEDSIGNAL */  // single ID; responses not checked
    input  wire logic [0:0]          m_axi_bid,
    input  wire logic [1:0]          m_axi_bresp,
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire logic                m_axi_bvalid,
    output      logic                m_axi_bready
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
  if (CNT_W - 1 < BURST_LOG2) begin : g_check_fifo
    $fatal(0, "Error: CNT_W = %0d counts a FIFO smaller than a burst of 2**%0d beats (instance %m)",
           CNT_W, BURST_LOG2);
  end
`endif

  localparam logic [32:0] BURST_MAX = 33'(2 ** BURST_LOG2);

  /* verilator lint_off UNUSEDSIGNAL */
  function automatic logic [32:0] burst_len(input logic [63:0] a, input logic [32:0] n);
    logic [12:0] to_4k;
    logic [32:0] l;
    to_4k = (13'h1000 - {1'b0, a[11:0]}) >> SIZE;
    l = (n < BURST_MAX) ? n : BURST_MAX;
    if ({20'd0, to_4k} < l) l = {20'd0, to_4k};
    burst_len = l;
  endfunction
  /* verilator lint_on UNUSEDSIGNAL */

  // address side
  logic [63:0] aw_addr;
  logic [32:0] aw_left;
  logic [32:0] w_owed;          // beats of issued bursts not yet sent
  logic [32:0] b_owed;          // bursts awaiting their response
  wire logic [32:0] aw_len = burst_len(aw_addr, aw_left);
  wire logic issue = !m_axi_awvalid && (aw_left != '0) && ({{(33-CNT_W){1'b0}}, in_count} >= w_owed + aw_len);

  // data side: the same burst sequence, tracked at burst starts
  logic [63:0] w_addr;
  logic [32:0] w_left;          // beats left at the start of the current burst
  logic [32:0] w_beat;
  wire logic [32:0] w_len = burst_len(w_addr, w_left);
  wire logic w_end = w_beat == w_len - 1'b1;
  wire logic w_hs = m_axi_wvalid && m_axi_wready;

  assign m_axi_awid = '0;
  assign m_axi_awsize = 3'(SIZE);
  assign m_axi_awburst = 2'b01;
  assign m_axi_awlock = '0;
  assign m_axi_awcache = 4'b0011;
  assign m_axi_awprot = '0;
  assign m_axi_awqos = '0;
  assign m_axi_awregion = '0;
  assign m_axi_bready = 1'b1;

  assign m_axi_wvalid = in_valid && (w_owed != '0);
  assign m_axi_wdata = in_data;
  assign m_axi_wlast = w_end;
  assign m_axi_wstrb = (w_left - w_beat == 33'd1) ? last_strb : '1;
  assign in_ready = m_axi_wready && (w_owed != '0);

  wire logic b_hs = m_axi_bvalid && m_axi_bready;
  assign busy = (aw_left != '0) || (w_left != '0) || (b_owed != '0);

  always_ff @(posedge clk) begin
    if (m_axi_awready) begin
      m_axi_awvalid <= 1'b0;
    end
    if (start) begin
      aw_addr <= base;
      aw_left <= beats;
      w_addr <= base;
      w_left <= beats;
      w_beat <= '0;
    end else begin
      if (issue) begin
        m_axi_awvalid <= 1'b1;
        m_axi_awaddr <= aw_addr;
        m_axi_awlen <= 8'(aw_len - 1'b1);
        aw_addr <= aw_addr + 64'(aw_len << SIZE);
        aw_left <= aw_left - aw_len;
      end
      if (w_hs) begin
        if (w_end) begin
          w_addr <= w_addr + 64'(w_len << SIZE);
          w_left <= w_left - w_len;
          w_beat <= '0;
        end else begin
          w_beat <= w_beat + 1'b1;
        end
      end
    end
    w_owed <= w_owed + (issue ? aw_len : '0) - 33'(w_hs);
    b_owed <= b_owed + 33'(issue) - 33'(b_hs);
    if (rst) begin
      m_axi_awvalid <= 1'b0;
      aw_left <= '0;
      w_left <= '0;
      w_beat <= '0;
      w_owed <= '0;
      b_owed <= '0;
    end
  end

endmodule

`default_nettype wire
