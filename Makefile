# The two commands of the README:
#   make demo   set up .venv, compile builtin:digits for this host, write an image grid, print the report;
#               then compile builtin:digits-sd (text to image) and write a grid from prompts naming each digit
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: demo test install clean

install: $(VENV)/.installed

# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
# constraints.txt holds every step to versions that the later steps accept (pip prints a resolver
# ERROR otherwise). The editable install builds the C extension and edgediff-run (setup.py).
PIP := $(PY) -m pip install -q -c constraints.txt
$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	# The [tflite] extra's packages, installed on top: resolved together with the rest, pip
	# backtracks for over ten minutes (litert-torch pins an older typing-extensions); on top of an
	# installed environment it takes under a minute. Keep this list equal to the extra in pyproject.toml.
	$(PIP) 'litert-torch>=0.10' 'ai-edge-litert>=2.3' 'ai-edge-quantizer>=0.10'
	touch $@

demo: install
	$(VENV)/bin/edgediff compile builtin:digits --target host-cpu --sampler dpmpp-2m --steps 20 --guidance 3 -o $(OUT)/digits
	$(VENV)/bin/edgediff generate $(OUT)/digits -n 20 --seed 0 -o $(OUT)/digits.png
	$(VENV)/bin/edgediff inspect $(OUT)/digits
	$(VENV)/bin/edgediff compile builtin:digits-sd --target host-cpu --steps 20 --guidance 5 -o $(OUT)/digits-sd
	$(VENV)/bin/edgediff generate $(OUT)/digits-sd --prompts docs/digits-sd-prompts.txt --seed 0 -o $(OUT)/digits-sd.png

# two workers, one per core of the CI machine; test files stay whole on one worker (module
# fixtures compile once); JOBS=0 runs serially
JOBS ?= 2
test: install
	$(PY) -m pytest -q $(if $(filter-out 0,$(JOBS)),-n $(JOBS) --dist loadfile)

clean:
	rm -rf $(OUT) build *.egg-info src/*.egg-info
	rm -f src/edgediff/bin/edgediff-run src/edgediff/bin/edgediff-run-core src/edgediff/bin/runner.json
