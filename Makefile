# Shortcuts for dev.py, which needs only Python 3.11+ (no make required).
PY ?= python3

.PHONY: demo test bench lint
demo:
	$(PY) dev.py demo
test:
	$(PY) dev.py test
bench:
	$(PY) dev.py bench
lint:
	$(PY) dev.py lint
