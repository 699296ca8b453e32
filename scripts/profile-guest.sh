#!/bin/sh
# Lists the functions the guest agent and its container runner run over pods' whole lives,
# for the linker to place them together (`make agent`), as profile-shim.sh does for the shim.
# They run inside a TCG guest, where no profiler reaches; QEMU itself can say which guest code
# it translated (`-d in_asm`), and `-dfilter` keeps that to the two binaries' code: each is
# linked at an address no other guest binary uses (Makefile). Every guest instruction runs
# translated, so each address in the log ran at least once; the binaries' symbol tables turn
# addresses into the names the linker orders by.
# Pods: bench_agent's (the agent API directly), bench_shim's and bench_network's (containerd
# with our shim: stdio, exec, signals, ten at once; CNI interfaces and routes) and the `images`
# integration test's (the confidential path: init data, policy, verified layers, copied files),
# all booted by Debian's QEMU through a wrapper (CONTRAST_TEST_QEMU) that adds the tracing.
# Usage: profile-guest.sh AGENT RUNNER SHIM IMAGE_DIR OUT_DIR (AGENT, RUNNER: the binaries in
# IMAGE_DIR's root disk; SHIM: `make shim`'s); writes OUT_DIR/{agent,runner}-hot-symbols.txt.
# The images test needs the environment `make test` gives it.
set -eu
agent=$1
runner=$2
shim=$3
image=$4
out=$5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The executable LOAD segment of a binary, as a -dfilter range.
code_range() {
	set -- $(readelf -lW "$1" | awk '$1 == "LOAD" && / R E / {print $3, $6; exit}')
	[ $# -eq 2 ] || { echo "profile-guest: no code segment in $1" >&2; exit 1; }
	printf '%s..0x%x' "$1" $(($1 + $2))
}
ranges="$(code_range "$agent"),$(code_range "$runner")"
cat >"$work/qemu" <<WRAP
#!/bin/sh
exec /usr/bin/qemu-system-x86_64 -d in_asm -dfilter $ranges -D $work/tb.%d "\$@"
WRAP
chmod +x "$work/qemu"
export CONTRAST_TEST_QEMU="$work/qemu"
cargo build --release -p contrast-tests --example bench_agent --example bench_shim --example bench_network
cp docs/performance.md "$work/perf.md"
# Their figures (slowed by the tracing) go to files of their own, not to the docs or the installer.
run() {
	"$@" >>"$work/run.log" 2>&1 || echo "profile-guest: $* failed (its figures are not used; see the log)" >&2
}
run target/release/examples/bench_agent "$image" "$work/perf.md"
run target/release/examples/bench_shim "$shim" "$image" "$work/perf.md" "$work/overhead.toml"
run target/release/examples/bench_network "$shim" "$image" "$work/perf.md"
run cargo test -p containerd-shim-contrast-cc-v2 --test images
nm -n -S --defined-only "$agent" >"$work/agent.symbols"
nm -n -S --defined-only "$runner" >"$work/runner.symbols"
python3 - "$work" "$out" <<'PY'
import bisect, glob, re, sys
work, out = sys.argv[1], sys.argv[2]

def functions(path):
    funcs = []
    for line in open(path):
        f = line.split()
        if len(f) == 4 and f[2] in "tTwW":
            funcs.append((int(f[0], 16), int(f[0], 16) + int(f[1], 16), f[3]))
        elif len(f) == 3 and f[1] in "tTwW":  # assembly without a size (musl's memcpy and kin)
            funcs.append((int(f[0], 16), int(f[0], 16) + 1, f[2]))
    funcs.sort()
    return funcs

# Each binary's functions, and the end of its code (the last function's).
binaries = {name: functions(f"{work}/{name}.symbols") for name in ("agent", "runner")}
hot = {name: set() for name in binaries}
logs = glob.glob(f"{work}/tb.*")
for path in logs:
    with open(path, errors="replace") as log:
        addresses = {int(a, 16) for a in re.findall(r"^0x([0-9a-f]+):", log.read(), re.M)}
    for name, funcs in binaries.items():
        starts = [f[0] for f in funcs]
        for a in addresses:
            if funcs[0][0] <= a < funcs[-1][1] + 0x1000:
                hot[name].add(funcs[bisect.bisect_right(starts, a) - 1][2])
for name, names in hot.items():
    if len(names) < 300:
        sys.exit(f"profile-guest: only {len(names)} {name} functions seen in {len(logs)} pods; see {work}/run.log")
    with open(f"{out}/{name}-hot-symbols.txt", "w") as o:
        o.write("".join(n + "\n" for n in sorted(names)))
    print(f"profile-guest: {len(names)} {name} functions from {len(logs)} pods -> {out}/{name}-hot-symbols.txt")
PY
