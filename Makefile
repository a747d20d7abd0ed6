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
# the real model `make test` also runs the parity tests on (downloaded like MODEL)
QWEN05  := models/Qwen2.5-Coder-0.5B-Instruct.gguf
QWEN15  := models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf
NAME    ?= smollm2-135m

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wpointer-arith \
           -Werror=implicit-function-declaration -Wno-unused-parameter
CFLAGS  ?= -O2 -g
INCS    := -Iinclude -Isrc
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(INCS) $(WARN) $(CFLAGS) -pthread $(EXTRA_CFLAGS)
LDLIBS  := -llmdb -lhiredis -lzstd -lcjson -lz -lmicrohttpd -lm -pthread

ISA_AVX2   := -mavx2 -mfma -mf16c
ISA_AVX512 := -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni

# Sanitizer builds: make SAN=1 (ASan + UBSan, used by `make asan`), SAN=tsan (`make tsan`).
ifeq ($(SAN),1)
  ALL_CFLAGS += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
  LDLIBS     += -fsanitize=address,undefined
endif
ifeq ($(SAN),tsan)
  ALL_CFLAGS += -fsanitize=thread -fno-omit-frame-pointer
  LDLIBS     += -fsanitize=thread
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

.PHONY: all lib cli tests benches test test-models test-unit test-integration asan tsan demo model python-deps deps \
        bench bench-peer bench-attn bench-fused-attn bench-conv bench-conv-budget bench-convqa bench-flow bench-sched bench-store bench-load soak-crash soak-load fuzz fuzz-long clean format help

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

model: cli ## fetch a model by name into models/: make model NAME=qwen2.5-coder-0.5b (default smollm2-135m; `build/kvfuse models` lists them)
	scripts/get-model.sh $(NAME)

$(MODEL): | $(CLI)
	scripts/get-model.sh smollm2-135m

$(QWEN05): | $(CLI)
	scripts/get-model.sh qwen2.5-coder-0.5b

$(QWEN15): | $(CLI)
	scripts/get-model.sh qwen2.5-coder-1.5b

deps: ## install the Debian packages the build needs (idempotent)
	scripts/deps.sh

python-deps: ## install the Python oracles used by the integration tests into .venv
	scripts/python-deps.sh

test: all $(MODEL) $(QWEN05) ## build everything and run every test (unit + integration); prints "N passed, N failed"
	scripts/run-tests.sh

test-models: all $(MODEL) $(QWEN05) $(QWEN15) ## the real-model parity tests on Qwen2.5-Coder 0.5B and 1.5B (long)
	PYTHON=$$(scripts/python-deps.sh) KVF_QWEN_MODEL=$(QWEN05) tests/integration/qwen_parity.sh
	PYTHON=$$(scripts/python-deps.sh) KVF_QWEN_MODEL=$(QWEN15) tests/integration/qwen_parity.sh
	KVF_QWEN_MODEL=$(QWEN15) tests/integration/qwen_fusion.sh

test-unit: all ## unit tests only (synthetic models, no downloads)
	scripts/run-tests.sh --unit

asan: ## unit tests under AddressSanitizer + UndefinedBehaviorSanitizer
	$(MAKE) BUILD=build/asan SAN=1 CFLAGS="-O1 -g" all
	BUILD=build/asan scripts/run-tests.sh --unit

tsan: ## library, CLI and tests under ThreadSanitizer: unit tests (4 sessions fusing on 4 threads among them) and the server suite
	$(MAKE) BUILD=build/tsan SAN=tsan CFLAGS="-O1 -g" all
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" BUILD=build/tsan scripts/run-tests.sh --unit
	TSAN_OPTIONS="halt_on_error=1" SERVER_SH_INNER=1 KVFUSE=build/tsan/kvfuse BUILD=build/tsan \
	    KVFUSE_MODEL=$(MODEL) tests/integration/server.sh

