# Vivado flow of a PYNQ overlay: block design (Zynq PS + the hetadam_adam kernel),
# synthesis, implementation, a timing gate, bitstream; the .bit and the .hwh PYNQ
# loads are copied to build/boards/<board>/hetadam.bit and hetadam.hwh, and
# reports/build_<kernel>.json records the part, the clock asked for and the
# clock the PS gives, and the worst setup and hold slack.
#
# Run by mk/hls.mk (`make bitstream BOARD=pynq-z2 KERNEL=hls`), or directly:
#   HETADAM_BOARD=pynq-z2 HETADAM_KERNEL=rtl vivado -mode batch -source hw/boards/build.tcl
#
# Environment:
#   HETADAM_BOARD   a folder of hw/boards with a board.tcl (default pynq-z2)
#   HETADAM_KERNEL  hls: the IP exported by hw/hls/run_hls.tcl for the board's part
#                   rtl: the RTL of hw/rtl/ (sources.f), packaged here as an IP
#   HETADAM_JOBS    parallel synthesis/implementation jobs (default 4)
#   HETADAM_PART    overrides the board's part (as in hw/hls/run_hls.tcl; the
#                   board files, which fix the board's own part, are then not used)
#   HETADAM_CLOCK_MHZ  overrides the board's fabric clock (the HLS IP should be
#                   synthesised for the same clock)
#   HETADAM_FORMAT  a format's name (e.g. b32-g16-m8-s8; default: DEFAULT) with
#                   HETADAM_FORMAT_GENERICS, its widths as NAME=VALUE words (`make
#                   bitstream FORMAT=NAME` sets both): the RTL kernel's parameters, or
#                   the HLS IP exported for that format (build/hls/<part>-<format>);
#                   recorded in reports/build_<kernel>.json
#
# The design: the PS's general-purpose master drives the kernel's AXI4-Lite
# control through a SmartConnect, at the board's ctrl_base; the kernel's four
# AXI4 masters reach DDR through the PS's high-performance ports listed in the
# board's hp_ports, split over them in order (p, g | ms, ex over two ports), one
# SmartConnect a port; the kernel's interrupt reaches the PS through an AXI
# interrupt controller at ctrl_base + 64 KiB (PYNQ serves interrupts only
# through an axi_intc); one fabric clock (the board's clock_mhz) and one reset
# drive everything. A bitstream with negative setup or hold slack is not shipped.

set boards_dir [file dirname [file normalize [info script]]]
set root [file dirname [file dirname $boards_dir]]

proc env_or {name default} {
    if {[info exists ::env($name)] && $::env($name) ne ""} {
        return $::env($name)
    }
    return $default
}

# The kernel's interface (host/hetadam/regmap.py: KERNEL_NAME, M_AXI_BUNDLES, CONTROL_BUNDLE).
set hetadam_top hetadam_adam
set hetadam_control s_axi_control
set hetadam_bundles {gmem_p gmem_g gmem_ms gmem_ex}

set board [env_or HETADAM_BOARD pynq-z2]
set kernel [env_or HETADAM_KERNEL hls]
set jobs [env_or HETADAM_JOBS 4]
set board_tcl [file join $boards_dir $board board.tcl]
if {![file exists $board_tcl]} {
    error "no board '$board': $board_tcl does not exist"
}
source $board_tcl
source [file join $boards_dir ps.tcl]
source [file join $boards_dir package_rtl.tcl]
set board_own_part $part
set part [env_or HETADAM_PART $part]
set clock_mhz [env_or HETADAM_CLOCK_MHZ $clock_mhz]
set format [env_or HETADAM_FORMAT ""]
set generics {}
foreach word [env_or HETADAM_FORMAT_GENERICS ""] {
    if {![regexp {^(BLOCK|G_BITS|M_BITS|S_BITS)=([0-9]+)$} $word -> name value]} {
        error "HETADAM_FORMAT_GENERICS: '$word' is not one of BLOCK=, G_BITS=, M_BITS=, S_BITS= with a number"
    }
    lappend generics CONFIG.$name $value
}
if {($format eq "") != ([llength $generics] == 0)} {
    error "HETADAM_FORMAT and HETADAM_FORMAT_GENERICS go together: `make bitstream FORMAT=<format>` sets both"
}

set out [file join $root build boards $board]
set work [file join $out $kernel]
file mkdir $out
# This build replaces the overlay: a failed one must not leave an earlier .bit to be deployed.
file delete -force [file join $out hetadam.bit] [file join $out hetadam.hwh]

