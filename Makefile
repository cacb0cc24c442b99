# The two commands of the README:
#   make demo   set up .venv, compile builtin:digits for this host, write an image grid, print the report
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: demo test install clean

install: $(VENV)/.installed

# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# The [tflite] extra's packages, installed on top: resolved together with the rest, pip
	# backtracks for over ten minutes (litert-torch pins an older typing-extensions); on top of an
	# installed environment it takes under a minute. Keep this list equal to the extra in pyproject.toml.
	$(PY) -m pip install -q 'litert-torch>=0.10' 'ai-edge-litert>=2.3' 'ai-edge-quantizer>=0.10'
	touch $@

demo: install
	$(VENV)/bin/edgediff compile builtin:digits --target host-cpu --sampler dpmpp-2m --steps 20 --guidance 3 -o $(OUT)/digits
	$(VENV)/bin/edgediff generate $(OUT)/digits -n 20 --seed 0 -o $(OUT)/digits.png
	$(VENV)/bin/edgediff inspect $(OUT)/digits

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(OUT) build *.egg-info
