# The HLS kernel (hw/hls/) and the PYNQ overlays (hw/boards/); docs/hls.md describes each step.
#
#   make csim                     C simulation: the kernel and its testbench built with the host
#                                 C++ compiler, run over the golden vectors (no vendor tools)
#   make hls STEP=S BOARD=B       Vitis HLS for board B's part and clock, S one of
#                                 csim | csynth | cosim | export | all (needs vitis_hls)
#   make hls-csim | hls-csynth | hls-cosim | hls-export    one step of the above
#   make bitstream BOARD=B KERNEL=hls|rtl                  Vivado: build/boards/B/hetadam.bit + .hwh
#                                 (needs vivado; KERNEL=hls exports the HLS IP first)
# Boards: the folders of hw/boards/ (pynq-z2, zcu104, kv260). HETADAM_PART=<part> and
# HETADAM_CLOCK_MHZ=<MHz> override the board's part and clock for both flows.
# FORMAT=<format> (e.g. FORMAT=b32-g16-m8-s8; default: DEFAULT of host/hetadam/numerics/formats.py)
# builds csim, the HLS IP and the bitstream for that format's widths (docs/dse.md); its HLS
# build and golden vectors get their own folders. On the board, name it in $HETADAM_KERNEL_FORMAT.

FORMAT ?=
# FORMAT's widths as NAME=VALUE words (hetadam.formats_render checks them); none for DEFAULT
FORMAT_CHECK = $(if $(FORMAT),$(shell $(PY) -m hetadam.formats_render --generics $(FORMAT) 2>&1))
FORMAT_GENERICS = $(filter BLOCK=% G_BITS=% M_BITS=% S_BITS=%,$(FORMAT_CHECK))
FORMAT_SUFFIX = $(if $(FORMAT),-$(FORMAT))
FORMAT_ENV = HETADAM_FORMAT=$(FORMAT) HETADAM_FORMAT_GENERICS="$(FORMAT_GENERICS)"