demo: ## set up everything; a chat answer, full vs a3 vs focus over documents, the server answering curl (model: NAME=..., default qwen2.5-coder-0.5b)
	scripts/demo.sh $(if $(filter command line environment,$(origin NAME)),$(NAME))

bench: cli $(MODEL) ## prefill/decode tokens per second on the default model
	$(CLI) bench -m $(MODEL) -p 512 -n 128 -r 3

bench-peer: cli $(MODEL) ## kvfuse vs llama.cpp (built from llama-cpp-python's sdist), same run, every model present
	bench/peer.sh --models all

bench-attn: all ## sparse attention (SALE, PowerAttention; MODES="... mac louis" for decode) vs dense on real text, 4k and 16k tokens, Qwen2.5-Coder-0.5B (bench/sparse_attn.sh)
	PYTHON=$$(scripts/python-deps.sh) bench/sparse_attn.sh $(or $(ATTN_MODEL),qwen2.5-coder-0.5b)

bench-fused-attn: all ## a3's TTFT at 16k tokens with SALE for the recomputed rows vs dense, Qwen2.5-Coder-0.5B (bench/fused_attn.sh)
	PYTHON=$$(scripts/python-deps.sh) bench/fused_attn.sh $(or $(ATTN_MODEL),qwen2.5-coder-0.5b)

bench-conv: cli $(QWEN05) ## multi-turn conversations outliving their slot: TTFT per turn with --conv-block 0 vs 256, Qwen2.5-Coder-0.5B (bench/conv.sh)
	bench/conv.sh qwen2.5-coder-0.5b

bench-conv-budget: benches cli $(QWEN05) ## EpiCache: answers under --conv-budget (25% of the history) vs the whole history: agreement and peak KV, Qwen2.5-Coder-0.5B (bench/conv_budget.sh)
	bench/conv_budget.sh $(QWEN05)

bench-convqa: benches cli $(QWEN15) ## EpiCache on personal-memory conversations (bench/convqa.py): answers under --conv-budget (25%) with the question's probe vs the whole history, Qwen2.5-Coder-1.5B (~55 min)
	CONVQA=1 MODES=$(or $(MODES),question) bench/conv_budget.sh $(QWEN15)

bench-flow: cli $(QWEN05) ## KVFlow: an agent workflow's chunk hit rate and TTFT with workflow hints vs LRU, memory cache at half the working set, Qwen2.5-Coder-0.5B (bench/flow.sh)
	bench/flow.sh qwen2.5-coder-0.5b

bench-sched: cli $(MODEL) ## cache-aware queue order vs FIFO, 8 clients: documents shared under a cache of 1/4 of them, then cached-or-unique documents; mean and p99 TTFT (bench/sched.sh)
	POOL=16 bench/sched.sh
	POOL=0 bench/sched.sh

bench-store: all $(MODEL) ## disk tier vs raw disk reads, bytes/token, a3 from disk vs full (MuSiQue)
	bench/store_bench.sh

bench-load: all $(MODEL) ## server load test: 8 clients x 60 s, a3 vs full, MuSiQue documents
	bench/load_test.sh

soak-crash: all ## crash soak: KILLS (1000) kill -9s of ingest/serve on a shared store, verified after each (bench/crash_soak.sh)
	PYTHON=$$(scripts/python-deps.sh) nice -n 10 bench/crash_soak.sh $(or $(KILLS),1000)

soak-load: all $(MODEL) ## load soak: CLIENTS (64) mixed clients x DURATION (600 s) against kvfuse serve (bench/load_soak.sh)
	PYTHON=$$(scripts/python-deps.sh) nice -n 10 bench/load_soak.sh

fuzz: ## build the libFuzzer targets and replay their seed corpora
	scripts/fuzz.sh replay

