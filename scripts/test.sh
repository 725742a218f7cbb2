#!/usr/bin/env bash
# Runs every Sluice test against the real services. On a fresh Debian/Ubuntu machine it installs and
# starts what is missing (RabbitMQ, PostgreSQL with trust auth on 127.0.0.1, the s3s-fs S3 server);
# where they already run it changes nothing. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[test.sh]\033[0m %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }
wait_port() { # name port seconds
  for _ in $(seq "$3"); do port_open "$2" && return 0; sleep 1; done
  log "$1 did not come up on 127.0.0.1:$2"; return 1
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  port_open 5432 && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql
    fresh_pg=1
  fi
  local version; version=$(ls /etc/postgresql | sort -V | tail -n1)
  if [ "${fresh_pg:-0}" = 1 ]; then
    # Tests connect as postgres@127.0.0.1 without a password, as on the development machines.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port PostgreSQL 5432 60
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing RabbitMQ"
    apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached || true
  wait_port RabbitMQ 5672 120
}

export PATH="$HOME/.cargo/bin:$PATH"
install_s3s_fs() {
  # A real S3 server over a folder, for the s3:// tests (0.17 needs a newer Rust than ours).
  log "installing s3s-fs 0.14.1 (a few minutes, once; alongside the test build)"
  cargo install --quiet --locked s3s-fs@0.14.1 --features binary
}

ensure_postgres
ensure_rabbitmq
# deploy/: render, schemas, promtool, hadolint, compose, workflow (also installs the kubectl that
# loadtests' deploy_manifests test renders the overlays with). Fails the run on any finding.
scripts/deploy-checks.sh

output=$(mktemp)
trap 'rm -f "$output"' EXIT
set +e
# On a fresh machine s3s-fs builds while the tests compile: both are long, neither keeps two cores
# busy throughout.
s3s_pid=
if ! command -v s3s-fs >/dev/null; then install_s3s_fs & s3s_pid=$!; fi
log "building the tests"
cargo test --workspace --no-run "$@" 2>&1 | tee "$output"
build_status=${PIPESTATUS[0]}
if [ -n "$s3s_pid" ] && ! wait "$s3s_pid"; then log "installing s3s-fs failed"; build_status=1; fi
if [ "$build_status" != 0 ]; then exit "$build_status"; fi

log "running cargo test --workspace"
# One process per test binary; tests inside a binary run in parallel on their own databases/queues.
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$output"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one result line per binary).
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$output"
exit "$status"
