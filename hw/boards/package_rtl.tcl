# Package the RTL kernel (hw/rtl/, top hetadam_adam) as a Vivado IP,
# hetadam.org:rtl:hetadam_adam:1.0, for hw/boards/build.tcl.
#
# The sources are those listed in hw/rtl/sources.f, one path a line, relative to
# hw/rtl/ or to the repository root (`//` and `#` start comments; `+incdir+` and
# `-` options are skipped). The ports follow Vitis HLS naming, so the AXI
# interfaces are inferred: s_axi_control, m_axi_gmem_p/g/ms/ex, clock ap_clk,
# reset ap_rst_n, interrupt.

proc hetadam_rtl_sources {root} {
    set list [file join $root hw rtl sources.f]
    if {![file exists $list]} {
        error "$list not found: it lists the RTL kernel's sources"
    }
    set fh [open $list]
    set lines [split [read $fh] "\n"]
    close $fh
    set files {}
    foreach line $lines {
        set line [string trim [regsub {(//|#).*$} $line ""]]
        if {$line eq "" || [string match {[-+]*} $line]} {
            continue
        }
        set found ""
        foreach base [list [file dirname $list] $root] {
            set path [file normalize [file join $base $line]]
            if {[file exists $path]} {
                set found $path
                break
            }
        }
        if {$found eq ""} {
            error "$line (listed in $list) not found"
        }
        lappend files $found
    }
    return $files
}

proc hetadam_package_rtl {root part ip_dir bundles} {
    set work [file join [file dirname $ip_dir] rtl_pkg]
    create_project -force rtl_pkg $work -part $part
    add_files -norecurse [hetadam_rtl_sources $root]
    set_property top hetadam_adam [current_fileset]
    update_compile_order -fileset sources_1
    ipx::package_project -root_dir $ip_dir -vendor hetadam.org -library rtl -taxonomy /UserIP \
        -import_files -set_current true -force
    set core [ipx::current_core]
    set_property -dict [list name hetadam_adam version 1.0 display_name "hetadam Adam (RTL)" \
        description "Fixed-point Adam update, hetadam register map"] $core

    # AXI interfaces, clock and reset are inferred from the port names; the interrupt by its signal.
    ipx::infer_bus_interfaces xilinx.com:interface:aximm_rtl:1.0 $core
    if {[llength [ipx::get_bus_interfaces interrupt -of_objects $core]] == 0} {
        ipx::infer_bus_interface interrupt xilinx.com:signal:interrupt_rtl:1.0 $core
    }
    set irq [ipx::get_bus_interfaces interrupt -of_objects $core]
    if {[llength [ipx::get_bus_parameters SENSITIVITY -of_objects $irq]] == 0} {
        ipx::add_bus_parameter SENSITIVITY $irq
    }
    set_property value LEVEL_HIGH [ipx::get_bus_parameters SENSITIVITY -of_objects $irq]
    set rst [ipx::get_bus_interfaces ap_rst_n -of_objects $core]
    if {[llength [ipx::get_bus_parameters POLARITY -of_objects $rst]] == 0} {
        ipx::add_bus_parameter POLARITY $rst
    }
    set_property value ACTIVE_LOW [ipx::get_bus_parameters POLARITY -of_objects $rst]

    set busifs [list s_axi_control]
    foreach bundle $bundles {
        lappend busifs m_axi_$bundle
    }
    foreach busif $busifs {
        if {[llength [ipx::get_bus_interfaces $busif -of_objects $core]] == 0} {
            error "the RTL top has no AXI interface $busif (ports ${busif}_*)"
        }
        ipx::associate_bus_interfaces -busif $busif -clock ap_clk $core
    }
    ipx::associate_bus_interfaces -clock ap_clk -reset ap_rst_n $core

    # The control registers: a 64 KiB window (the register map lies below 0x100).
    if {[llength [ipx::get_memory_maps s_axi_control -of_objects $core]] == 0} {
        set map [ipx::add_memory_map s_axi_control $core]
        set_property slave_memory_map_ref s_axi_control [ipx::get_bus_interfaces s_axi_control -of_objects $core]
        set block [ipx::add_address_block Reg $map]
        set_property -dict {range 65536 width 32 usage register} $block
    }
    # Each master addresses 64 bits (all of a Zynq UltraScale+ PS's DDR, above 4 GiB too).
    foreach bundle $bundles {
        set busif m_axi_$bundle
        set space [ipx::get_address_spaces $busif -of_objects $core]
        if {[llength $space] == 0} {
            set space [ipx::add_address_space $busif $core]
            set_property master_address_space_ref $busif [ipx::get_bus_interfaces $busif -of_objects $core]
        }
        set_property -dict {range 16E width 64} $space
    }

    ipx::create_xgui_files $core
    ipx::update_checksums $core
    ipx::check_integrity $core
    ipx::save_core $core
    close_project
}