FUZZ_SECONDS ?= 300
fuzz-long: ## fuzzing campaign: every libFuzzer target for FUZZ_SECONDS (300) each; table in build/fuzz/long-summary.txt
	FUZZ_SECONDS=$(FUZZ_SECONDS) nice -n 10 scripts/fuzz.sh long

# ---- evaluation (kvfuse eval; tools/eval/cmd_eval.c) -------------------------------------------
# Long runs that reproduce the README's headline tables (on this 2-core machine, quiet: eval
# ~1.5 h, of which ~35 min for prefix; eval-sweep ~40 min; eval-needle ~10 min). Each writes
# $(EVAL_OUT)/<name>/{results.jsonl,summary.json,summary.md,report.md,report.html,*.svg} and is
# resumable: run the same target again to continue where it stopped.
SHARED    ?= ../shared
EVAL_OUT  ?= eval-out
EVAL_ARGS ?=
EVAL      := $(CLI) eval -m $(MODEL)
.PHONY: eval eval-sweep eval-needle eval-qwen
# tests/test_eval.c compiles the eval sources of tools/ in: rebuild it when they change
$(BUILD)/tests/test_eval: $(wildcard tools/eval/eval_*.c tools/eval/eval_*.h) tools/cli/rag.c tools/cli/rag.h
$(BUILD)/tests/tool_fusecheck: tools/cli/rag.c tools/cli/rag.h

eval: cli $(MODEL) ## MuSiQue, first 100 questions, all methods at r = 0.15 -> eval-out/musique (~1.5 h)
	$(EVAL) --dataset musique --data $(SHARED)/data/musique-cacheblend/musique_s.json \
	    --methods full,prefix,reuse,epic,cacheblend,a3 --ratios 0.15 --limit 100 \
	    --out $(EVAL_OUT)/musique $(EVAL_ARGS)

eval-sweep: cli $(MODEL) ## MuSiQue ratio sweep 0.05-0.3 on 50 questions -> eval-out/musique-sweep (~40 min)
	$(EVAL) --dataset musique --data $(SHARED)/data/musique-cacheblend/musique_s.json \
	    --methods full,reuse,epic,cacheblend,a3 --ratios 0.05,0.1,0.15,0.3 --limit 50 \
	    --out $(EVAL_OUT)/musique-sweep $(EVAL_ARGS)

eval-qwen: cli $(QWEN05) ## MuSiQue, first 20 questions, full and a3 on Qwen2.5-Coder-0.5B -> eval-out/qwen05-musique20 (~30 min)
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset musique \
	    --data $(SHARED)/data/musique-cacheblend/musique_s.json --methods full,a3 --ratios 0.15 \
	    --limit 20 --out $(EVAL_OUT)/qwen05-musique20 $(EVAL_ARGS)

# Fidelity on Qwen2.5-Coder-0.5B (docs/selection.md): every method at four ratios; the committed
# results/ folders are these runs (rerun to extend or check them: each resumes).
RESULTS   ?= results
FID_METHODS := full,reuse,epic,cacheblend,a3,kvshare,prophet,focus,prefix
FID_RATIOS  := 0.05,0.1,0.15,0.3
FID_LIMIT   ?= 30
.PHONY: eval-attn-needle eval-attn-ruler eval-fidelity eval-fidelity-more eval-fidelity-more2 eval-fidelity-rest eval-fidelity-highr eval-fidelity-oracle eval-fidelity-noise eval-fidelity-needle eval-fidelity-ruler eval-fidelity-kv eval-fidelity-15b eval-fidelity-report eval-fidelity-table plot-attn
eval-fidelity: cli $(QWEN05) ## MuSiQue, first FID_LIMIT questions, 9 methods (8 x 4 ratios) on Qwen2.5-Coder-0.5B -> results/qwen05-musique30
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset musique \
	    --data $(SHARED)/data/musique-cacheblend/musique_s.json --methods $(FID_METHODS) \
	    --ratios $(FID_RATIOS) --limit $(FID_LIMIT) -n 16 --out $(RESULTS)/qwen05-musique30 $(EVAL_ARGS)

