# Vitis HLS flow of the hetadam_adam kernel: C simulation, synthesis, C/RTL
# co-simulation and export as a Vivado IP-catalog IP (hetadam.org:hls:hetadam_adam:1.0).
#
# Run by mk/hls.mk (`make hls STEP=... BOARD=...`), or directly:
#   HETADAM_STEP=csynth HETADAM_BOARD=pynq-z2 vitis_hls -f hw/hls/run_hls.tcl
#
# Environment:
#   HETADAM_STEP       csim | csynth | cosim | export | all (default all); cosim and
#                      export synthesise first, all runs the four in turn
#   HETADAM_BOARD      a folder of hw/boards (default pynq-z2): its board.tcl gives the
#                      part and the clock
#   HETADAM_PART       overrides the board's part
#   HETADAM_CLOCK_MHZ  overrides the board's clock
#   HETADAM_GOLDEN     the golden vectors for csim and cosim (default build/golden)
#   HETADAM_FORMAT     a format's name (e.g. b32-g16-m8-s8; default: DEFAULT, the widths of
#                      adam_format.h) and HETADAM_FORMAT_GENERICS its widths as NAME=VALUE
#                      words (`python -m hetadam.formats_render --generics NAME` prints them;
#                      `make hls FORMAT=NAME` sets both), passed to the compiler as -DHETADAM_NAME
#
# Output in build/hls/<part>/ (build/hls/<part>-<format>/ for a FORMAT): the project
# (hetadam_prj/sol; the exported IP in hetadam_prj/sol/impl/ip) and the reports, copied to
# its reports/.

set hls_dir [file dirname [file normalize [info script]]]
set root [file dirname [file dirname $hls_dir]]

proc env_or {name default} {
    if {[info exists ::env($name)] && $::env($name) ne ""} {
        return $::env($name)
    }
    return $default
}

set step [env_or HETADAM_STEP all]
set steps {csim csynth cosim export all}
if {[lsearch -exact $steps $step] < 0} {
    error "HETADAM_STEP=$step: choose one of $steps"
}
set board [env_or HETADAM_BOARD pynq-z2]
set board_tcl [file join $root hw boards $board board.tcl]
if {![file exists $board_tcl]} {
    error "no board '$board': $board_tcl does not exist"
}
source $board_tcl
set part [env_or HETADAM_PART $part]
set clock_mhz [env_or HETADAM_CLOCK_MHZ $clock_mhz]
set golden [env_or HETADAM_GOLDEN [file join $root build golden]]
set format [env_or HETADAM_FORMAT ""]
set defines {}
foreach word [env_or HETADAM_FORMAT_GENERICS ""] {
    if {![regexp {^(BLOCK|G_BITS|M_BITS|S_BITS)=([0-9]+)$} $word -> name value]} {
        error "HETADAM_FORMAT_GENERICS: '$word' is not one of BLOCK=, G_BITS=, M_BITS=, S_BITS= with a number"
    }
    lappend defines -DHETADAM_$name=$value
}
if {($format eq "") != ([llength $defines] == 0)} {
    error "HETADAM_FORMAT and HETADAM_FORMAT_GENERICS go together: `make hls FORMAT=<format>` sets both"
}
set vectors [lsort [glob -nocomplain -directory $golden *.vec]]
if {$step in {csim cosim all} && [llength $vectors] == 0} {
    error "no golden vectors in $golden: run `make csim` (or python -m hetadam.numerics.golden $golden) first"
}

set out [file join $root build hls [expr {$format eq "" ? $part : "$part-$format"}]]
set reports [file join $out reports]
file mkdir $reports
cd $out

open_project -reset hetadam_prj
set_top hetadam_adam
set cflags [join [list -std=c++14 -I$hls_dir {*}$defines]]
add_files [file join $hls_dir hetadam_adam.cpp] -cflags $cflags
add_files -tb [file join $hls_dir hetadam_adam_tb.cpp] -cflags $cflags
open_solution -reset sol -flow_target vivado
set_part $part
create_clock -period [format %.3f [expr {1000.0 / $clock_mhz}]] -name default
# What the driver depends on, pinned rather than left to the release's defaults (UG1399 2023.1
# documents 32-bit m_axi addresses as the Vivado IP flow's default): 64-bit addresses, two
# words a pointer as in the register map; and an interrupt status register that toggles on
# write, as the RTL kernel's does (host/hetadam/regmap.py: ISR_MODE). Releases without the
# option keep their own ISR mode, which some make clear-on-read: the driver handles both.
config_interface -m_axi_addr64=true
if {[catch {config_interface -s_axilite_interrupt_mode tow} why]} {
    puts "WARNING: this Vitis HLS does not take `config_interface -s_axilite_interrupt_mode` ($why): the IP's\
          interrupt status register keeps the release's default, toggle-on-write or clear-on-read;\
          the driver acknowledges either (docs/hls.md)"
}
config_export -format ip_catalog -rtl verilog -vendor hetadam.org -library hls -version 1.0 \
    -display_name "hetadam Adam (HLS)" -description "Fixed-point Adam update, hetadam register map"

proc copy_reports {pattern} {
    foreach f [glob -nocomplain $pattern] {
        file copy -force $f $::reports
    }
}

if {$step in {csim all}} {
    csim_design -argv [join $vectors " "]
    copy_reports hetadam_prj/sol/csim/report/*
}
if {$step in {csynth cosim export all}} {
    csynth_design
    copy_reports hetadam_prj/sol/syn/report/*.rpt
    copy_reports hetadam_prj/sol/syn/report/*.xml
}
if {$step in {cosim all}} {
    cosim_design -rtl verilog -trace_level none -argv [join $vectors " "]
    copy_reports hetadam_prj/sol/sim/report/*
}
if {$step in {export all}} {
    export_design -format ip_catalog
    puts "hetadam: IP repository [file join $out hetadam_prj sol impl ip]"
}
puts "hetadam: $step for $part at $clock_mhz MHz[expr {$format eq "" ? "" : ", format $format"}] done; reports in\
      $reports"
exit
