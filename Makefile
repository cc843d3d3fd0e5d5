# Convenience targets; the real work lives in scripts/.
SHELL := /bin/bash

.PHONY: test bootstrap demo

## test: bootstrap the toolchain and run the whole test suite (same as CI: bash .ci/run)
test:
	bash scripts/test.sh

## bootstrap: install Debian packages, create .venv, write the ansible-test get-pip shim
bootstrap:
	bash scripts/bootstrap.sh

## demo: run the end-to-end demo (scripts/demo.sh)
demo:
	bash scripts/demo.sh
