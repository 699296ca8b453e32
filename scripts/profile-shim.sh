#!/bin/sh
# Lists the functions the shim daemon runs over pods' whole lives, for the linker to place
# them together (`make shim`). Runs bench_shim's pods (create, start, exec, kill, delete, ten
# at once) with every shim process under valgrind's callgrind, and keeps the symbols that
# ran in daemons (start and delete processes, which exit at once, are left out).
# Usage: profile-shim.sh SHIM IMAGE_DIR OUT (SHIM: the shipped build, `make shim`, which keeps
# its symbols: its names are the ones the linker orders by)
set -eu
shim=$1
image=$2
out=$3
command -v valgrind >/dev/null || apt-get install -y valgrind
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$shim" "$work/shim.bin"
cargo build --release -p contrast-tests --example bench_shim
# The bench installs the shim file it is given as containerd's runtime binary: a wrapper that
# runs the real shim, from beside itself (the shim finds its configuration next to its own
# binary), under callgrind. QEMU and the helpers the shim starts run natively.
cat >"$work/containerd-shim-contrast-cc-v2" <<WRAP
#!/bin/sh
d=\$(dirname "\$0")
[ -x "\$d/containerd-shim-contrast-cc-v2.real" ] || cp "$work/shim.bin" "\$d/containerd-shim-contrast-cc-v2.real"
exec valgrind -q --log-file=$work/vg.%p --tool=callgrind --trace-children=yes \
	--trace-children-skip='*virtiofsd*,*vhost*,*qemu*' --demangle=no --dump-instr=no \
	--callgrind-out-file=$work/cg.%p "\$d/containerd-shim-contrast-cc-v2.real" "\$@"
WRAP
chmod +x "$work/containerd-shim-contrast-cc-v2"
cp docs/performance.md "$work/perf.md"
# Its figures (slowed by valgrind) go to files of its own, not to the docs or the installer.
target/release/examples/bench_shim "$work/containerd-shim-contrast-cc-v2" "$image" "$work/perf.md" "$work/overhead.toml" \
	>"$work/bench.log" 2>&1 ||
	echo "profile-shim: bench_shim under valgrind failed (its timings are not used): $(grep -m1 "^Error" "$work/bench.log")" >&2
python3 - "$work" "$out" <<'PY'
import glob, re, sys
work, out = sys.argv[1], sys.argv[2]
hot = set()
for f in glob.glob(f"{work}/cg.*"):
    text = open(f, errors="replace").read()
    # Daemons serve the task API; start and delete processes never reach it.
    if "TaskService" not in text:
        continue
    for m in re.finditer(r"^c?fn=\(\d+\) (\S+)$", text, re.M):
        name = m.group(1)
        if not name.startswith("0x"):
            hot.add(name)
if len(hot) < 500:
    sys.exit(f"profile-shim: only {len(hot)} functions seen; did the pods run? see {work}/bench.log")
with open(out, "w") as o:
    o.write("".join(n + "\n" for n in sorted(hot)))
print(f"profile-shim: {len(hot)} functions -> {out}")
PY