eval-fidelity-more: cli $(QWEN05) ## 30 more MuSiQue questions (30-59): full, reuse, cacheblend, focus x 4 ratios on Qwen2.5-Coder-0.5B -> results/qwen05-musique30b; table of both halves (60 questions)
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset musique \
	    --data $(SHARED)/data/musique-cacheblend/musique_s.json --methods full,reuse,cacheblend,focus \
	    --ratios $(FID_RATIOS) --offset 30 --limit 30 -n 16 --out $(RESULTS)/qwen05-musique30b $(EVAL_ARGS)
	python3 scripts/fidelity_table.py --methods full,reuse,cacheblend,focus $(RESULTS)/qwen05-musique30/results.jsonl \
	    $(RESULTS)/qwen05-musique30b/results.jsonl

eval-fidelity-more2: cli $(QWEN05) ## 20 more MuSiQue questions (60-79): full, reuse, cacheblend, focus x 4 ratios on Qwen2.5-Coder-0.5B -> results/qwen05-musique20c; table of all three folders (80 questions)
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset musique \
	    --data $(SHARED)/data/musique-cacheblend/musique_s.json --methods full,reuse,cacheblend,focus \
	    --ratios $(FID_RATIOS) --offset 60 --limit 20 -n 16 --out $(RESULTS)/qwen05-musique20c $(EVAL_ARGS)
	python3 scripts/fidelity_table.py --methods full,reuse,cacheblend,focus $(RESULTS)/qwen05-musique30/results.jsonl \
	    $(RESULTS)/qwen05-musique30b/results.jsonl $(RESULTS)/qwen05-musique20c/results.jsonl

eval-fidelity-rest: cli $(QWEN05) ## the other 70 MuSiQue questions (80-149): full, cacheblend, focus at r = 0.05, 0.1, 0.15, 0.3 on Qwen2.5-Coder-0.5B -> results/qwen05-musique70d; focus against cacheblend at each ratio over all 150, paired, and at equal compute (~2.5 h on 2 cores: ~80 s a question for full and the chunks, ~8 s for each method and ratio)
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset musique \
	    --data $(SHARED)/data/musique-cacheblend/musique_s.json --methods full,cacheblend,focus \
	    --ratios 0.05,0.1,0.15,0.3 --offset 80 --limit 70 -n 16 --out $(RESULTS)/qwen05-musique70d $(EVAL_ARGS)
	for p in "focus cacheblend 0.05" "focus cacheblend 0.1" "focus cacheblend 0.15" "focus cacheblend 0.3" \
	    "focus@0.1 cacheblend 0.05" "focus@0.15 cacheblend 0.1"; do python3 scripts/fidelity_pair.py --by 30 $$p \
	    $(RESULTS)/qwen05-musique30/results.jsonl $(RESULTS)/qwen05-musique30b/results.jsonl \
	    $(RESULTS)/qwen05-musique20c/results.jsonl $(RESULTS)/qwen05-musique70d/results.jsonl || exit 1; done

eval-fidelity-highr: cli $(QWEN05) ## where the agreement targets would be met: a3, cacheblend, focus at r = 0.5 / 0.7 on MuSiQue questions 0-19 -> results/qwen05-musique20-highr; table with the same questions' r = 0.05-0.3 runs
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset musique \
	    --data $(SHARED)/data/musique-cacheblend/musique_s.json --methods full,a3,cacheblend,focus \
	    --ratios 0.5,0.7 --limit 20 -n 16 --out $(RESULTS)/qwen05-musique20-highr $(EVAL_ARGS)
	python3 scripts/fidelity_table.py --methods full,a3,cacheblend,focus $(RESULTS)/qwen05-musique30/results.jsonl \
	    $(RESULTS)/qwen05-musique20-highr/results.jsonl

