# make install   pinned dependencies + editable build of coavs (compiles coavs._C; CUDA kernels when nvcc exists)
# make test      install, then the test suite (the README's test command)
# make demo      install, coavs info, then the Co-AVS demo: vanilla, debias, negative audio, both; one table
# make bench     every benchmark at full size on the default device
# make ctest     C++ checks of the shared host/device arithmetic (CMake + ctest)
# make compile-report  registers/spills/shared memory/occupancy of every kernel on sm_90 (no GPU needed)
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
CUDA_HOME ?= $(shell [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda)
export CUDA_HOME
export MAX_JOBS ?= 2
PYTEST_ARGS ?= -q

.PHONY: install deps build test demo bench ctest clean compile-report

install: deps build

deps:
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps torchvggish==0.2  # test-only VGGish port (requirements.txt says why)

# flock: concurrent builds in one tree would clobber each other's objects.
build:
	flock /tmp/coavs-build.lock $(PIP) install --quiet --no-build-isolation --no-deps -e .

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

# The demo trains four small models, two at a time on the CPU (one thread each), then prints one metrics table.
demo: install
	$(PYTHON) -m coavs info
	$(PYTHON) -m coavs.demo $(DEMO_ARGS)

bench: install
	for b in benchmarks/bench_*.py; do $(PYTHON) -m benchmarks.$$(basename $$b .py) || exit 1; done

compile-report:
	env -u TRITON_INTERPRET $(PYTHON) -m benchmarks.compile_report --arch 90

ctest:
	cmake -S . -B build-cmake -G Ninja && cmake --build build-cmake && ctest --test-dir build-cmake --output-on-failure

clean:
	rm -rf build build-cmake *.egg-info coavs/_C*.so
