#!/usr/bin/env bash
# Runs ingest.py over each corpus REPEATS times against a fresh provider emulator (OpenAI wire
# format, zero latency), appending one JSON line per run to OUT (default runs.jsonl beside this
# script), then stops the emulator. Each run is stopped after 600 s.
# Usage: loadtests/llamaindex/run.sh [REPEATS] [CORPUS...]
#   env: PY (default /work/llamaenv/bin/python), EMULATOR (default target/release/provider-emulator of this checkout),
#        OUT, EXTRA (extra ingest.py flags, e.g. --in-memory)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repeats=${1:-3}
shift || true
corpora=("$@")
[ ${#corpora[@]} -gt 0 ] || corpora=(/work/corpus /work/corpus-nopdf /work/corpus-pdf)
py=${PY:-/work/llamaenv/bin/python}
emulator=${EMULATOR:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/provider-emulator}
out=${OUT:-$here/runs.jsonl}
extra=${EXTRA:-}

log=$(mktemp)
"$emulator" --listen 127.0.0.1:0 --api openai >"$log" 2>&1 &
emu=$!
trap 'kill "$emu" 2>/dev/null || true; wait "$emu" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 50); do grep -q 'listening on' "$log" && break; sleep 0.1; done
base=$(grep -o 'http://[0-9.:]*' "$log" | head -n1)
[ -n "$base" ] || { echo "emulator did not start: $(cat "$log")" >&2; exit 1; }
echo "emulator pid $emu at $base" >&2

emu_cpu() { # utime+stime of the emulator, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$emu/stat"
}

for rep in $(seq "$repeats"); do
  for corpus in "${corpora[@]}"; do
    before=$(emu_cpu)
    echo "run $rep: $corpus $extra" >&2
    # shellcheck disable=SC2086
    if line=$(timeout 600 "$py" "$here/ingest.py" "$corpus" --api-base "$base/v1" --count-tokens \
        --label "rep$rep" $extra 2>>"$here/runs.stderr.log" | tail -n1); then
      after=$(emu_cpu)
      "$py" -c 'import json,sys; d=json.loads(sys.argv[1]); d["emulator_cpu_secs"]=round(float(sys.argv[2])-float(sys.argv[3]),3); print(json.dumps(d))' \
        "$line" "$after" "$before" | tee -a "$out"
    else
      rc=$?
      echo "{\"tool\":\"llamaindex\",\"label\":\"rep$rep\",\"corpus\":\"$corpus\",\"failed\":true,\"exit\":$rc}" | tee -a "$out"
    fi
  done
done
