# PYNQ-Z2 (TUL): Zynq-7020, processing_system7. Read by hw/hls/run_hls.tcl and hw/boards/build.tcl.
set board_name pynq-z2
set part xc7z020clg400-1
# Board files (tul.com.tw) are optional: without them the PS keeps Vivado's defaults
# for DDR and MIO, which PYNQ never loads (its boot image configures the PS).
set board_part_pattern *:pynq-z2:*
set clock_mhz 100
set ps_kind ps7
# The kernel's AXI4 masters reach DDR through two 64-bit high-performance ports,
# HP0 (p, g) and HP2 (ms, ex): HP0/HP1 and HP2/HP3 share a DDR controller port
# each, so HP0 and HP2 are two paths into DDR, as in PYNQ's base overlay
# (docs/rtl.md, "Board bandwidth").
set hp_ports {0 2}
# The kernel's control registers in the PS's M_AXI_GP0 window.
set ctrl_base 0x43C00000