eval-fidelity-oracle: cli $(QWEN05) ## the oracle diagnostic (selection by true KV error, docs/selection.md), first 15 questions, r = 0.15 / 0.3 -> results/qwen05-musique15-oracle; table beside the other methods on the same questions
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset musique \
	    --data $(SHARED)/data/musique-cacheblend/musique_s.json --methods full,oracle \
	    --ratios 0.15,0.3 --limit 15 -n 16 --out $(RESULTS)/qwen05-musique15-oracle $(EVAL_ARGS)
	python3 scripts/fidelity_table.py --ratios 0.15,0.3 $(RESULTS)/qwen05-musique30/results.jsonl \
	    $(RESULTS)/qwen05-musique15-oracle/results.jsonl

eval-fidelity-needle: cli $(QWEN05) ## needle at 4k and 8k tokens (3 depths), every method at 4 ratios on Qwen2.5-Coder-0.5B -> results/qwen05-needle
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset needle --data $(SHARED)/data/needle/PaulGrahamEssays \
	    --methods $(FID_METHODS) --ratios $(FID_RATIOS) --lengths 4096,8192 --depths 0.1,0.5,0.9 \
	    -n 32 --out $(RESULTS)/qwen05-needle $(EVAL_ARGS)
	python3 scripts/fidelity_table.py $(RESULTS)/qwen05-needle/results.jsonl

ATTN_METHODS ?= full,a3
ATTN_LENGTHS ?= 4096,8192
eval-attn-needle: cli $(QWEN05) ## needle at ATTN_LENGTHS (4096,8192; 3 depths), ATTN_METHODS (full,a3) at r=0.15 with sparse attention ATTN_ARGS (e.g. "--attn sale") -> results/qwen05-needle-$(ATTN_TAG)
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset needle --data $(SHARED)/data/needle/PaulGrahamEssays \
	    --methods $(ATTN_METHODS) --ratios 0.15 --lengths $(ATTN_LENGTHS) \
	    --depths 0.1,0.5,0.9 -n 32 --out $(RESULTS)/qwen05-needle-$(ATTN_TAG) $(ATTN_ARGS) $(EVAL_ARGS)

eval-attn-ruler: cli $(QWEN05) ## RULER-NIAH single/multikey/multivalue at ATTN_LENGTHS (4096,8192; 2 each), ATTN_METHODS (full,a3) at r=0.15 with sparse attention ATTN_ARGS -> results/qwen05-ruler-$(ATTN_TAG)
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset ruler-niah --data $(SHARED)/data/ruler-wordlists \
	    --haystack $(SHARED)/data/needle/PaulGrahamEssays --methods $(ATTN_METHODS) \
	    --ratios 0.15 --lengths $(ATTN_LENGTHS) --ruler-n 2 -n 64 \
	    --out $(RESULTS)/qwen05-ruler-$(ATTN_TAG) $(ATTN_ARGS) $(EVAL_ARGS)

eval-fidelity-noise: cli $(QWEN05) ## the noise floor of answer agreement: full prefill at --precision q8 on eval-fidelity's questions, compared with the q16 answers -> results/qwen05-musique30-q8
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset musique \
	    --data $(SHARED)/data/musique-cacheblend/musique_s.json --methods full \
	    --limit $(FID_LIMIT) -n 16 --precision q8 --out $(RESULTS)/qwen05-musique30-q8 $(EVAL_ARGS)
	$(PYTHON) scripts/agreement.py $(RESULTS)/qwen05-musique30/results.jsonl $(RESULTS)/qwen05-musique30-q8/results.jsonl

