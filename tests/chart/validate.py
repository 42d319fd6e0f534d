#!/usr/bin/env python3
"""Offline validation of the Helm chart in charts/mesh. Needs no cluster, no network and no `helm`.

Run it with an interpreter that has tests/python/requirements-chart.txt installed:

    python3 -m venv /tmp/chart-venv
    /tmp/chart-venv/bin/pip install -r tests/python/requirements-chart.txt
    /tmp/chart-venv/bin/python tests/chart/validate.py

(`cargo nextest run -p mesh-tests --test chart` does the same in target/py-chart-venv.)

Steps, for the default values and for tests/chart/values-custom.yaml:

1. values.schema.json closes every object (additionalProperties false, or a typed map).
2. `helm lint --strict`, through helm-python-sdk: Helm v4's Go SDK in a shared library, no binary.
3. Render (`helm template`) and check what the chart promises: restricted pod security, node ids
   from pod names, node Secrets mounted per pod, probes, standard labels, NetworkPolicy, PDB, HPA,
   and a node.toml that the node's config loader (node/src/ops/config/) accepts key by key.
4. kubernetes-validate --strict on every manifest, against the oldest Kubernetes the chart supports
   and the newest the installed kubernetes-validate ships schemas for (both offline).
5. checkov on the rendered manifests (and on ./Dockerfile when it exists), with
   tests/chart/.checkov.yaml: every suppression there carries a reason, one that no longer hides a
   failure is reported as stale, and inline suppressions (`#checkov:skip=ID:reason`) need a reason.
6. Values typos and impossible settings are refused at render time, naming the key.

Exits 1 with every failure listed; prints what ran and with which versions.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info < (3, 11):
    sys.exit(f"validate.py needs Python 3.11 or newer (tomllib); this is {sys.version.split()[0]}")
import tomllib

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mesh"
HERE = Path(__file__).resolve().parent
CUSTOM_VALUES = HERE / "values-custom.yaml"
CHECKOV_CONFIG = HERE / ".checkov.yaml"
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_DIR = ROOT / "node" / "src" / "ops" / "config"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest one the pinned
# kubernetes-validate has schemas for.
KUBE_VERSIONS = ["1.32.0", "1.37.0"]

STANDARD_LABELS = [
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
]

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - the message is the point
    sys.exit(
        f"validate.py: {e}. Run it with the chart tooling installed:\n"
        "  python3 -m venv /tmp/chart-venv && "
        "/tmp/chart-venv/bin/pip install -r tests/python/requirements-chart.txt\n"
        "  /tmp/chart-venv/bin/python tests/chart/validate.py"
    )


class Report:
    """Collects failures so one run shows every problem, not just the first."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.steps = 0

    def step(self, title: str) -> None:
        self.steps += 1
        print(f"\n== {self.steps}. {title}", flush=True)

    def ok(self, msg: str) -> None:
        print(f"   ok    {msg}", flush=True)

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        print(f"   FAIL  {msg}", flush=True)

    def check(self, cond: bool, what: str, detail: str = "") -> bool:
        if cond:
            self.ok(what)
        else:
            self.fail(what + (f": {detail}" if detail else ""))
        return cond


R = Report()