# The kernel IP.
switch -- $kernel {
    hls {
        set hls_out [expr {$format eq "" ? $part : "$part-$format"}]
        set ip_repo [file join $root build hls $hls_out hetadam_prj sol impl ip]
        if {![file exists [file join $ip_repo component.xml]]} {
            set also [expr {$format eq "" ? "" : " FORMAT=$format"}]
            error "no HLS IP for $part in $ip_repo: run `make hls-export BOARD=$board$also` first"
        }
        set kernel_vlnv hetadam.org:hls:$hetadam_top:1.0
    }
    rtl {
        set ip_repo [file join $out rtl_ip]
        hetadam_package_rtl $root $part $ip_repo $hetadam_bundles
        set kernel_vlnv hetadam.org:rtl:$hetadam_top:1.0
    }
    default {
        error "HETADAM_KERNEL=$kernel: choose hls or rtl"
    }
}

# The project, on the board's board part when its board files are installed (and the part is the board's).
create_project -force hetadam $work -part $part
set board_part ""
if {$part eq $board_own_part} {
    set board_part [lindex [get_board_parts -quiet -latest_file_version $board_part_pattern] 0]
} else {
    puts "WARNING: HETADAM_PART=$part is not the board's part $board_own_part: the board files are not used"
}
if {$board_part ne ""} {
    set_property board_part $board_part [current_project]
    if {[info exists carrier_part_pattern]} {
        set carrier [lindex [get_board_parts -quiet -latest_file_version $carrier_part_pattern] 0]
        if {$carrier ne ""} {
            lassign [split $carrier :] vendor name _ version
            set_property board_connections [list $carrier_connector $vendor:$name:$carrier_connector:$version] \
                [current_project]
        }
    }
} elseif {$part eq $board_own_part} {
    puts "WARNING: no board files match $board_part_pattern; the PS keeps Vivado's defaults for DDR and MIO\
          (PYNQ's boot image configures them on the board)"
}
set_property ip_repo_paths [list $ip_repo] [current_project]
update_ip_catalog

# `items` cut into `n` runs in order, as even as can be: {a b c d} 2 -> {{a b} {c d}}.
proc hetadam_split {items n} {
    set groups {}
    set from 0
    for {set k 0} {$k < $n} {incr k} {
        set to [expr {($k + 1) * [llength $items] / $n}]
        lappend groups [lrange $items $from [expr {$to - 1}]]
        set from $to
    }
    return $groups
}

# The block design.
set bd hetadam_bd
create_bd_design $bd
set pins [hetadam_create_ps $ps_kind $clock_mhz [expr {$board_part ne ""}] $hp_ports]
create_bd_cell -type ip -vlnv $kernel_vlnv hetadam
if {$kernel eq "rtl" && [llength $generics]} {
    set_property -dict $generics [get_bd_cells hetadam]
}
create_bd_cell -type ip -vlnv [hetadam_ip_vlnv proc_sys_reset] rst
set ctrl_sc [create_bd_cell -type ip -vlnv [hetadam_ip_vlnv smartconnect] ctrl_sc]
set_property -dict [list CONFIG.NUM_SI 1 CONFIG.NUM_MI 2] $ctrl_sc
set intc [create_bd_cell -type ip -vlnv [hetadam_ip_vlnv axi_intc] intc]
set_property -dict [list CONFIG.C_IRQ_CONNECTION 1] $intc

connect_bd_intf_net [get_bd_intf_pins [dict get $pins ctrl]] [get_bd_intf_pins ctrl_sc/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins ctrl_sc/M00_AXI] [get_bd_intf_pins hetadam/$hetadam_control]
connect_bd_intf_net [get_bd_intf_pins ctrl_sc/M01_AXI] [get_bd_intf_pins intc/s_axi]
# One SmartConnect a high-performance port, each taking its run of the masters.
set data_ports [dict get $pins data]
set data_scs {}
foreach port $data_ports group [hetadam_split $hetadam_bundles [llength $data_ports]] {
    set sc data_sc[llength $data_scs]
    create_bd_cell -type ip -vlnv [hetadam_ip_vlnv smartconnect] $sc
    set_property -dict [list CONFIG.NUM_SI [llength $group] CONFIG.NUM_MI 1] $sc
    set si 0
    foreach bundle $group {
        connect_bd_intf_net [get_bd_intf_pins hetadam/m_axi_$bundle] [get_bd_intf_pins [format $sc/S%02d_AXI $si]]
        incr si
    }
    connect_bd_intf_net [get_bd_intf_pins $sc/M00_AXI] [get_bd_intf_pins $port]
    lappend data_scs $sc
}

set clocked [get_bd_pins [dict get $pins clk]]
foreach pin [list hetadam/ap_clk intc/s_axi_aclk rst/slowest_sync_clk ctrl_sc/aclk [dict get $pins ctrl_clk] \
                 {*}[dict get $pins data_clks]] {
    lappend clocked [get_bd_pins $pin]
}
set resets [list [get_bd_pins rst/peripheral_aresetn] [get_bd_pins hetadam/ap_rst_n] \
                [get_bd_pins intc/s_axi_aresetn] [get_bd_pins ctrl_sc/aresetn]]
