# The co-design sweep (scripts/dse.py; docs/dse.md describes it). Included by the top Makefile.
#
#   make dse             format x lanes on every board: accuracy (digits and the char-level GPT),
#                        yosys resources, modelled throughput, Pareto points and a recommendation
#                        per board, in build/dse/dse.{md,json,png}; every training run and synthesis
#                        is cached, so a re-run computes only what changed
#   make dse QUICK=1     the small sweep CI runs (a minute or two), in build/dse-quick/
# Needs yosys (apt-get install yosys) and the corpus (apt-get install dict-devil).

QUICK ?=
DSE_OUT ?= build/dse$(if $(QUICK),-quick)

.PHONY: dse

dse: $(STAMP)
	$(PY) scripts/dse.py --out $(DSE_OUT) $(if $(QUICK),--quick)