def tool(name: str) -> list[str]:
    """The console script `name` of this interpreter's environment."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    sys.exit(f"validate.py: {name} is not installed next to {sys.executable} (see requirements-chart.txt)")


# ---------------------------------------------------------------------------------------------
# 1. The schema closes every object.


def schema_open_objects(node: object, path: str, out: list[str]) -> None:
    if isinstance(node, dict):
        is_object = node.get("type") == "object" or "properties" in node
        if is_object:
            ap = node.get("additionalProperties", True)
            if ap is True:
                out.append(f"{path or '/'}: object without additionalProperties")
            elif "properties" in node and ap is not False:
                out.append(f"{path}: object with properties must set additionalProperties: false")
        for k, v in node.items():
            schema_open_objects(v, f"{path}/{k}", out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            schema_open_objects(v, f"{path}/{i}", out)


def check_schema() -> None:
    R.step("values.schema.json closes every object")
    schema = json.loads((CHART / "values.schema.json").read_text())
    problems: list[str] = []
    schema_open_objects(schema, "", problems)
    R.check(not problems, "every object has additionalProperties false (or a typed map of values)", "; ".join(problems))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = sorted(set(values) - set(schema["properties"]))
    R.check(not missing, "every top-level key of values.yaml is in the schema", ", ".join(missing))


# ---------------------------------------------------------------------------------------------
# 2. helm lint.


def lint(label: str, values: dict) -> None:
    for kv in KUBE_VERSIONS:
        report = helm.lint(str(CHART), values, strict=True, namespace="mesh", kube_version=f"v{kv}")
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        for m in report["messages"]:
            if m["severity"] < 2:
                print(f"   info  [{label}, {kv}] {m['path']}: {m['error']}")
        R.check(
            not bad and not report["errors"],
            f"helm lint --strict ({label} values, Kubernetes {kv})",
            "; ".join(f"{m['path']}: {m['error'].strip()}" for m in bad) or "; ".join(report["errors"]),
        )


# ---------------------------------------------------------------------------------------------
# 3. Render and check what the chart promises.


def render(values: dict, release: str, namespace: str) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name=release, namespace=namespace, is_install=True)


def split(rendered: dict[str, str]) -> tuple[list[dict], str]:
    docs: list[dict] = []
    notes = ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs, notes


def config_rs_keys() -> tuple[dict[str, set[str]], set[str]]:
    """The keys node.toml may hold, by section ('' is the top level), and the DSM_* variables,
    read from the node's config loader, node/src/ops/config/ (its file structs deny unknown
    fields; the unit tests are left out)."""
    src = "\n".join(
        f.read_text() for f in sorted(CONFIG_DIR.glob("*.rs")) if f.name != "tests.rs"
    )

    def fields(struct: str) -> dict[str, str]:
        m = re.search(r"struct\s+" + struct + r"\s*\{(.*?)\n\}", src, re.DOTALL)
        if not m:
            raise ValueError(f"struct {struct} not found in {CONFIG_DIR}")
        body = re.sub(r"#\[[^\]]*\]", "", m.group(1))
        return dict(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:\s*([^,\n]+),", body, re.MULTILINE))

    top = fields("FileConfig")
    sections = {"": {k for k, t in top.items() if not t.strip().startswith("File")}}
    for key, ty in top.items():
        ty = ty.strip()
        if ty.startswith("File"):
            sections[key] = set(fields(ty))
    env = set(re.findall(r'"(DSM_[A-Z0-9_]+)"', src))
    return sections, env


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def check_rendered(label: str, docs: list[dict], notes: str, merged: dict) -> None:
    kinds = by_kind(docs)
    want = {"ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount", "StatefulSet"}
    if merged["autoscaling"]["enabled"]:
        want.add("HorizontalPodAutoscaler")
    R.check(set(kinds) == want, f"[{label}] objects: {sorted(want)}", f"got {sorted(kinds)}")

    unlabelled = [
        f"{d['kind']}/{d['metadata']['name']} lacks {k}"
        for d in docs
        for k in STANDARD_LABELS
        if k not in (d["metadata"].get("labels") or {})
    ]
    R.check(not unlabelled, f"[{label}] every object carries the standard labels", "; ".join(unlabelled))

    (sts,) = kinds["StatefulSet"]
    name = sts["metadata"]["name"]
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    selector = sts["spec"]["selector"]["matchLabels"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    R.check(
        all(pod_labels.get(k) == v for k, v in selector.items()) and all(k in pod_labels for k in STANDARD_LABELS),
        f"[{label}] pod template labels match the selector and carry the standard labels",
    )

    # Restricted pod security.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    restricted = (
        psc.get("runAsNonRoot") is True
        and isinstance(psc.get("runAsUser"), int)
        and psc["runAsUser"] > 0
        and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        and pod.get("automountServiceAccountToken") is False
        and csc.get("runAsNonRoot") is True
        and csc.get("readOnlyRootFilesystem") is True
        and csc.get("allowPrivilegeEscalation") is False
        and csc.get("privileged") is False
        and csc.get("capabilities", {}).get("drop") == ["ALL"]
        and not csc.get("capabilities", {}).get("add")
        and csc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        and not pod.get("hostNetwork")
        and not pod.get("hostPID")
        and not pod.get("hostIPC")
    )
    R.check(
        restricted,
        f"[{label}] restricted pod security (non-root uid, read-only root fs, no capabilities, "
        "no privilege escalation, RuntimeDefault seccomp, no service account token)",
        json.dumps([psc, csc]),
    )

    # The node id comes from the pod name; the config file is the chart's ConfigMap.
    env = {e["name"]: e for e in c.get("env", [])}
    R.check(
        env.get("DSM_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
        f"[{label}] DSM_NODE_ID comes from the pod name (downward API)",
    )
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    config_dir = mounts.get("config", {}).get("mountPath", "?")
    R.check(
        c.get("args") == ["run", "--config", f"{config_dir}/node.toml"] and "command" not in c,
        f"[{label}] the container runs the image entrypoint as `mesh-node run --config {config_dir}/node.toml`",
        json.dumps(c.get("args")),
    )
    _, known_env = config_rs_keys()
    unknown_env = sorted(k for k in env if k.startswith("DSM_") and k not in known_env)
    R.check(not unknown_env, f"[{label}] every DSM_* variable set is one the config loader reads", ", ".join(unknown_env))

    # Probes on the ops port.
    ops_port = {p["name"]: p for p in c["ports"]}.get("ops", {})
    probes_ok = (
        c.get("startupProbe", {}).get("httpGet") == {"path": "/healthz", "port": "ops"}
        and c.get("livenessProbe", {}).get("httpGet") == {"path": "/healthz", "port": "ops"}
        and c.get("readinessProbe", {}).get("httpGet") == {"path": "/readyz", "port": "ops"}
        and ops_port.get("protocol") == "TCP"
    )
    R.check(probes_ok, f"[{label}] startup and liveness probe /healthz, readiness /readyz, on the plaintext ops port")
    R.check(
        bool(c.get("resources", {}).get("requests")) and bool(c.get("resources", {}).get("limits")),
        f"[{label}] resources set",
    )
    img = merged["image"]
    want_image = (
        f"{img['repository']}@{img['digest']}"
        if img["digest"]
        else f"{img['repository']}:{img['tag'] or yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
    )
    R.check(
        c["image"] == want_image and c["imagePullPolicy"] == img["pullPolicy"],
        f"[{label}] image {want_image}" + (" (pinned by digest)" if img["digest"] else ""),
        c["image"],
    )

    # Each pod mounts only its own node Secrets: the directory named after its pod, and every
    # ordinal up to maxNodes has its two optional Secrets in the projected volume.
    creds = mounts.get("node-credentials", {})
    R.check(
        creds.get("subPathExpr") == "$(DSM_NODE_ID)" and creds.get("readOnly") is True,
        f"[{label}] node credentials are mounted read-only from the pod's own directory (subPathExpr)",
    )
    volumes = {v["name"]: v for v in pod["volumes"]}
    sources = volumes.get("node-credentials", {}).get("projected", {}).get("sources", [])
    max_nodes = merged["maxNodes"]
    dirs_ok = len(sources) == 2 * max_nodes and all(s["secret"].get("optional") is True for s in sources)
    for i in range(max_nodes):
        tls, kek = sources[2 * i]["secret"], sources[2 * i + 1]["secret"]
        dirs_ok &= tls["name"].endswith(f"{i}-tls") and kek["name"].endswith(f"{i}-kek")
        dirs_ok &= [it["path"] for it in tls["items"]] == [f"{name}-{i}/tls.crt", f"{name}-{i}/tls.key"]
        dirs_ok &= [it["key"] for it in tls["items"]] == ["tls.crt", "tls.key"]
        dirs_ok &= [it["path"] for it in kek["items"]] == [f"{name}-{i}/node.kek"]
    R.check(
        dirs_ok,
        f"[{label}] ordinals 0..{max_nodes - 1}: Secrets <prefix>N-tls and <prefix>N-kek, optional, "
        f"under directories named like the pods ({name}-N)",
    )
    ca = volumes.get("ca", {}).get("secret", {})
    R.check(
        ca.get("optional") is not True
        and [i["key"] for i in ca.get("items", [])] == ["ca.crt", "control.pub", "crl.pem"]
        and "subPath" not in mounts.get("ca", {})
        and "subPathExpr" not in mounts.get("ca", {}),
        f"[{label}] the CA Secret ({ca.get('secretName')}) is required, provides ca.crt, control.pub and "
        "crl.pem, and is mounted as a directory (Secret updates reach running pods)",
    )
    vct = sts["spec"].get("volumeClaimTemplates", [])
    R.check(
        len(vct) == 1 and vct[0]["metadata"]["name"] == "data" and "data" in mounts,
        f"[{label}] a PersistentVolumeClaim per pod for the data directory",
    )

    # node.toml: only keys the node knows (its loader denies unknown keys), node_id left to the
    # environment, and every path inside a mounted volume.
    (cm,) = [d for d in kinds["ConfigMap"] if d["metadata"]["name"] == volumes["config"]["configMap"]["name"]]
    toml = tomllib.loads(cm["data"]["node.toml"])
    sections, _ = config_rs_keys()
    unknown = [k for k in toml if k not in sections[""] and k not in sections]
    for sect, keys in sections.items():
        if sect and isinstance(toml.get(sect), dict):
            unknown += [f"{sect}.{k}" for k in toml[sect] if k not in keys]
    R.check(not unknown, f"[{label}] node.toml uses only keys node/src/ops/config/ accepts", ", ".join(unknown))
    R.check("node_id" not in toml, f"[{label}] node.toml leaves node_id to DSM_NODE_ID")
    unset = [k for k in sorted(sections[""]) if k not in toml and k != "node_id"] + [
        f"{sect}.{k}"
        for sect, keys in sorted(sections.items())
        if sect
        for k in sorted(keys)
        if k not in (toml.get(sect) or {})
    ]
    if unset:
        print(
            f"   info  [{label}] node settings the chart leaves at the node's defaults (extraEnv can set them): "
            + ", ".join(unset)
        )
    node_dir, ca_dir = mounts["node-credentials"]["mountPath"], mounts["ca"]["mountPath"]
    paths_ok = (
        toml["data_dir"] == mounts["data"]["mountPath"]
        and toml["key_file"] == f"{node_dir}/node.kek"
        and toml["tls"]
        == {
            "ca": f"{ca_dir}/ca.crt",
            "cert": f"{node_dir}/tls.crt",
            "key": f"{node_dir}/tls.key",
            "crl": f"{ca_dir}/crl.pem",
            "reload_interval": merged["config"]["tls"]["reloadInterval"],
        }
        and toml["control_public_key"] == f"{ca_dir}/control.pub"
    )
    if merged["layout"]["enabled"]:
        paths_ok &= toml.get("layout_file") == f"{mounts['layout']['mountPath']}/layout.bin"
        paths_ok &= volumes["layout"]["configMap"].get("optional") is not True
    R.check(paths_ok, f"[{label}] node.toml paths point into the mounted volumes", json.dumps(toml))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    R.check(
        toml["gateway_listen"].endswith(f":{ports['gateway']}")
        and toml["ops_listen"].endswith(f":{ports['ops']}")
        and toml["peer_listen"].endswith(f":{ports['peer']}")
        and {p["name"]: p["protocol"] for p in c["ports"]} == {"gateway": "TCP", "peer": "UDP", "ops": "TCP"},
        f"[{label}] listen addresses match the container ports (peer over UDP)",
    )
    R.check(toml["trust_domain"] == merged["config"]["trustDomain"], f"[{label}] trust_domain from values")

    # Replicas and the autoscaler.
    if merged["autoscaling"]["enabled"]:
        (hpa,) = kinds["HorizontalPodAutoscaler"]
        # Installed, the chart keeps the live replica count (lookup); offline it starts at minReplicas.
        R.check(
            sts["spec"].get("replicas") == merged["autoscaling"]["minReplicas"],
            f"[{label}] with the autoscaler, replicas start at autoscaling.minReplicas (offline render)",
        )
        R.check(
            hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name}
            and hpa["spec"]["behavior"]["scaleDown"]["selectPolicy"] == "Disabled"
            and hpa["spec"]["maxReplicas"] <= max_nodes,
            f"[{label}] the autoscaler targets the StatefulSet, never scales down, stays within maxNodes",
        )
    else:
        R.check(sts["spec"].get("replicas") == merged["replicaCount"], f"[{label}] replicas = replicaCount")

    # Services.
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    headless = services.get(sts["spec"]["serviceName"], {})
    R.check(
        headless.get("spec", {}).get("clusterIP") == "None"
        and headless["spec"].get("publishNotReadyAddresses") is True
        and {"port": ports["peer"], "protocol": "UDP"}.items()
        <= next((p for p in headless["spec"]["ports"] if p["name"] == "peer"), {}).items()
        and headless["spec"]["selector"] == selector,
        f"[{label}] headless Service {sts['spec']['serviceName']} gives pods stable peer names (UDP peer port)",
    )
    gateway = services.get(name, {})
    gp = gateway.get("spec", {}).get("ports", [])
    R.check(
        len(gp) == 1
        and gp[0]["protocol"] == "TCP"
        and gp[0]["targetPort"] == "gateway"
        and gp[0]["port"] == merged["gateway"]["service"]["port"]
        and gateway["spec"]["type"] == merged["gateway"]["service"]["type"]
        and gateway["spec"]["selector"] == selector,
        f"[{label}] gateway Service {name} ({merged['gateway']['service']['type']}, TCP) selects the nodes",
    )

    # Disruption budget and network policy.
    (pdb,) = kinds["PodDisruptionBudget"]
    R.check(
        pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"].get("maxUnavailable") == 1,
        f"[{label}] PodDisruptionBudget: one node at a time",
    )
    (np,) = kinds["NetworkPolicy"]
    rules = np["spec"]["ingress"]
    peer_rules = [r for r in rules if any(p.get("protocol") == "UDP" for p in r.get("ports", []))]
    R.check(
        np["spec"]["podSelector"]["matchLabels"] == selector
        and len(peer_rules) == 1
        and peer_rules[0]["ports"] == [{"port": ports["peer"], "protocol": "UDP"}]
        and peer_rules[0]["from"] == [{"podSelector": {"matchLabels": selector}}],
        f"[{label}] NetworkPolicy: peer UDP only from this release's nodes",
    )
    gw_rule = next((r for r in rules if r.get("ports") == [{"port": ports["gateway"], "protocol": "TCP"}]), None)
    ops_rule = next((r for r in rules if r.get("ports") == [{"port": ports["ops"], "protocol": "TCP"}]), None)
    np_vals = merged["networkPolicy"]
    R.check(
        gw_rule is not None
        and gw_rule.get("from", []) == np_vals["gateway"]["allowFrom"]
        and ops_rule is not None
        and ops_rule.get("from", []) == np_vals["ops"]["allowFrom"]
        and len(rules) == 3,
        f"[{label}] NetworkPolicy: gateway and ops ports open to exactly the sources in values",
    )
    if np_vals["egress"]["enabled"]:
        egress = np["spec"].get("egress", [])
        R.check(
            "Egress" in np["spec"]["policyTypes"]
            and any({"port": 53, "protocol": "UDP"} in r.get("ports", []) for r in egress)
            and any(r.get("to") == [{"podSelector": {"matchLabels": selector}}] for r in egress)
            and len(egress) == 2 + len(np_vals["egress"]["extra"]),
            f"[{label}] NetworkPolicy egress: DNS, peers and the configured extras only",
        )

    # NOTES.txt tells the operator which Secrets to create.
    ca_name = ca.get("secretName", "?")
    R.check(
        ca_name in notes and sources[0]["secret"]["name"] in notes and "mesh-ctl scale" in notes,
        f"[{label}] NOTES.txt names the Secrets to create and the scale procedure",
    )


# ---------------------------------------------------------------------------------------------
# 4. kubernetes-validate.


def kube_validate(label: str, files: list[Path]) -> None:
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    for kv in KUBE_VERSIONS:
        if not (schemas / f"v{kv}-local-strict").is_dir():
            R.fail(f"kubernetes-validate {kubernetes_validate.version.__version__} has no offline schema for {kv}")
            continue
        p = subprocess.run(
            tool("kubernetes-validate") + ["--strict", "--quiet", "-k", kv, *map(str, files)],
            check=False,
            capture_output=True,
            text=True,
        )
        out = (p.stdout + p.stderr).strip()
        R.check(
            p.returncode == 0 and "ERROR" not in out and "WARN" not in out,
            f"[{label}] kubernetes-validate --strict, Kubernetes {kv}: {len(files)} manifests",
            out,
        )


# ---------------------------------------------------------------------------------------------
# 5. checkov.


def checkov_skips() -> dict[str, str]:
    """The skip-check entries of .checkov.yaml with their reasons: the comment block right above
    each entry, which must start by naming the check."""
    skips: dict[str, str] = {}
    comment: list[str] = []
    in_skip = False
    for line in CHECKOV_CONFIG.read_text().splitlines():
        s = line.strip()
        if re.match(r"^[\w-]+:", line):
            in_skip = line.startswith("skip-check:")
            comment = []
            continue
        if s.startswith("#"):
            comment.append(s.lstrip("# ").rstrip())
            continue
        m = re.match(r"^-\s*(CKV2?_[A-Z0-9_]+)\s*$", s)
        if in_skip and m:
            reason = " ".join(comment)
            if not reason.startswith(m.group(1)) or len(reason) < len(m.group(1)) + 40:
                R.fail(
                    f".checkov.yaml: {m.group(1)} needs a comment above it that starts with its id and gives a reason"
                )
            skips[m.group(1)] = reason
            comment = []
        elif s:
            comment = []
    return skips


def run_checkov(target: list[str], framework: str, with_config: bool) -> dict:
    args = tool("checkov") + target + ["--framework", framework, "--skip-download", "-o", "json"]
    if with_config:
        args += ["--config-file", str(CHECKOV_CONFIG)]
    with tempfile.TemporaryDirectory() as cwd:  # no stray .checkov.yaml is picked up from the cwd
        p = subprocess.run(
            args,
            check=False,
            capture_output=True,
            text=True,
            cwd=cwd,
        )
    try:
        out = json.loads(p.stdout)
    except json.JSONDecodeError:
        R.fail(
            f"checkov {' '.join(target)} ({framework}) printed no JSON (exit {p.returncode}): "
            f"{(p.stdout + p.stderr)[-2000:]}"
        )
        return {"failed": [], "passed": 0, "skipped": [], "exit": p.returncode}
    reports = out if isinstance(out, list) else [out]
    failed, skipped, passed = [], [], 0
    for rep in reports:
        res = rep.get("results", {})
        passed += len(res.get("passed_checks", []))
        failed += [
            (f["check_id"], f["check_name"], f["resource"], f["file_path"]) for f in res.get("failed_checks", [])
        ]
        skipped += [
            (f["check_id"], f["resource"], (f.get("check_result") or {}).get("suppress_comment") or "")
            for f in res.get("skipped_checks", [])
        ]
    return {"failed": failed, "passed": passed, "skipped": skipped, "exit": p.returncode}


def checkov(rendered_dirs: dict[str, Path]) -> None:
    skips = checkov_skips()
    for cid, reason in skips.items():
        print(f"   skip  {reason}")
    raw_failures: set[str] = set()
    targets = [(label, ["-d", str(d)], "kubernetes") for label, d in rendered_dirs.items()]
    if DOCKERFILE.exists():
        targets.append(("Dockerfile", ["-f", str(DOCKERFILE)], "dockerfile"))
    else:
        print(
            f"   note  {DOCKERFILE.relative_to(ROOT)} does not exist yet: its checkov scan is skipped "
            "(it runs once the file is there)"
        )
    for label, target, framework in targets:
        res = run_checkov(target, framework, with_config=True)
        R.check(
            not res["failed"] and res["exit"] == 0 and res["passed"] > 0,
            f"[{label}] checkov ({framework}): {res['passed']} checks passed, {len(res['failed'])} failed",
            "; ".join(f"{c} {n} ({r}, {f})" for c, n, r, f in res["failed"])
            + (" -- fix it, or suppress it in tests/chart/.checkov.yaml with a reason" if res["failed"] else ""),
        )
        # Inline suppressions (`#checkov:skip=ID:reason` in a Dockerfile, `checkov.io/skip1: ID=reason`
        # annotations) are reported as skipped: each must give its reason too.
        for cid, resource, comment in res["skipped"]:
            has_reason = len(comment.strip()) >= 10 and comment.strip() != "No comment provided"
            R.check(
                has_reason,
                f"[{label}] inline suppression of {cid} on {resource}: {comment.strip() or '(no reason)'}",
                "give the reason after the check id, or suppress it in tests/chart/.checkov.yaml with one",
            )
        raw_failures |= {c for c, *_ in run_checkov(target, framework, with_config=False)["failed"]}
    stale = sorted(set(skips) - raw_failures)
    R.check(not stale, "every .checkov.yaml suppression still hides a real failure (none stale)", ", ".join(stale))


# ---------------------------------------------------------------------------------------------
# 6. Typos and impossible values are refused at render time.

NEGATIVE = [
    # (values as a user would write them in a -f file, error type, texts the error must contain)
    ("replicaCont: 5\n", helm.HelmValuesError, ["replicaCont"]),
    ("networkPolicy:\n  gateway:\n    alowFrom: []\n", helm.HelmValuesError, ["alowFrom", "networkPolicy/gateway"]),
    ("image:\n  pullpolicy: Always\n", helm.HelmValuesError, ["pullpolicy", "image"]),
    ("replicaCount: three\n", helm.HelmValuesError, ["replicaCount"]),
    ("securityContext:\n  runAsUser: 0\n", helm.HelmValuesError, ["runAsUser"]),
    ("config:\n  access:\n    requirePurpose: [wizard]\n", helm.HelmValuesError, ["requirePurpose"]),
    ("config:\n  tls:\n    reloadIntervall: 5s\n", helm.HelmValuesError, ["reloadIntervall", "config/tls"]),
    ("config:\n  tls:\n    reloadInterval: soon\n", helm.HelmValuesError, ["reloadInterval"]),
    (
        "affinity:\n  podAntiAffinity:\n    requiredDuringScheduling: []\n",
        helm.HelmValuesError,
        ["requiredDuringScheduling"],
    ),
    ("replicaCount: 20\n", helm.HelmRenderError, ["replicaCount (20) is larger than maxNodes (16)"]),
    ("autoscaling:\n  enabled: true\n  maxReplicas: 40\n", helm.HelmRenderError, ["autoscaling.maxReplicas (40)"]),
    ("layout:\n  enabled: false\n", helm.HelmRenderError, ["layout.enabled=false"]),
]


def check_negative() -> None:
    for text, err, needles in NEGATIVE:
        values = helm.values_from_yaml(text)
        shown = text.strip().replace("\n", " / ")
        try:
            render(values, "dsm", "shop")
        except err as e:
            msg = str(e)
            if R.check(all(n in msg for n in needles), f"refused `{shown}`, naming {needles}", f"error was: {msg}"):
                said = [ln.strip() for ln in msg.splitlines() if any(n in ln for n in needles)]
                print(f"          helm said: {said[0] if said else msg.strip()}")
            continue
        except helm.HelmError as e:
            R.fail(f"`{shown}` was refused with the wrong kind of error ({type(e).__name__}): {e}")
            continue
        R.fail(f"`{shown}` rendered without an error")


# ---------------------------------------------------------------------------------------------


def main() -> int:
    checkov_version = subprocess.run(
        tool("checkov") + ["--version"], check=False, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"charts/mesh validation with Helm SDK {helm.helm_sdk_version()} (helm-python-sdk, libhelm_c "
        f"{helm.helm_c_version()}), kubernetes-validate {kubernetes_validate.version.__version__}, "
        f"checkov {checkov_version}, Python {sys.version.split()[0]}"
    )

    check_schema()

    custom = helm.values_from_yaml(CUSTOM_VALUES.read_text())
    sets = [("defaults", {}, "dsm", "shop"), ("custom", custom, "orders", "orders")]

    R.step("helm lint")
    for label, values, _, _ in sets:
        lint(label, values)

    R.step("render and check what the chart promises")
    with tempfile.TemporaryDirectory(prefix="mesh-chart-") as tmp:
        rendered_dirs: dict[str, Path] = {}
        for label, values, release, namespace in sets:
            try:
                rendered = render(values, release, namespace)
            except helm.HelmError as e:
                R.fail(f"[{label}] rendering failed: {e}")
                continue
            docs, notes = split(rendered)
            with helm.Chart.load(str(CHART)) as chart:
                merged = chart.merge_values(values)
            try:
                check_rendered(label, docs, notes, merged)
            except (KeyError, IndexError, ValueError, TypeError) as e:
                R.fail(f"[{label}] rendered manifests are not shaped as expected: {type(e).__name__}: {e}")
            out = Path(tmp) / label
            out.mkdir()
            for i, d in enumerate(docs):
                (out / f"{i:02d}-{d['kind']}-{d['metadata']['name']}.yaml").write_text(yaml.safe_dump(d))
            rendered_dirs[label] = out

        R.step("kubernetes-validate --strict")
        for label, d in rendered_dirs.items():
            kube_validate(label, sorted(d.glob("*.yaml")))

        R.step("checkov")
        checkov(rendered_dirs)

    R.step("values typos and impossible settings are refused at render time")
    check_negative()

    print()
    if R.failures:
        print(f"chart validation FAILED: {len(R.failures)} problem(s):")
        for f in R.failures:
            print(f"  - {f}")
        return 1
    print(f"chart validation ok: all {R.steps} steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
