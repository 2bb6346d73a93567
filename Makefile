# Thin wrapper over CMake + ctest. `make` builds into build/; `make test` is
# what CI runs; `make demo` shows the main job.
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
FUZZ_SECONDS ?= 20
CMAKE_FLAGS ?=

.PHONY: all build test test-asan test-release fuzz demo bench install clean help

all: build

help:
	@echo "make          build everything into $(BUILD)/ (CLI: $(BUILD)/natpunch)"
	@echo "make test     install missing packages, build (plain + ASan/UBSan + fuzz), run the suite"
	@echo "make demo     install missing packages, build, run the NAT lab demo"
	@echo "make bench    benchmarks: discovery server vs coturn, rendezvous server with 10,000 peers,"
	@echo "              throughput of a punched path vs plain TCP and UDP (NAT lab, needs root)"
	@echo "make fuzz     run each libFuzzer target for FUZZ_SECONDS (default $(FUZZ_SECONDS))"
	@echo "make install  install library, header, pkg-config file, CLI, man pages, bash completion (PREFIX via CMAKE_FLAGS)"

build:
	@scripts/deps.sh build
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

$(ASAN_BUILD)/CMakeCache.txt:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DNP_SANITIZE=ON $(CMAKE_FLAGS) >/dev/null

$(FUZZ_BUILD)/CMakeCache.txt:
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DNP_FUZZ=ON -DNP_TESTS=OFF >/dev/null

# The whole suite runs on the sanitizer build (so the lab and interop tests
# exercise ASan/UBSan binaries); the plain build runs the unit tests, which
# catches optimiser-only differences; the fuzzers get a short run.
test:
	@scripts/deps.sh test
	$(MAKE) --no-print-directory build
	$(MAKE) --no-print-directory $(ASAN_BUILD)/CMakeCache.txt
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(BUILD) && ctest --output-on-failure -L unit
	$(MAKE) --no-print-directory fuzz
	cd $(ASAN_BUILD) && ctest --output-on-failure -j$(JOBS) --timeout 600

fuzz: $(FUZZ_BUILD)/CMakeCache.txt
	cmake --build $(FUZZ_BUILD) -j$(JOBS)
	@for f in $(FUZZ_BUILD)/fuzz/fuzz_*; do \
	  [ -x "$$f" ] || continue; name=$$(basename $$f); \
	  echo "fuzz: $$name for $(FUZZ_SECONDS)s"; \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$name; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 \
	      -artifact_prefix=$(FUZZ_BUILD)/ $(FUZZ_BUILD)/corpus/$$name fuzz/corpus/$${name#fuzz_} \
	      2>$(FUZZ_BUILD)/$$name.log || { tail -40 $(FUZZ_BUILD)/$$name.log; exit 1; }; \
	  grep -E '^#[0-9]+.*DONE' $(FUZZ_BUILD)/$$name.log | tail -1; \
	done

demo:
	@scripts/deps.sh demo
	$(MAKE) --no-print-directory build
	scripts/demo.sh $(BUILD)/natpunch

bench:
	@scripts/deps.sh bench
	$(MAKE) --no-print-directory build
	bench/discovery
	bench/rendezvous
	@# 77: not root, or no network namespaces here (the NAT lab's skip)
	bench/throughput --build $(BUILD) || [ $$? = 77 ]

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
