// Pipelined exact integer square root: root = floor(sqrt(x)), one result per
// clock, latency RW clocks. One digit-recurrence (restoring) stage per result
// bit: the remainder takes the next two bits of x, the trial subtrahend is
// (root << 2) | 1.
`default_nettype none

module adam_isqrt #(
    parameter int RW = 26              // result bits; x has 2*RW bits
) (
    input  wire logic              clk,
    input  wire logic [2*RW-1:0]   x,
    output      logic [RW-1:0]     root
);

  localparam int REM_W = RW + 3;

  // stage i holds the partial root of the top i+1 digit pairs
  logic [2*RW-1:0] x_s   [RW];
  logic [REM_W-1:0] rem_s [RW];
  logic [RW-1:0] root_s  [RW];

  for (genvar i = 0; i < RW; i++) begin : g_stage
    wire logic [2*RW-1:0] x_in = (i == 0) ? x : x_s[(i == 0) ? 0 : i-1];
    /* verilator lint_off UNUSEDSIGNAL */  // remainder < 2**(RW+1)
    wire logic [REM_W-1:0] rem_in = (i == 0) ? '0 : rem_s[(i == 0) ? 0 : i-1];
    /* verilator lint_on UNUSEDSIGNAL */
    wire logic [RW-1:0] root_in = (i == 0) ? '0 : root_s[(i == 0) ? 0 : i-1];
    wire logic [REM_W-1:0] cur = {rem_in[REM_W-3:0], x_in[2*(RW-1-i) +: 2]};
    wire logic [REM_W-1:0] trial = {1'b0, root_in, 2'b01};
    wire logic ge = cur >= trial;

    always_ff @(posedge clk) begin
      x_s[i] <= x_in;
      rem_s[i] <= ge ? cur - trial : cur;
      root_s[i] <= {root_in[RW-2:0], ge};
    end
  end

  assign root = root_s[RW-1];

endmodule

`default_nettype wire