eval-fidelity-ruler: cli $(QWEN05) ## RULER-NIAH single/multikey/multivalue at 4k and 8k (2 each), every method at 4 ratios on the 0.5B -> results/qwen05-ruler
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset ruler-niah --data $(SHARED)/data/ruler-wordlists \
	    --haystack $(SHARED)/data/needle/PaulGrahamEssays --methods $(FID_METHODS) \
	    --ratios $(FID_RATIOS) --lengths 4096,8192 --ruler-n 2 -n 64 --out $(RESULTS)/qwen05-ruler $(EVAL_ARGS)
	python3 scripts/fidelity_table.py $(RESULTS)/qwen05-ruler/results.jsonl

eval-fidelity-kv: cli $(QWEN05) ## Lost-in-the-Middle kv-retrieval (75 keys, ~5k tokens), first 6, every method at 4 ratios on the 0.5B -> results/qwen05-kv
	$(CLI) eval -m qwen2.5-coder-0.5b --dataset kv-retrieval \
	    --data $(SHARED)/data/kv-retrieval/kv-retrieval-75_keys.jsonl.gz --methods $(FID_METHODS) \
	    --ratios $(FID_RATIOS) --limit 6 -n 96 --out $(RESULTS)/qwen05-kv $(EVAL_ARGS)
	python3 scripts/fidelity_table.py $(RESULTS)/qwen05-kv/results.jsonl

eval-fidelity-15b: cli $(QWEN15) ## MuSiQue, first 6 questions, 6 methods at r=0.15/0.3 on Qwen2.5-Coder-1.5B -> results/qwen15-musique
	$(CLI) eval -m qwen2.5-coder-1.5b --dataset musique \
	    --data $(SHARED)/data/musique-cacheblend/musique_s.json \
	    --methods full,reuse,cacheblend,a3,prophet,focus --ratios 0.15,0.3 --limit 6 -n 16 \
	    --out $(RESULTS)/qwen15-musique $(EVAL_ARGS)

eval-fidelity-table: ## the README's fidelity table (examples with every run only) from results/qwen05-musique30
	python3 scripts/fidelity_table.py $(RESULTS)/qwen05-musique30/results.jsonl

plot-attn: ## docs/attention-lengths.svg (issue 12's plot: tok/s and needle score against length) from the committed bench and eval results, no model
	python3 scripts/plot_attn.py --bench bench/results/sparse-attn-qwen05-2026-12-05.jsonl \
	    --bench bench/results/sparse-attn-qwen05-32k-2026-12-05.jsonl --bench bench/results/louis-qwen05-2026-12-05.jsonl \
	    --needle dense=$(RESULTS)/qwen05-needle --needle dense=$(RESULTS)/qwen05-needle-dense-16k \
	    --needle dense=$(RESULTS)/qwen05-needle-dense-32k --needle sale=$(RESULTS)/qwen05-needle-sale \
	    --needle sale=$(RESULTS)/qwen05-needle-sale-16k --needle sale=$(RESULTS)/qwen05-needle-sale-32k \
	    --needle power=$(RESULTS)/qwen05-needle-power --needle louis=$(RESULTS)/qwen05-needle-louis \
	    --needle louis=$(RESULTS)/qwen05-needle-louis-16k -o docs/attention-lengths.svg

eval-fidelity-report: cli ## rebuild summary.md / report.md / plots of every results/ folder from its results.jsonl
	for d in $(RESULTS)/*/; do $(CLI) eval --report-only --out $$d || exit 1; done

eval-needle: cli $(MODEL) ## needle heatmaps (4 lengths x 11 depths) for full, cacheblend, a3 -> eval-out/needle
	$(EVAL) --dataset needle --data $(SHARED)/data/needle/PaulGrahamEssays \
	    --methods full,cacheblend,a3 --ratios 0.15 --lengths 1024,2048,4096,8192 \
	    --depths 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1 --out $(EVAL_OUT)/needle $(EVAL_ARGS)

clean:
	rm -rf build

format:
	clang-format -i include/*.h $(LIB_SRC) $(filter src/%,$(LIB_HDR)) $(TOOL_SRC) $(TOOL_HDR) tests/*.c tests/*.h

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s '	'
