# The Zynq processing system of a board's block design, for hw/boards/build.tcl.
#
# hetadam_create_ps KIND CLOCK_MHZ PRESET HP_PORTS creates the PS as cell `ps` and
# returns a dict of what the kernel is wired to:
#   clk        the fabric clock (CLOCK_MHZ asked for)  resetn  its reset (active low)
#   ctrl       the PS master for the AXI4-Lite control (general-purpose port)
#   ctrl_clk   its clock                              irq     the fabric interrupt input
#   data       the PS slaves for the kernel's AXI4 masters: the high-performance
#              ports numbered in HP_PORTS (S_AXI_HP<n>, S_AXI_HP<n>_FPD), in that order
#   data_clks  their clocks, in the same order
#   act_mhz    the PS cell's property holding the fabric clock its PLL gives (read
#              after validate_bd_design: it may differ from CLOCK_MHZ)
# KIND is ps7 (Zynq-7000: processing_system7, 64-bit HP ports) or psu (Zynq
# UltraScale+: zynq_ultra_ps_e, 128-bit HP ports); PRESET applies the board files'
# preset (DDR, MIO, clocks).

# The newest version of a Xilinx IP in the catalog.
proc hetadam_ip_vlnv {name} {
    set defs [lsort -dictionary [get_ipdefs -all -filter "VENDOR == xilinx.com && NAME == $name"]]
    if {[llength $defs] == 0} {
        error "IP xilinx.com:ip:$name is not in this Vivado's catalog"
    }
    return [lindex $defs end]
}

proc hetadam_create_ps {kind clock_mhz preset hp_ports} {
    if {[llength $hp_ports] == 0 || [llength [lsort -unique $hp_ports]] != [llength $hp_ports]} {
        error "hp_ports '$hp_ports': name one or more distinct high-performance ports (0 to 3)"
    }
    foreach hp $hp_ports {
        if {$hp ni {0 1 2 3}} {
            error "hp_ports '$hp_ports': a Zynq has high-performance ports 0 to 3, not $hp"
        }
    }
    switch -- $kind {
        ps7 {
            set ps [create_bd_cell -type ip -vlnv [hetadam_ip_vlnv processing_system7] ps]
            apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 \
                -config [list make_external "FIXED_IO, DDR" apply_board_preset [expr {$preset ? 1 : 0}] \
                             Master Disable Slave Disable] $ps
            set config [list \
                CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ $clock_mhz \
                CONFIG.PCW_USE_M_AXI_GP0 1 \
                CONFIG.PCW_USE_FABRIC_INTERRUPT 1 \
                CONFIG.PCW_IRQ_F2P_INTR 1 \
            ]
            set data {}
            set data_clks {}
            foreach hp $hp_ports {
                lappend config CONFIG.PCW_USE_S_AXI_HP$hp 1 CONFIG.PCW_S_AXI_HP${hp}_DATA_WIDTH 64
                lappend data ps/S_AXI_HP$hp
                lappend data_clks ps/S_AXI_HP${hp}_ACLK
            }
            set_property -dict $config $ps
            return [dict create clk ps/FCLK_CLK0 resetn ps/FCLK_RESET0_N ctrl ps/M_AXI_GP0 \
                        ctrl_clk ps/M_AXI_GP0_ACLK data $data data_clks $data_clks irq ps/IRQ_F2P \
                        act_mhz CONFIG.PCW_ACT_FPGA0_PERIPHERAL_FREQMHZ]
        }
        psu {
            set ps [create_bd_cell -type ip -vlnv [hetadam_ip_vlnv zynq_ultra_ps_e] ps]
            if {$preset} {
                apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {apply_board_preset "1"} $ps
            }
            # M_AXI_GP0 is M_AXI_HPM0_FPD; S_AXI_GP<n + 2> is S_AXI_HP<n>_FPD. The presets
            # enable HPM1_FPD and HPM0_LPD as well: the design uses neither.
            set config [list \
                CONFIG.PSU__USE__M_AXI_GP0 1 \
                CONFIG.PSU__USE__M_AXI_GP1 0 \
                CONFIG.PSU__USE__M_AXI_GP2 0 \
                CONFIG.PSU__USE__IRQ0 1 \
                CONFIG.PSU__FPGA_PL0_ENABLE 1 \
                CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $clock_mhz \
            ]
            set data {}
            set data_clks {}
            foreach hp $hp_ports {
                set gp [expr {$hp + 2}]
                lappend config CONFIG.PSU__USE__S_AXI_GP$gp 1 CONFIG.PSU__SAXIGP${gp}__DATA_WIDTH 128
                lappend data ps/S_AXI_HP${hp}_FPD
                lappend data_clks ps/saxihp${hp}_fpd_aclk
            }
            set_property -dict $config $ps
            return [dict create clk ps/pl_clk0 resetn ps/pl_resetn0 ctrl ps/M_AXI_HPM0_FPD \
                        ctrl_clk ps/maxihpm0_fpd_aclk data $data data_clks $data_clks irq ps/pl_ps_irq0 \
                        act_mhz CONFIG.PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ]
        }
        default {
            error "unknown PS kind '$kind' (ps7 or psu)"
        }
    }
}
