# containerd-shim-contrast-cc-v2 — build, image, test, demo, bench.
# Quick start on a fresh Debian bookworm machine (root): `make demo`, then `make test`.

SHELL := /bin/sh
BUILD ?= build
AGENT_TARGET ?= x86_64-unknown-linux-musl
AGENT_BIN := target/$(AGENT_TARGET)/release-guest-agent/contrast-agent
RUNNER_BIN := target/$(AGENT_TARGET)/release-runner/contrast-runner
INIT_BIN := target/$(AGENT_TARGET)/release-agent/contrast-init
IMAGE_DIR := $(BUILD)/image
# The shipped shim: static (musl) and size-optimised, since it runs once per pod.
SHIM_BIN := target/$(AGENT_TARGET)/release-shim/containerd-shim-contrast-cc-v2
CARGO ?= cargo
# The suite runs in minutes; a hang must fail it with its output, not eat CI's budget.
TEST_TIMEOUT ?= 30m
export PATH := $(HOME)/.cargo/bin:$(PATH)

# The pod VM's kernel: `contrast` (ours, built from Debian's linux-source with
# packaging/kernel/pod-vm.config, everything built in; cached under /var/cache/contrast/kernel)
# or `debian` (Debian's cloud kernel package, modules loaded at boot; kept for comparison).
KERNEL ?= contrast
ifeq ($(KERNEL),debian)
KERNEL_TREE_CMD := ./scripts/fetch-kernel.sh $(BUILD)/kernel
else ifeq ($(KERNEL),contrast)
KERNEL_TREE_CMD := ./scripts/build-kernel.sh $(BUILD)/kernel
else
$(error KERNEL must be contrast or debian, not $(KERNEL))
endif

INSTALLER_BIN := target/$(AGENT_TARGET)/release-agent/contrast-node-installer
PAYLOAD := $(BUILD)/payload
PLATFORM ?= insecure

.PHONY: all deps build shim agent image test lint demo bench clean installer payload manifests installer-image \
	containerd-releases sev-snp-measure fuzz soak image-debian shim-profile guest-profile qemu-igvm

all: build image

deps:
	./scripts/install-deps.sh

build:
	$(CARGO) build --release --workspace --exclude contrast-agent

# The toolchain's own lld (rust-lld behind its gcc-ld wrapper): GNU ld has no symbol ordering.
LLD_ARGS = -C link-arg=-fuse-ld=lld \
	-C link-arg=-B"$$(rustc --print sysroot)/lib/rustlib/$$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld"

# Non-PIE (relocation-model=static): a static-pie binary relocates its data at start, which
# dirties ~800 KiB per shim process; the shim runs once per pod (docs/performance.md).
# Linked by the toolchain's lld with the daemon's hot functions first
# (packaging/shim-hot-symbols.txt, written by `make shim-profile`): the kernel maps code in
# 64 KiB windows around each page touched, so hot code spread over the whole binary made
# nearly all of it resident in every shim (docs/performance.md).
shim:
	$(CARGO) rustc --profile release-shim --target $(AGENT_TARGET) -p containerd-shim-contrast-cc-v2 \
		--bin containerd-shim-contrast-cc-v2 -- -C relocation-model=static \
		$(LLD_ARGS) -C link-arg=-Wl,--symbol-ordering-file=$(abspath packaging/shim-hot-symbols.txt) \
		-C link-arg=-Wl,--no-warn-symbol-ordering
	@found=$$(nm --defined-only $(SHIM_BIN) | awk '{print $$NF}' | LC_ALL=C sort -u | \
		LC_ALL=C comm -12 - packaging/shim-hot-symbols.txt | wc -l); \
	echo "shim: $$found of $$(wc -l <packaging/shim-hot-symbols.txt) listed hot functions found (far fewer: run make shim-profile)"

# Which functions the shim daemon runs in a pod's life (bench_shim's pods, under callgrind):
# rewrites packaging/shim-hot-symbols.txt. Re-run after changes that rename much code.
shim-profile: image shim
	./scripts/profile-shim.sh $(SHIM_BIN) $(abspath $(IMAGE_DIR)) packaging/shim-hot-symbols.txt

# Non-PIE like the shim: a static-pie binary dirties its relocated data at every start (the
# agent, and each runner process it starts). The agent (profile release-guest-agent, for size)
# and its container runner (release-runner, for speed; libcontainer lives only there) are two
# binaries. The runner links libseccomp statically (seccomp profiles in the guest). Debian's
# libseccomp.a is copied to a directory of its own: pointing the linker at
# /usr/lib/x86_64-linux-gnu would let glibc's libc.a shadow musl's.
# The agent and the runner are linked like the shim, by lld with their hot functions first
# (packaging/{agent,runner}-hot-symbols.txt, written by `make guest-profile`), each at an
# address no other guest binary uses (0x10000000, 0x20000000; init and busybox sit at
# 0x400000), so that a trace of the guest's code addresses tells their code apart
# (scripts/profile-guest.sh).
SECCOMP_LIB_DIR := $(BUILD)/seccomp
GUEST_ENV = LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$(abspath $(SECCOMP_LIB_DIR)) \
	RUSTFLAGS="-C relocation-model=static"
