// Stream width converter: each IN_W-bit input word leaves as IN_W/OUT_W output
// words, the low part first. A run (`start`) emits `count` output words; the
// input word holding the last of them is consumed with it, so the unused high
// part of a partial last word is dropped and nothing is left for the next run.
// The output is combinational from the input word (a FIFO's registered head).
`default_nettype none

module adam_downsize #(
    parameter int IN_W = 32,
    parameter int OUT_W = 16
) (
    input  wire logic              clk,
    input  wire logic              rst,

    input  wire logic              start,
    input  wire logic [32:0]       count,

    input  wire logic [IN_W-1:0]   in_data,
    input  wire logic              in_valid,
    output      logic              in_ready,

    output      logic [OUT_W-1:0]  out_data,
    output      logic              out_valid,
    input  wire logic              out_ready
);

  localparam int RATIO = IN_W / OUT_W;
  localparam int SEL_W = (RATIO > 1) ? $clog2(RATIO) : 1;

`ifndef __ICARUS__  // Icarus 11 reads no elaboration-time $fatal (a syntax error); Verilator and Vivado do
  if (RATIO < 2 || RATIO * OUT_W != IN_W || (RATIO & (RATIO - 1)) != 0) begin : g_check_ratio
    $fatal(0, "Error: IN_W (%0d) must be OUT_W (%0d) times a power of two >= 2 (instance %m)", IN_W, OUT_W);
  end
`endif

  logic [SEL_W-1:0] sel;           // the part of the input word that goes out next
  logic [32:0] left;               // output words still to go in this run

  wire logic last = left == 33'd1;
  wire logic take = out_valid && out_ready;

  assign out_data = in_data[OUT_W*sel +: OUT_W];
  assign out_valid = in_valid;
  assign in_ready = out_ready && (sel == SEL_W'(RATIO - 1) || last);

  always_ff @(posedge clk) begin
    if (start) begin
      sel <= '0;
      left <= count;
    end else if (take) begin
      sel <= last ? '0 : sel + 1'b1;
      left <= left - 33'd1;
    end
    if (rst) begin
      sel <= '0;
      left <= '0;
    end
  end

endmodule

`default_nettype wire
