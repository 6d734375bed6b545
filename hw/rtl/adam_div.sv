// Pipelined restoring divider for the ratio |m'| * 2**20 / den.
// q = floor((am << 20) / den) in QW bits, ovf = 1 when the quotient needs more
// than QW bits (den = 0 included). Latency QW + 1 clocks, one result per clock.
`default_nettype none

module adam_div #(
    parameter int AW = 26,             // |m'| bits
    parameter int DW = 27,             // denominator bits
    parameter int SH = 20,             // dividend = am << SH
    parameter int QW = 28              // quotient bits computed
) (
    input  wire logic             clk,
    input  wire logic [AW-1:0]    am,
    input  wire logic [DW-1:0]    den,
    output      logic [QW-1:0]    q,
    output      logic             ovf
);

  localparam int RW = DW + 1;          // partial remainder < den < 2**DW, shifted once
  localparam int DVW = AW + SH;        // dividend bits

  wire logic [DVW-1:0] dividend = {am, {SH{1'b0}}};

  // stage 0: the bits above the quotient width decide overflow
  logic [DVW-1:0] dv_s  [QW+1];
  logic [DW-1:0]  den_s [QW+1];
  logic [RW-1:0]  rem_s [QW+1];
  logic [QW-1:0]  q_s   [QW+1];
  logic           ovf_s [QW+1];

  wire logic [DVW-1:0] top = dividend >> QW;

  always_ff @(posedge clk) begin
    dv_s[0] <= dividend;
    den_s[0] <= den;
    rem_s[0] <= RW'(top);
    q_s[0] <= '0;
    ovf_s[0] <= top >= DVW'(den);
  end

  for (genvar i = 1; i <= QW; i++) begin : g_stage
    wire logic [RW-1:0] cur = {rem_s[i-1][RW-2:0], dv_s[i-1][QW-i]};
    wire logic ge = cur >= RW'(den_s[i-1]);

    always_ff @(posedge clk) begin
      dv_s[i] <= dv_s[i-1];
      den_s[i] <= den_s[i-1];
      rem_s[i] <= ge ? cur - RW'(den_s[i-1]) : cur;
      q_s[i] <= {q_s[i-1][QW-2:0], ge};
      ovf_s[i] <= ovf_s[i-1];
    end
  end

  assign q = q_s[QW];
  assign ovf = ovf_s[QW];

endmodule

`default_nettype wire
