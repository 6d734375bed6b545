# Deployment to a PYNQ board: scripts/deploy_pynq.py; docs/pynq.md describes the board side.
#
#   make deploy BOARD=B HOST=user@address    package build/boards/B/hetadam.{bit,hwh} + the hetadam wheel +
#                                            the smoke test (SHA-256 manifest), copy it over ssh, run the
#                                            smoke test on the board and print its report
#   make deploy-package BOARD=B              the package only, in build/deploy/B/
#   make board-check BOARD=B HOST=user@address   the first run on a new board (docs/pynq.md): deploy, then
#                                            the smoke test polling, then waiting on the interrupt, then a
#                                            short training through the driver; prints what passed
# DEPLOY_ARGS passes more options, e.g. DEPLOY_ARGS='--install --port 2222' or, without a board,
# DEPLOY_ARGS='--transport fake' (the smoke test runs against the golden-model double of the kernel).
# DEPLOY_ARGS=--serve also installs `hetadam serve --backend pynq` as a systemd service with a token
# made on the board, steps through it from this host, and says how to reach it (docs/remote.md).

BOARD ?= pynq-z2
HOST ?=
DEPLOY_ARGS ?=

.PHONY: deploy deploy-package board-check

deploy: $(STAMP)
	$(if $(HOST),,$(error HOST is required: make deploy BOARD=$(BOARD) HOST=xilinx@<board address>))
	$(PY) scripts/deploy_pynq.py --board $(BOARD) --host $(HOST) $(DEPLOY_ARGS)

deploy-package: $(STAMP)
	$(PY) scripts/deploy_pynq.py --board $(BOARD) --package-only $(DEPLOY_ARGS)

board-check: $(STAMP)
	$(if $(HOST),,$(error HOST is required: make board-check BOARD=$(BOARD) HOST=xilinx@<board address>))
	$(PY) scripts/deploy_pynq.py --board $(BOARD) --host $(HOST) --board-check $(DEPLOY_ARGS)
