# Kria KV260 (AMD): K26 SOM, Zynq UltraScale+ XCK26, zynq_ultra_ps_e. Read by hw/hls/run_hls.tcl and hw/boards/build.tcl.
set board_name kv260
set part xck26-sfvc784-2LV-c
set board_part_pattern xilinx.com:kv260_som:*
# The SOM's board part is completed by the carrier card's, through this connector.
set carrier_part_pattern xilinx.com:kv260_carrier:*
set carrier_connector som240_1_connector
set clock_mhz 200
set ps_kind psu
# The kernel's AXI4 masters reach DDR through one 128-bit high-performance port, HP0_FPD
# (docs/rtl.md, "Board bandwidth": enough for one lane; add 2 to split them as on the PYNQ-Z2).
set hp_ports {0}
# The kernel's control registers in the PS's M_AXI_HPM0_FPD window.
set ctrl_base 0xA0000000
