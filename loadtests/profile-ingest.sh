#!/usr/bin/env bash
# Profiles `sluice ingest` of a corpus folder with perf and breaks its CPU down by pipeline stage
# (loadtests/profile_stages.py). The provider is the emulator at zero latency, OpenAI wire format,
# so the dense path (request packing, JSON, HTTP) is measured without waiting on anything.
# Needs the release binaries and Linux perf:
#   cargo build --release --bin sluice --bin provider-emulator
#   loadtests/profile-ingest.sh /tmp/realcorpus [OUT_DIR]
# CPU_SECS=<CPU of an unprofiled run> makes the CPU-s columns that run's, split by the profile.
# Writes OUT_DIR/stages.txt (the table), OUT_DIR/stacks.folded (for inferno-flamegraph or
# flamegraph.pl) and OUT_DIR/summary.json (sluice's own summary of the run).
set -euo pipefail
corpus=${1:?usage: profile-ingest.sh CORPUS_DIR [OUT_DIR]}
out=${2:-profile-out}
here=$(cd "$(dirname "$0")" && pwd)
bin=${BIN_DIR:-$here/../target/release}
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
for b in sluice provider-emulator; do
  [ -x "$bin/$b" ] || { echo "$bin/$b missing: cargo build --release --bin $b" >&2; exit 1; }
done
mkdir -p "$out"
work=$(mktemp -d)
emulator_pid=
cleanup() { [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$bin/provider-emulator" --listen 127.0.0.1:0 --api openai >"$work/emulator.out" &
emulator_pid=$!
for _ in $(seq 100); do grep -q listening "$work/emulator.out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/emulator.out")
[ -n "$url" ] || { echo "the emulator did not start" >&2; exit 1; }

echo "profiling sluice ingest $corpus (emulator at $url)…" >&2
export SLUICE_EMBED_PROVIDER=openai SLUICE_EMBED_BASE_URL=$url SLUICE_EMBED_API_KEY=profile
export SLUICE_DATA_DIR=$work/data
# DWARF call graphs: release builds keep no frame pointers. 8 KiB of stack per sample is enough
# to reach the pipeline's frames from the hot loops.
/usr/bin/time -f '%U %S' -o "$work/time" \
  perf record -q -F 499 --call-graph dwarf,8192 -o "$work/perf.data" -- \
  "$bin/sluice" ingest "$corpus" --json >"$out/summary.json"
read -r user sys <"$work/time"
# The profiled run's CPU includes perf's own work; the shares are applied to the CPU of an
# unprofiled run when one is given (sluice-bench --corpus prints it), else to this figure.
cpu=${CPU_SECS:-$(python3 -c "import sys; print(float(sys.argv[1]) + float(sys.argv[2]))" "$user" "$sys")}
chunks=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['chunks'])" "$out/summary.json")
perf script -i "$work/perf.data" -F pid,ip,sym 2>/dev/null |
  python3 "$here/profile_stages.py" --cpu-secs "$cpu" --chunks "$chunks" --folded "$out/stacks.folded" |
  tee "$out/stages.txt"
echo "(CPU-s columns: shares of $cpu CPU-s; stacks in $out/stacks.folded)" >&2
