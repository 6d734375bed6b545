# ZCU104 (AMD): Zynq UltraScale+ XCZU7EV, zynq_ultra_ps_e. Read by hw/hls/run_hls.tcl and hw/boards/build.tcl.
set board_name zcu104
set part xczu7ev-ffvc1156-2-e
set board_part_pattern xilinx.com:zcu104:*
set clock_mhz 200
set ps_kind psu
# The kernel's AXI4 masters reach DDR through one 128-bit high-performance port, HP0_FPD
# (docs/rtl.md, "Board bandwidth": enough for one lane; add 2 to split them as on the PYNQ-Z2).
set hp_ports {0}
# The kernel's control registers in the PS's M_AXI_HPM0_FPD window.
set ctrl_base 0xA0000000