HLS_DIR := hw/hls
HLS_BUILD := build/hls
GOLDEN_DIR := build/golden$(FORMAT_SUFFIX)
HLS_CXX ?= $(CXX)
HLS_CXXFLAGS ?= -std=c++17 -O2 -Wall -Wextra -Wno-unknown-pragmas -Wno-unused-label
HLS_HEADERS := $(wildcard $(HLS_DIR)/*.h)
HLS_KERNEL_SRC := $(HLS_DIR)/hetadam_adam.cpp $(HLS_HEADERS)

BOARD ?= pynq-z2
KERNEL ?= hls
STEP ?= all
VITIS_HLS ?= vitis_hls
VITIS_HLS_TCL_FLAG ?= -f
VIVADO ?= vivado
BOARD_TCL = hw/boards/$(BOARD)/board.tcl
BOARD_PART = $(or $(HETADAM_PART),$(shell sed -n 's/^set part  *//p' $(BOARD_TCL)))
HLS_IP = $(HLS_BUILD)/$(BOARD_PART)$(FORMAT_SUFFIX)/hetadam_prj/sol/impl/ip/component.xml
HLS_GOALS := hls hls-csim hls-csynth hls-cosim hls-export

VITIS_HLS_HELP := install AMD Vitis HLS (part of AMD Vitis 2022.1 or later, https://www.xilinx.com/support/download.html) and run `source <install dir>/settings64.sh`, or set VITIS_HLS=/path/to/vitis_hls (Vitis 2024.2 and later: VITIS_HLS="vitis-run --mode hls" VITIS_HLS_TCL_FLAG=--tcl)
VIVADO_HELP := install AMD Vivado (2022.1 or later, with Zynq-7000 and Zynq UltraScale+ devices, https://www.xilinx.com/support/download.html) and run `source <install dir>/settings64.sh`, or set VIVADO=/path/to/vivado

# $(call hls_need_tool,TOOL,HELP): stop at once, naming the tool, unless TOOL (a command line) is on PATH.
hls_need_tool = $(if $(shell command -v $(firstword $(1)) 2>/dev/null),,$(error $(firstword $(1)) not found on PATH: $(2)))
hls_need_board = $(if $(wildcard $(BOARD_TCL)),,$(error BOARD=$(BOARD): no $(BOARD_TCL); boards: $(patsubst hw/boards/%/board.tcl,%,$(wildcard hw/boards/*/board.tcl))))
hls_need_format = $(if $(FORMAT),$(if $(FORMAT_GENERICS),,$(error FORMAT=$(FORMAT): $(FORMAT_CHECK))))

ifneq ($(filter csim bitstream $(HLS_GOALS),$(MAKECMDGOALS)),)
$(call hls_need_format)
endif
ifneq ($(filter bitstream,$(MAKECMDGOALS)),)
$(call hls_need_tool,$(VIVADO),$(VIVADO_HELP))
$(call hls_need_board)
$(if $(filter $(KERNEL),hls rtl),,$(error KERNEL=$(KERNEL): choose hls or rtl))
endif
ifneq ($(filter $(HLS_GOALS),$(MAKECMDGOALS)),)
$(call hls_need_tool,$(VITIS_HLS),$(VITIS_HLS_HELP))
$(call hls_need_board)
endif

.PHONY: csim hls $(filter-out hls,$(HLS_GOALS)) bitstream

$(GOLDEN_DIR)/.stamp: $(STAMP) $(wildcard host/hetadam/numerics/*.py) host/hetadam/regmap.py
	rm -rf $(GOLDEN_DIR)
	$(PY) -m hetadam.numerics.golden $(if $(FORMAT),--format $(FORMAT)) $(GOLDEN_DIR)
	touch $@

$(HLS_BUILD)/csim$(FORMAT_SUFFIX): $(HLS_DIR)/hetadam_adam_tb.cpp $(HLS_KERNEL_SRC)
	@mkdir -p $(@D)
	$(HLS_CXX) $(HLS_CXXFLAGS) $(addprefix -DHETADAM_,$(FORMAT_GENERICS)) -I$(HLS_DIR) \
		$(HLS_DIR)/hetadam_adam_tb.cpp $(HLS_DIR)/hetadam_adam.cpp -o $@

csim: $(HLS_BUILD)/csim$(FORMAT_SUFFIX) $(GOLDEN_DIR)/.stamp
	$(HLS_BUILD)/csim$(FORMAT_SUFFIX) $(GOLDEN_DIR)/*.vec

hls: $(GOLDEN_DIR)/.stamp
	@mkdir -p $(HLS_BUILD)
	cd $(HLS_BUILD) && HETADAM_STEP=$(STEP) HETADAM_BOARD=$(BOARD) HETADAM_PART=$(BOARD_PART) $(FORMAT_ENV) \
		HETADAM_GOLDEN=$(CURDIR)/$(GOLDEN_DIR) $(VITIS_HLS) $(VITIS_HLS_TCL_FLAG) $(CURDIR)/$(HLS_DIR)/run_hls.tcl

hls-csim hls-csynth hls-cosim hls-export:
	$(MAKE) hls STEP=$(@:hls-%=%) BOARD=$(BOARD) FORMAT=$(FORMAT)

# The sub-make stops at once when vitis_hls is missing.
$(HLS_IP): $(HLS_KERNEL_SRC) $(HLS_DIR)/run_hls.tcl $(BOARD_TCL)
	$(MAKE) hls STEP=export BOARD=$(BOARD) FORMAT=$(FORMAT)

bitstream: $(if $(filter hls,$(KERNEL)),$(HLS_IP))
	@mkdir -p build/boards/$(BOARD)
	cd build/boards/$(BOARD) && HETADAM_BOARD=$(BOARD) HETADAM_KERNEL=$(KERNEL) HETADAM_PART=$(BOARD_PART) $(FORMAT_ENV) \
		$(VIVADO) -mode batch -nojournal -log vivado_$(KERNEL).log -source $(CURDIR)/hw/boards/build.tcl