# $(call ordered,LIST,IMAGE_BASE): lld arguments of a guest binary linked by a hot list.
ordered = $(LLD_ARGS) -C link-arg=-Wl,--image-base=$(2) \
	-C link-arg=-Wl,--symbol-ordering-file=$(abspath $(1)) -C link-arg=-Wl,--no-warn-symbol-ordering
# $(call found,BINARY,LIST): how many listed names the binary has.
found = found=$$(nm --defined-only $(1) | awk '{print $$NF}' | LC_ALL=C sort -u | \
	LC_ALL=C comm -12 - $(2) | wc -l); \
	echo "$(notdir $(1)): $$found of $$(wc -l <$(2)) listed hot functions found (far fewer: run make guest-profile)"
agent:
	mkdir -p $(SECCOMP_LIB_DIR)
	cp -u /usr/lib/x86_64-linux-gnu/libseccomp.a $(SECCOMP_LIB_DIR)/
	$(GUEST_ENV) $(CARGO) rustc --profile release-guest-agent --target $(AGENT_TARGET) -p contrast-agent \
		--bin contrast-agent -- $(call ordered,packaging/agent-hot-symbols.txt,0x10000000)
	@$(call found,$(AGENT_BIN),packaging/agent-hot-symbols.txt)
	$(GUEST_ENV) $(CARGO) rustc --profile release-runner --target $(AGENT_TARGET) -p contrast-agent \
		--bin contrast-runner -- $(call ordered,packaging/runner-hot-symbols.txt,0x20000000)
	@$(call found,$(RUNNER_BIN),packaging/runner-hot-symbols.txt)
	$(GUEST_ENV) $(CARGO) build --profile release-agent --target $(AGENT_TARGET) -p contrast-init --bin contrast-init

# Which functions the agent and the runner run in pods' lives (QEMU's trace of the guest code
# it translates, scripts/profile-guest.sh): rewrites packaging/{agent,runner}-hot-symbols.txt.
# Re-run after changes that rename much of their code, then `make image`.
guest-profile: image shim containerd-releases
	CONTRAST_IMAGE_DIR=$(abspath $(IMAGE_DIR)) CONTRAST_CONTAINERD_DIR=$(abspath $(CONTAINERD_DIR)) \
		./scripts/profile-guest.sh $(AGENT_BIN) $(RUNNER_BIN) $(SHIM_BIN) $(abspath $(IMAGE_DIR)) packaging

# Kernel, initrd (contrast-init), verity root disk (agent), command line, reference values.
# Inputs: the kernel tree (KERNEL, above), the static agent and init, busybox-static, mkfs.erofs.
image: agent
	$(CARGO) build --release -p contrast-image
	./scripts/fetch-firmware.sh $(BUILD)/firmware
	tree=$$($(KERNEL_TREE_CMD)) && target/release/contrast-image --kernel-tree "$$tree" \
		--agent $(AGENT_BIN) --runner $(RUNNER_BIN) --init $(INIT_BIN) --busybox /bin/busybox --firmware $(BUILD)/firmware \
		--out $(IMAGE_DIR) >/dev/null
	@echo "image: $(IMAGE_DIR) (reference values: $(IMAGE_DIR)/reference-values.json)"

# The node installer (static) and its payload: shim, pod-VM image, runtime-class templates.
installer:
	$(CARGO) build --profile release-agent --target $(AGENT_TARGET) -p contrast-node-installer

payload: shim image
	rm -rf $(PAYLOAD) && mkdir -p $(PAYLOAD)/bin $(PAYLOAD)/share $(PAYLOAD)/config
	cp $(SHIM_BIN) $(PAYLOAD)/bin/
	cp $(IMAGE_DIR)/vmlinux $(IMAGE_DIR)/vmlinuz $(IMAGE_DIR)/initrd.img $(IMAGE_DIR)/root.img \
		$(IMAGE_DIR)/cmdline $(IMAGE_DIR)/OVMF.amdsev.fd $(IMAGE_DIR)/OVMF.inteltdx.fd \
		$(IMAGE_DIR)/pod.igvm $(IMAGE_DIR)/pod-snp.igvm $(IMAGE_DIR)/reference-values.json $(PAYLOAD)/share/
	cp packaging/config/configuration-*.toml $(PAYLOAD)/config/

# RuntimeClass + DaemonSet for PLATFORM (default insecure), named after the payload's hash.
# REGISTRY: where the nodes pull the installer image from (REGISTRY/contrast-node-installer:…).
REGISTRY ?=
REGISTRY_ARG = $(if $(REGISTRY),--registry $(REGISTRY))
manifests: installer payload
	$(INSTALLER_BIN) manifests --platform $(PLATFORM) --payload $(PAYLOAD) $(REGISTRY_ARG) > $(BUILD)/contrast-$(PLATFORM).yaml
	@echo "manifests: $(BUILD)/contrast-$(PLATFORM).yaml"