foreach sc $data_scs {
    lappend clocked [get_bd_pins $sc/aclk]
    lappend resets [get_bd_pins $sc/aresetn]
}
connect_bd_net {*}$clocked
connect_bd_net [get_bd_pins [dict get $pins resetn]] [get_bd_pins rst/ext_reset_in]
connect_bd_net {*}$resets
connect_bd_net [get_bd_pins hetadam/interrupt] [get_bd_pins intc/intr]
connect_bd_net [get_bd_pins intc/irq] [get_bd_pins [dict get $pins irq]]

# The address map: the kernel's registers at ctrl_base, the interrupt controller's
# 64 KiB above (64 KiB each); each master sees all the PS's memory.
assign_bd_address
proc hetadam_place {cell offset} {
    set seg [get_bd_addr_segs -of_objects [get_bd_addr_spaces ps/Data] -filter "NAME =~ SEG_${cell}_*"]
    if {[llength $seg] != 1} {
        error "expected one address segment of $cell in ps/Data, found '$seg'"
    }
    set_property range 64K $seg
    set_property offset $offset $seg
}
hetadam_place hetadam $ctrl_base
hetadam_place intc [format 0x%08X [expr {$ctrl_base + 0x10000}]]

validate_bd_design
save_bd_design
# The fabric clock the PS's PLL gives for the one asked for (ZCU104: 187.5 MHz may come for 200).
set clock_actual [format %.3f [get_property [dict get $pins act_mhz] [get_bd_cells ps]]]
if {abs($clock_actual - $clock_mhz) > 0.001 * $clock_mhz} {
    puts "WARNING: the PS gives the fabric $clock_actual MHz, not the $clock_mhz MHz asked for\
          (its PLL's nearest): timing is checked, and the kernel runs, at $clock_actual MHz"
}
set bd_file [get_files $bd.bd]
generate_target all $bd_file
add_files -norecurse [make_wrapper -files $bd_file -top]
set_property top ${bd}_wrapper [current_fileset]
update_compile_order -fileset sources_1

# Synthesis, implementation, bitstream.
launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] ne "100%"} {
    error "implementation failed: [get_property STATUS [get_runs impl_1]] (see $work/hetadam.runs/impl_1)"
}
open_run impl_1
set reports [file join $out reports]
file mkdir $reports
set timing_rpt [file join $reports timing_$kernel.rpt]
report_utilization -file [file join $reports utilization_$kernel.rpt]
report_timing_summary -file $timing_rpt

# The timing gate: the worst setup (WNS) and hold (WHS) path, recorded, and no bitstream when either misses.
set failures {}
foreach {check delay_type} {setup max hold min} {
    set path [get_timing_paths -quiet -delay_type $delay_type -max_paths 1 -nworst 1]
    set raw ""
    if {[llength $path]} {
        set raw [get_property SLACK $path]
    }
    if {![string is double -strict $raw] || abs($raw) > 1e6} {
        error "no timed $check path in the routed design (slack '$raw'): is the fabric clock constrained?\
               See $timing_rpt"
    }
    set slack($check) [format %.3f $raw]
    if {$slack($check) < 0} {
        lappend failures "worst $check slack $slack($check) ns, from [get_property STARTPOINT_PIN $path]\
                          to [get_property ENDPOINT_PIN $path]"
    }
}
set report [file join $reports build_$kernel.json]
set fh [open $report w]
puts $fh [format {{
  "board": "%s",
  "kernel": "%s",
  "format": "%s",
  "part": "%s",
  "clock_mhz_requested": %s,
  "clock_mhz_actual": %s,
  "wns_ns": %s,
  "whs_ns": %s,
  "timing_met": %s
}} $board $kernel [expr {$format eq "" ? "default" : $format}] $part $clock_mhz $clock_actual \
    $slack(setup) $slack(hold) \
    [expr {[llength $failures] ? "false" : "true"}]]
close $fh
if {[llength $failures]} {
    error "timing not met at $clock_actual MHz: [join $failures {; }] (see $timing_rpt). No bitstream is\
           shipped: build for a slower clock (HETADAM_CLOCK_MHZ=..., with the HLS IP synthesised for it) or\
           shorten the path"
}

# PYNQ loads NAME.bit with NAME.hwh beside it (the .hwh sits under .gen since Vivado 2020.2, .srcs before).
file copy -force [file join [get_property DIRECTORY [get_runs impl_1]] ${bd}_wrapper.bit] [file join $out hetadam.bit]
set hwh [lindex [glob -nocomplain \
    [file join $work hetadam.gen sources_1 bd $bd hw_handoff $bd.hwh] \
    [file join $work hetadam.srcs sources_1 bd $bd hw_handoff $bd.hwh]] 0]
if {$hwh eq ""} {
    error "the block design's hardware handoff ($bd.hwh) was not generated"
}
file copy -force $hwh [file join $out hetadam.hwh]
puts "hetadam: [file join $out hetadam.bit] and hetadam.hwh ($kernel kernel, $board, $clock_actual MHz,\
      WNS $slack(setup) ns, WHS $slack(hold) ns; $report)"
