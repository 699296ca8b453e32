# containerd-shim-contrast-cc-v2 — build, image, test, demo, bench.
# Quick start on a fresh Debian bookworm machine (root): `make demo`, then `make test`.

SHELL := /bin/sh
BUILD ?= build
AGENT_TARGET ?= x86_64-unknown-linux-musl
AGENT_BIN := target/$(AGENT_TARGET)/release-agent/contrast-agent
IMAGE_DIR := $(BUILD)/image
# The shipped shim: static (musl) and size-optimised, since it runs once per pod.
SHIM_BIN := target/$(AGENT_TARGET)/release-shim/containerd-shim-contrast-cc-v2
CARGO ?= cargo
# The suite runs in minutes; a hang must fail it with its output, not eat CI's budget.
TEST_TIMEOUT ?= 30m
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps build shim agent image test lint demo bench clean

all: build image

deps:
	./scripts/install-deps.sh

build:
	$(CARGO) build --release --workspace --exclude contrast-agent

shim:
	$(CARGO) build --profile release-shim --target $(AGENT_TARGET) -p containerd-shim-contrast-cc-v2

agent:
	$(CARGO) build --profile release-agent --target $(AGENT_TARGET) -p contrast-agent

# Kernel + initrd with the agent as /init. Inputs: the Debian cloud kernel package (resolved
# by name from the metapackage), the static agent, busybox-static.
image: agent
	$(CARGO) build --release -p contrast-image
	KERNEL_TREE=$$(./scripts/fetch-kernel.sh $(BUILD)/kernel) && \
	target/release/contrast-image --kernel-tree "$$KERNEL_TREE" --agent $(AGENT_BIN) \
		--busybox /bin/busybox --out $(IMAGE_DIR)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The whole suite: unit + golden tests, then the VM integration tests against the real image.
test: image lint
	$(CARGO) test --workspace --exclude contrast-agent --no-run
	CONTRAST_IMAGE_DIR=$(abspath $(IMAGE_DIR)) timeout --kill-after=30 $(TEST_TIMEOUT) \
		$(CARGO) test --workspace --exclude contrast-agent
	$(CARGO) test -p contrast-agent

demo: deps image shim
	$(CARGO) build --release -p contrast-tests --example demo
	target/release/examples/demo $(SHIM_BIN) $(abspath $(IMAGE_DIR))

bench: image shim
	$(CARGO) build --release -p contrast-tests --example bench_boot --example bench_agent --example bench_shim
	target/release/examples/bench_boot $(abspath $(IMAGE_DIR)) docs/performance.md
	target/release/examples/bench_agent $(abspath $(IMAGE_DIR)) docs/performance.md
	target/release/examples/bench_shim $(SHIM_BIN) $(abspath $(IMAGE_DIR)) docs/performance.md

clean:
	rm -rf $(BUILD) target
