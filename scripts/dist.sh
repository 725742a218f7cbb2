#!/usr/bin/env bash
# Release binaries as shipped: built with the release profile (line tables, so crash backtraces
# name files and lines), then split into a stripped binary and its debug info, linked by
# .gnu_debuglink so gdb/addr2line find it. The Dockerfile ships <out>/bin and keeps <out>/debug
# as a stage of its own.
#
#   scripts/dist.sh [OUT] [BIN...]     default: target/dist, sluice sluice-worker
#
# Prints each binary's size as cargo built it and as shipped.
set -euo pipefail
out=${1:-target/dist}
shift || true
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(sluice sluice-worker)

build_args=()
for bin in "${bins[@]}"; do build_args+=(--bin "$bin"); done
cargo build --release --locked "${build_args[@]}"

target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$out/bin" "$out/debug"
for bin in "${bins[@]}"; do
  built="$target_dir/release/$bin"
  objcopy --only-keep-debug "$built" "$out/debug/$bin.debug"
  objcopy --strip-debug --add-gnu-debuglink="$out/debug/$bin.debug" "$built" "$out/bin/$bin"
  printf '%-16s built %5d MB -> shipped %4d MB + debug info %5d MB\n' "$bin" \
    $(( $(stat -c %s "$built") >> 20 )) \
    $(( $(stat -c %s "$out/bin/$bin") >> 20 )) \
    $(( $(stat -c %s "$out/debug/$bin.debug") >> 20 ))
done
