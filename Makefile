# kvfuse - build, test and demo targets. `make help` lists them.
#
# One library (build/libkvfuse.a) from src/ (common.c, engine/, store/, fusion/), the CLI
# (build/kvfuse) from tools/ (cli/, server/, eval/), one test binary per tests/test_*.c. Files
# named *_avx2.c / *_avx512.c are compiled with that ISA's flags and only called after a
# run-time CPU check, so one binary runs on any x86-64.

CC      ?= cc
BUILD   ?= build
PYTHON  ?= python3
MODEL   ?= models/SmolLM2-135M-Instruct.Q4_1.gguf

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wpointer-arith \
           -Werror=implicit-function-declaration -Wno-unused-parameter
CFLAGS  ?= -O2 -g
INCS    := -Iinclude -Isrc
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(INCS) $(WARN) $(CFLAGS) -pthread $(EXTRA_CFLAGS)
LDLIBS  := -llmdb -lhiredis -lzstd -lcjson -lz -lmicrohttpd -lm -pthread

ISA_AVX2   := -mavx2 -mfma -mf16c
ISA_AVX512 := -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni

# Sanitizer build: make SAN=1 (used by `make asan`).
ifeq ($(SAN),1)
  ALL_CFLAGS += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
  LDLIBS     += -fsanitize=address,undefined
endif

