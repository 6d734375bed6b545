// Synchronous first-word-fall-through FIFO with a registered output.
// The storage has a synchronous read port, so synthesis maps it to block or
// distributed RAM; `count` includes the output register.
`default_nettype none

module adam_fifo #(
    parameter int WIDTH = 32,
    parameter int DEPTH_LOG2 = 4
) (
    input  wire logic                  clk,
    input  wire logic                  rst,

    input  wire logic [WIDTH-1:0]      in_data,
    input  wire logic                  in_valid,
    output      logic                  in_ready,

    output      logic [WIDTH-1:0]      out_data,
    output      logic                  out_valid,
    input  wire logic                  out_ready,

    output      logic [DEPTH_LOG2:0]   count
);

  localparam int DEPTH = 2 ** DEPTH_LOG2;

  logic [WIDTH-1:0] mem [DEPTH];
  logic [DEPTH_LOG2:0] wr_ptr, rd_ptr;

  wire logic full = (wr_ptr[DEPTH_LOG2] != rd_ptr[DEPTH_LOG2]) &&
                    (wr_ptr[DEPTH_LOG2-1:0] == rd_ptr[DEPTH_LOG2-1:0]);
  wire logic empty = wr_ptr == rd_ptr;
  wire logic push = in_valid && !full;
  wire logic load = !empty && (!out_valid || out_ready);

  assign in_ready = !full;
  assign count = (wr_ptr - rd_ptr) + {{DEPTH_LOG2{1'b0}}, out_valid};

  always_ff @(posedge clk) begin
    if (push) begin
      mem[wr_ptr[DEPTH_LOG2-1:0]] <= in_data;
    end
    if (load) begin
      out_data <= mem[rd_ptr[DEPTH_LOG2-1:0]];
    end
  end

  always_ff @(posedge clk) begin
    if (push) begin
      wr_ptr <= wr_ptr + 1'b1;
    end
    if (load) begin
      rd_ptr <= rd_ptr + 1'b1;
      out_valid <= 1'b1;
    end else if (out_ready) begin
      out_valid <= 1'b0;
    end
    if (rst) begin
      wr_ptr <= '0;
      rd_ptr <= '0;
      out_valid <= 1'b0;
    end
  end

endmodule

`default_nettype wire
