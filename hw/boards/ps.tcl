# The Zynq processing system of a board's block design, for hw/boards/build.tcl.
#
# hetadam_create_ps KIND CLOCK_MHZ PRESET creates the PS as cell `ps` and returns
# a dict of the pins the kernel is wired to:
#   clk        the fabric clock (CLOCK_MHZ)         resetn   its reset (active low)
#   ctrl       the PS master for the AXI4-Lite control (general-purpose port)
#   data       the PS slave for the kernel's AXI4 masters (high-performance port)
#   port_clks  the clocks of those two ports        irq      the fabric interrupt input
# KIND is ps7 (Zynq-7000: processing_system7) or psu (Zynq UltraScale+:
# zynq_ultra_ps_e); PRESET applies the board files' preset (DDR, MIO, clocks).

# The newest version of a Xilinx IP in the catalog.
proc hetadam_ip_vlnv {name} {
    set defs [lsort -dictionary [get_ipdefs -all -filter "VENDOR == xilinx.com && NAME == $name"]]
    if {[llength $defs] == 0} {
        error "IP xilinx.com:ip:$name is not in this Vivado's catalog"
    }
    return [lindex $defs end]
}

proc hetadam_create_ps {kind clock_mhz preset} {
    switch -- $kind {
        ps7 {
            set ps [create_bd_cell -type ip -vlnv [hetadam_ip_vlnv processing_system7] ps]
            apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 \
                -config [list make_external "FIXED_IO, DDR" apply_board_preset [expr {$preset ? 1 : 0}] \
                             Master Disable Slave Disable] $ps
            set_property -dict [list \
                CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ $clock_mhz \
                CONFIG.PCW_USE_M_AXI_GP0 1 \
                CONFIG.PCW_USE_S_AXI_HP0 1 \
                CONFIG.PCW_S_AXI_HP0_DATA_WIDTH 64 \
                CONFIG.PCW_USE_FABRIC_INTERRUPT 1 \
                CONFIG.PCW_IRQ_F2P_INTR 1 \
            ] $ps
            return [dict create clk ps/FCLK_CLK0 resetn ps/FCLK_RESET0_N ctrl ps/M_AXI_GP0 data ps/S_AXI_HP0 \
                        port_clks {ps/M_AXI_GP0_ACLK ps/S_AXI_HP0_ACLK} irq ps/IRQ_F2P]
        }
        psu {
            set ps [create_bd_cell -type ip -vlnv [hetadam_ip_vlnv zynq_ultra_ps_e] ps]
            if {$preset} {
                apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {apply_board_preset "1"} $ps
            }
            # M_AXI_GP0 is M_AXI_HPM0_FPD; S_AXI_GP2 is S_AXI_HP0_FPD. The presets enable
            # HPM1_FPD and HPM0_LPD as well: the design uses neither.
            set_property -dict [list \
                CONFIG.PSU__USE__M_AXI_GP0 1 \
                CONFIG.PSU__USE__M_AXI_GP1 0 \
                CONFIG.PSU__USE__M_AXI_GP2 0 \
                CONFIG.PSU__USE__S_AXI_GP2 1 \
                CONFIG.PSU__SAXIGP2__DATA_WIDTH 128 \
                CONFIG.PSU__USE__IRQ0 1 \
                CONFIG.PSU__FPGA_PL0_ENABLE 1 \
                CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $clock_mhz \
            ] $ps
            return [dict create clk ps/pl_clk0 resetn ps/pl_resetn0 ctrl ps/M_AXI_HPM0_FPD data ps/S_AXI_HP0_FPD \
                        port_clks {ps/maxihpm0_fpd_aclk ps/saxihp0_fpd_aclk} irq ps/pl_ps_irq0]
        }
        default {
            error "unknown PS kind '$kind' (ps7 or psu)"
        }
    }
}