LIB_SRC  := $(sort $(wildcard src/*.c src/*/*.c src/*/*/*.c))
LIB_HDR  := $(sort $(wildcard src/*.h src/*/*.h src/*/*/*.h)) include/kvfuse.h
LIB_OBJ  := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(LIB_SRC))
TOOL_SRC := $(sort $(wildcard tools/*/*.c))
TOOL_HDR := $(sort $(wildcard tools/*/*.h))
TOOL_INCS := -Itools
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
# tests/tool_*.c: helper programs that integration scripts drive (not run on their own)
TOOL_TEST_SRC := $(sort $(wildcard tests/tool_*.c))
TEST_BIN += $(patsubst tests/%.c,$(BUILD)/tests/%,$(TOOL_TEST_SRC))
BENCH_SRC := $(sort $(wildcard bench/*.c))
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
LIB      := $(BUILD)/libkvfuse.a
CLI      := $(BUILD)/kvfuse

.PHONY: all lib cli tests benches test test-unit test-integration asan demo model python-deps deps \
        bench bench-peer bench-store bench-load fuzz clean format help

all: cli tests benches ## build the library, the CLI, the tests and the benchmarks

lib: $(LIB)
cli: $(CLI)
tests: $(TEST_BIN)
benches: $(BENCH_BIN)

$(BUILD)/obj/%_avx2.o: src/%_avx2.c $(LIB_HDR) | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -O3 $(ISA_AVX2) -c $< -o $@

$(BUILD)/obj/%_avx512.o: src/%_avx512.c $(LIB_HDR) | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -O3 $(ISA_AVX512) -c $< -o $@

$(BUILD)/obj/%.o: src/%.c $(LIB_HDR) | $(BUILD)/.deps-ok
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(CLI): $(TOOL_SRC) $(TOOL_HDR) $(LIB)
	$(CC) $(ALL_CFLAGS) $(TOOL_INCS) $(TOOL_SRC) $(LIB) $(LDLIBS) -o $@

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(LIB) | $(BUILD)/tests
	$(CC) $(ALL_CFLAGS) $(TOOL_INCS) -Itests $< $(LIB) $(LDLIBS) -o $@

# the server's unit test compiles the server sources in (tools/server/server_*.c)
$(BUILD)/tests/test_server_api: $(wildcard tools/server/server_*.c tools/server/server_*.h)

$(BUILD)/bench/%: bench/%.c $(LIB) | $(BUILD)/bench
	$(CC) $(ALL_CFLAGS) $(TOOL_INCS) $< $(LIB) $(LDLIBS) -o $@

$(BUILD)/tests $(BUILD)/bench:
	mkdir -p $@

# Debian packages the build needs (scripts/deps.sh installs what is missing, once).
$(BUILD)/.deps-ok: scripts/deps.sh
	mkdir -p $(BUILD)/obj && scripts/deps.sh && touch $@

model: $(MODEL) ## download the default model (SmolLM2-135M-Instruct Q4_1) into models/

$(MODEL):
	scripts/get-model.sh $@

deps: ## install the Debian packages the build needs (idempotent)
	scripts/deps.sh

python-deps: ## install the Python oracles used by the integration tests into .venv
	scripts/python-deps.sh

test: all model ## build everything and run every test (unit + integration); prints "N passed, N failed"
	scripts/run-tests.sh

test-unit: all ## unit tests only (synthetic models, no downloads)
	scripts/run-tests.sh --unit

asan: ## unit tests under AddressSanitizer + UndefinedBehaviorSanitizer
	$(MAKE) BUILD=build/asan SAN=1 CFLAGS="-O1 -g" all
	BUILD=build/asan scripts/run-tests.sh --unit

demo: ## set up everything; a chat answer, a3 vs full over documents, the server answering curl
	scripts/demo.sh

bench: cli model ## prefill/decode tokens per second on the default model
	$(CLI) bench -m $(MODEL) -p 512 -n 128 -r 3

bench-peer: cli model ## kvfuse vs llama.cpp (built from llama-cpp-python's sdist), same run
	bench/peer.sh

bench-store: all model ## disk tier vs raw disk reads, bytes/token, a3 from disk vs full (MuSiQue)
	bench/store_bench.sh

bench-load: all model ## server load test: 8 clients x 60 s, a3 vs full, MuSiQue documents
	bench/load_test.sh

fuzz: ## build the libFuzzer targets and replay their seed corpora
	scripts/fuzz.sh replay

# ---- evaluation (kvfuse eval; tools/eval/cmd_eval.c) -------------------------------------------
# Long runs that reproduce the README's headline tables (on this 2-core machine, quiet: eval
# ~1.5 h, of which ~35 min for prefix; eval-sweep ~40 min; eval-needle ~10 min). Each writes
# $(EVAL_OUT)/<name>/{results.jsonl,summary.json,summary.md,report.md,report.html,*.svg} and is
# resumable: run the same target again to continue where it stopped.
SHARED    ?= ../shared
EVAL_OUT  ?= eval-out
EVAL_ARGS ?=
EVAL      := $(CLI) eval -m $(MODEL)
.PHONY: eval eval-sweep eval-needle
# tests/test_eval.c compiles the eval sources of tools/ in: rebuild it when they change
$(BUILD)/tests/test_eval: $(wildcard tools/eval/eval_*.c tools/eval/eval_*.h) tools/cli/rag.c tools/cli/rag.h

eval: cli model ## MuSiQue, first 100 questions, all methods at r = 0.15 -> eval-out/musique (~1.5 h)
	$(EVAL) --dataset musique --data $(SHARED)/data/musique-cacheblend/musique_s.json \
	    --methods full,prefix,reuse,epic,cacheblend,a3 --ratios 0.15 --limit 100 \
	    --out $(EVAL_OUT)/musique $(EVAL_ARGS)

eval-sweep: cli model ## MuSiQue ratio sweep 0.05-0.3 on 50 questions -> eval-out/musique-sweep (~40 min)
	$(EVAL) --dataset musique --data $(SHARED)/data/musique-cacheblend/musique_s.json \
	    --methods full,reuse,epic,cacheblend,a3 --ratios 0.05,0.1,0.15,0.3 --limit 50 \
	    --out $(EVAL_OUT)/musique-sweep $(EVAL_ARGS)

eval-needle: cli model ## needle heatmaps (4 lengths x 11 depths) for full, cacheblend, a3 -> eval-out/needle
	$(EVAL) --dataset needle --data $(SHARED)/data/needle/PaulGrahamEssays \
	    --methods full,cacheblend,a3 --ratios 0.15 --lengths 1024,2048,4096,8192 \
	    --depths 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1 --out $(EVAL_OUT)/needle $(EVAL_ARGS)

clean:
	rm -rf build

format:
	clang-format -i include/*.h $(LIB_SRC) $(filter src/%,$(LIB_HDR)) $(TOOL_SRC) $(TOOL_HDR) tests/*.c tests/*.h

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s '	'
