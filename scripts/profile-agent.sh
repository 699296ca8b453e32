#!/bin/sh
# Lists the functions the guest agent runs over pods' whole lives, for the linker to place
# them together (`make agent`), as profile-shim.sh does for the shim. The agent runs inside a
# TCG guest, where no profiler reaches it; QEMU itself can say which guest code it translated
# (`-d in_asm`), and `-dfilter` keeps that to the agent's address range: the agent is linked
# at an address no other guest binary uses (Makefile, AGENT_IMAGE_BASE). Every guest
# instruction runs translated, so each address in the log was run at least once; the agent's
# symbol table turns addresses into the names the linker orders by.
# Pods: bench_agent's (the agent API directly), bench_shim's and bench_network's (containerd
# with our shim: stdio, exec, signals, ten at once; CNI interfaces and routes) and the `images`
# integration test's (the confidential path: init data, policy, verified layers, copied files),
# all booted by Debian's QEMU through a wrapper (CONTRAST_TEST_QEMU) that adds the tracing.
# Usage: profile-agent.sh AGENT SHIM IMAGE_DIR OUT (AGENT: the binary in IMAGE_DIR's root disk;
# SHIM: `make shim`'s). The images test needs the environment `make test` gives it.
set -eu
agent=$1
shim=$2
image=$3
out=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The executable LOAD segment: its address and size in memory.
set -- $(readelf -lW "$agent" | awk '$1 == "LOAD" && / R E / {print $3, $6; exit}') "$@"
[ $# -eq 6 ] || { echo "profile-agent: no code segment in $agent" >&2; exit 1; }
base=$1
end=$(printf '0x%x' $(($1 + $2)))
cat >"$work/qemu" <<WRAP
#!/bin/sh
exec /usr/bin/qemu-system-x86_64 -d in_asm -dfilter $base..$end -D $work/tb.%d "\$@"
WRAP
chmod +x "$work/qemu"
export CONTRAST_TEST_QEMU="$work/qemu"
cargo build --release -p contrast-tests --example bench_agent --example bench_shim --example bench_network
cp docs/performance.md "$work/perf.md"
# Their figures (slowed by the tracing) go to files of their own, not to the docs or the installer.
run() {
	"$@" >>"$work/run.log" 2>&1 || echo "profile-agent: $* failed (its figures are not used; see the log)" >&2
}
run target/release/examples/bench_agent "$image" "$work/perf.md"
run target/release/examples/bench_shim "$shim" "$image" "$work/perf.md" "$work/overhead.toml"
run target/release/examples/bench_network "$shim" "$image" "$work/perf.md"
run cargo test -p containerd-shim-contrast-cc-v2 --test images
nm -n -S --defined-only "$agent" >"$work/symbols"
python3 - "$work" "$out" <<'PY'
import bisect, glob, re, sys
work, out = sys.argv[1], sys.argv[2]
funcs = []
for line in open(f"{work}/symbols"):
    f = line.split()
    if len(f) == 4 and f[2] in "tTwW":
        funcs.append((int(f[0], 16), int(f[1], 16), f[3]))
    elif len(f) == 3 and f[1] in "tTwW":  # assembly without a size (musl's memcpy and kin)
        funcs.append((int(f[0], 16), 0, f[2]))
funcs.sort()
starts = [a for a, _, _ in funcs]
hot = set()
logs = glob.glob(f"{work}/tb.*")
for path in logs:
    with open(path, errors="replace") as log:
        for m in re.finditer(r"^0x([0-9a-f]+):", log.read(), re.M):
            i = bisect.bisect_right(starts, int(m.group(1), 16)) - 1
            if i >= 0:
                hot.add(funcs[i][2])
if len(hot) < 500:
    sys.exit(f"profile-agent: only {len(hot)} functions seen in {len(logs)} pods; see {work}/run.log")
with open(out, "w") as o:
    o.write("".join(n + "\n" for n in sorted(hot)))
print(f"profile-agent: {len(hot)} functions from {len(logs)} pods -> {out}")
PY