# The installer's container image (FROM scratch), where podman or docker runs.
installer-image: installer payload
	rm -rf $(BUILD)/installer-context && mkdir -p $(BUILD)/installer-context
	cp $(INSTALLER_BIN) $(BUILD)/installer-context/
	cp -r $(PAYLOAD) $(BUILD)/installer-context/payload
	BUILDER=$$(command -v podman || command -v docker) || { echo "installer-image: needs podman or docker" >&2; exit 1; }; \
	$$BUILDER build -f packaging/node-installer/Containerfile \
		-t $$($(INSTALLER_BIN) image-ref --payload $(PAYLOAD) $(REGISTRY_ARG)) $(BUILD)/installer-context

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# containerd 1.7 and 2.1 (Debian trixie/sid packages, unpacked, never installed): the
# containerd tests run against them and the host's 1.6.
CONTAINERD_DIR := $(BUILD)/containerd
containerd-releases:
	./scripts/fetch-containerd.sh $(CONTAINERD_DIR) >/dev/null

# The independent SEV-SNP launch digest calculator the measurement tests compare with.
sev-snp-measure:
	./scripts/fetch-sev-snp-measure.sh $(BUILD)/sev-snp-measure

# QEMU 10.2 with IGVM support (Debian's QEMU has none), built once per machine into
# /var/cache/contrast/qemu-igvm/<inputs' hash>; the IGVM boot tests and bench use it.
qemu-igvm:
	./scripts/build-qemu-igvm.sh >/dev/null

# The whole suite: unit + golden tests, then the VM integration tests against the real image.
test: image lint containerd-releases sev-snp-measure qemu-igvm
	$(CARGO) test --workspace --exclude contrast-agent --no-run
	CONTRAST_IMAGE_DIR=$(abspath $(IMAGE_DIR)) CONTRAST_CONTAINERD_DIR=$(abspath $(CONTAINERD_DIR)) \
	CONTRAST_IGVM_QEMU="$$(./scripts/build-qemu-igvm.sh)" \
	CONTRAST_SEV_SNP_MEASURE=$(abspath $(BUILD)/sev-snp-measure) \
	CONTRAST_KERNEL_TREE="$$(realpath "$$($(KERNEL_TREE_CMD))")" \
	CONTRAST_AGENT=$(abspath $(AGENT_BIN)) CONTRAST_RUNNER=$(abspath $(RUNNER_BIN)) CONTRAST_INIT=$(abspath $(INIT_BIN)) \
		timeout --kill-after=30 $(TEST_TIMEOUT) $(CARGO) test --workspace --exclude contrast-agent
	$(CARGO) test -p contrast-agent
	./scripts/fuzz.sh $(FUZZ_SECONDS)

# libFuzzer targets (fuzz/) on their committed seeds, FUZZ_SECONDS each: `make test` runs a
# short round; `make fuzz FUZZ_SECONDS=600` a long one (docs/reliability.md).
FUZZ_SECONDS ?= 10
fuzz:
	FUZZ_DOC=docs/reliability.md ./scripts/fuzz.sh $(FUZZ_SECONDS)

demo: deps image shim
	$(CARGO) build --release -p contrast-tests --example demo
	target/release/examples/demo $(SHIM_BIN) $(abspath $(IMAGE_DIR))

# The same image with Debian's cloud kernel: the baseline our kernel's boot is measured against.
image-debian: image
	tree=$$(./scripts/fetch-kernel.sh $(BUILD)/kernel) && target/release/contrast-image --kernel-tree "$$tree" \
		--agent $(AGENT_BIN) --runner $(RUNNER_BIN) --init $(INIT_BIN) --busybox /bin/busybox --out $(BUILD)/image-debian >/dev/null

bench: image image-debian shim qemu-igvm
	$(CARGO) build --release -p contrast-tests --example bench_image --example bench_boot --example bench_agent \
		--example bench_shim --example bench_layers --example bench_network
	target/release/examples/bench_image target/release/contrast-image \
		"$$($(KERNEL_TREE_CMD))" $(AGENT_BIN) $(RUNNER_BIN) $(INIT_BIN) docs/performance.md
	CONTRAST_IGVM_QEMU="$$(./scripts/build-qemu-igvm.sh)" \
		target/release/examples/bench_boot $(abspath $(IMAGE_DIR)) $(abspath $(BUILD)/image-debian) docs/performance.md
	target/release/examples/bench_agent $(abspath $(IMAGE_DIR)) docs/performance.md
	target/release/examples/bench_shim $(SHIM_BIN) $(abspath $(IMAGE_DIR)) docs/performance.md
	target/release/examples/bench_layers $(abspath $(IMAGE_DIR)) docs/performance.md
	target/release/examples/bench_network $(SHIM_BIN) $(abspath $(IMAGE_DIR)) docs/performance.md

# Load: 100 pod create/delete cycles and 10 concurrent pods, leftovers counted before and
# after (docs/reliability.md).
soak: image shim
	$(CARGO) build --release -p contrast-tests --example soak
	target/release/examples/soak $(SHIM_BIN) $(abspath $(IMAGE_DIR)) docs/reliability.md

clean:
	rm -rf $(BUILD) target fuzz/target
