// Plain-SystemVerilog control bench for Icarus Verilog (the second simulator):
// AXI4-Lite register read-back, an n = 0 run through ap_start -> ap_done with the
// interrupt, clear-on-read ap_done, ISR toggle-on-write. The arithmetic is covered
// bit-exactly by the cocotb benches under Verilator. Prints PASS or FAIL lines.
`timescale 1ns / 1ps
`default_nettype none

module tb_icarus_ctrl #(
    parameter int LANES = 2
);
  logic clk = 1'b0, rst_n = 1'b0;
  always #5 clk = !clk;

  logic [7:0] awaddr = '0, araddr = '0;
  logic awvalid = 1'b0, wvalid = 1'b0, arvalid = 1'b0;
  logic [31:0] wdata = '0;
  wire logic awready, wready, bvalid, arready, rvalid, irq;
  wire logic [31:0] rdata;
  wire logic [1:0] bresp, rresp;
  int errors = 0;

  hetadam_adam #(.LANES(LANES)) dut (
      .ap_clk(clk), .ap_rst_n(rst_n), .interrupt(irq),
      .s_axi_control_AWADDR(awaddr), .s_axi_control_AWVALID(awvalid), .s_axi_control_AWREADY(awready),
      .s_axi_control_WDATA(wdata), .s_axi_control_WSTRB(4'hF), .s_axi_control_WVALID(wvalid),
      .s_axi_control_WREADY(wready), .s_axi_control_BRESP(bresp), .s_axi_control_BVALID(bvalid),
      .s_axi_control_BREADY(1'b1), .s_axi_control_ARADDR(araddr), .s_axi_control_ARVALID(arvalid),
      .s_axi_control_ARREADY(arready), .s_axi_control_RDATA(rdata), .s_axi_control_RRESP(rresp),
      .s_axi_control_RVALID(rvalid), .s_axi_control_RREADY(1'b1));

  // no memory traffic in this bench (n = 0): the AXI4 masters' inputs are held at zero
  initial begin
    force dut.m_axi_gmem_p_AWREADY = '0;
    force dut.m_axi_gmem_p_WREADY = '0;
    force dut.m_axi_gmem_p_BID = '0;
    force dut.m_axi_gmem_p_BRESP = '0;
    force dut.m_axi_gmem_p_BVALID = '0;
    force dut.m_axi_gmem_p_ARREADY = '0;
    force dut.m_axi_gmem_p_RID = '0;
    force dut.m_axi_gmem_p_RDATA = '0;
    force dut.m_axi_gmem_p_RRESP = '0;
    force dut.m_axi_gmem_p_RLAST = '0;
    force dut.m_axi_gmem_p_RVALID = '0;
    force dut.m_axi_gmem_g_AWREADY = '0;
    force dut.m_axi_gmem_g_WREADY = '0;
    force dut.m_axi_gmem_g_BID = '0;
    force dut.m_axi_gmem_g_BRESP = '0;
    force dut.m_axi_gmem_g_BVALID = '0;
    force dut.m_axi_gmem_g_ARREADY = '0;
    force dut.m_axi_gmem_g_RID = '0;
    force dut.m_axi_gmem_g_RDATA = '0;
    force dut.m_axi_gmem_g_RRESP = '0;
    force dut.m_axi_gmem_g_RLAST = '0;
    force dut.m_axi_gmem_g_RVALID = '0;
    force dut.m_axi_gmem_ms_AWREADY = '0;
    force dut.m_axi_gmem_ms_WREADY = '0;
    force dut.m_axi_gmem_ms_BID = '0;
    force dut.m_axi_gmem_ms_BRESP = '0;
    force dut.m_axi_gmem_ms_BVALID = '0;
    force dut.m_axi_gmem_ms_ARREADY = '0;
    force dut.m_axi_gmem_ms_RID = '0;
    force dut.m_axi_gmem_ms_RDATA = '0;
    force dut.m_axi_gmem_ms_RRESP = '0;
    force dut.m_axi_gmem_ms_RLAST = '0;
    force dut.m_axi_gmem_ms_RVALID = '0;
    force dut.m_axi_gmem_ex_AWREADY = '0;
    force dut.m_axi_gmem_ex_WREADY = '0;
    force dut.m_axi_gmem_ex_BID = '0;
    force dut.m_axi_gmem_ex_BRESP = '0;
    force dut.m_axi_gmem_ex_BVALID = '0;
    force dut.m_axi_gmem_ex_ARREADY = '0;
    force dut.m_axi_gmem_ex_RID = '0;
    force dut.m_axi_gmem_ex_RDATA = '0;
    force dut.m_axi_gmem_ex_RRESP = '0;
    force dut.m_axi_gmem_ex_RLAST = '0;
    force dut.m_axi_gmem_ex_RVALID = '0;
  end

  task automatic write(input logic [7:0] a, input logic [31:0] d);
    @(negedge clk);
    awaddr = a; wdata = d; awvalid = 1'b1; wvalid = 1'b1;
    // sample just after the clock edge
    do begin @(posedge clk); #1; end while (!awready);
    awvalid = 1'b0; wvalid = 1'b0;
    while (!bvalid) begin @(posedge clk); #1; end
  endtask

  task automatic read(input logic [7:0] a, output logic [31:0] d);
    @(negedge clk);
    araddr = a; arvalid = 1'b1;
    do begin @(posedge clk); #1; end while (!arready);
    arvalid = 1'b0;
    while (!rvalid) begin @(posedge clk); #1; end
    d = rdata;
  endtask

  task automatic expect_reg(input logic [7:0] a, input logic [31:0] want, input string what);
    logic [31:0] got;
    read(a, got);
    if (got !== want) begin
      $display("FAIL %s: reg %02h = %08h, want %08h", what, a, got, want);
      errors++;
    end
  endtask

  initial begin
    logic [31:0] v;
    repeat (5) @(posedge clk);
    rst_n = 1'b1;
    repeat (2) @(posedge clk);
    expect_reg(adam_regmap_pkg::REG_CTRL, 32'h4, "idle after reset");
    write(adam_regmap_pkg::REG_SEED, 32'hDEADBEEF);
    expect_reg(adam_regmap_pkg::REG_SEED, 32'hDEADBEEF, "seed read-back");
    write(adam_regmap_pkg::REG_EX_HI, 32'h12345678);
    expect_reg(adam_regmap_pkg::REG_EX_HI, 32'h12345678, "address high word");
    write(adam_regmap_pkg::REG_N, 32'd0);
    write(adam_regmap_pkg::REG_GIE, 32'd1);
    write(adam_regmap_pkg::REG_IER, 32'd1);
    write(adam_regmap_pkg::REG_CTRL, 32'd1);
    fork
      begin : wait_irq
        @(posedge irq);
      end
      begin
        repeat (200) @(posedge clk);
        $display("FAIL no interrupt");
        errors++;
        disable wait_irq;
      end
    join_any
    disable fork;
    expect_reg(adam_regmap_pkg::REG_CTRL, 32'h20E, "done, idle, ready, interrupt");
    expect_reg(adam_regmap_pkg::REG_CTRL, 32'h204, "ap_done clear-on-read");
    expect_reg(adam_regmap_pkg::REG_ISR, 32'h1, "ISR done");
    expect_reg(adam_regmap_pkg::REG_SAT_COUNT_CTRL, 32'h1, "sat_count valid");
    expect_reg(adam_regmap_pkg::REG_SAT_COUNT, 32'h0, "sat_count");
    write(adam_regmap_pkg::REG_ISR, 32'h1);
    expect_reg(adam_regmap_pkg::REG_ISR, 32'h0, "ISR toggle-on-write");
    read(adam_regmap_pkg::REG_CTRL, v);
    if (irq !== 1'b0) begin
      $display("FAIL interrupt still high");
      errors++;
    end
    if (errors == 0) $display("PASS");
    $finish;
  end
endmodule

`default_nettype wire
