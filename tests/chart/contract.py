#!/usr/bin/env python3
"""Checks manifests printed by `mesh-ctl k8s` against what charts/mesh actually mounts.

    contract.py --release R --namespace NS --ordinals 0,1,2 [--values FILE] --out DIR MANIFEST.yaml...

Run with the chart tooling's interpreter (tests/python/requirements-chart.txt), as validate.py.
tests/tests/chart.rs runs it on the output of `mesh-ctl k8s init`, `k8s secrets` and `k8s kek`.

1. Every manifest passes `kubernetes-validate --strict` (the Kubernetes versions validate.py uses).
2. The chart is rendered for the same release and namespace (default values, or --values). The
   printed objects are exactly the ones its StatefulSet mounts for those ordinals: the CA Secret,
   `-tls` and `-kek` Secrets per ordinal, the layout ConfigMap, each with exactly the keys the pod
   template projects (a missing key fails the mount; an extra one is dead weight), the Secret types
   and labels the chart README promises (never `managed-by: Helm`), in the release's namespace.
3. Values typos are still refused (the schema covers the new config.tls and the Secret names).

Writes OUT/chart.json (what the rendered chart says: fullname, peer Service, namespace, cluster
domain, ports, trust domain, node.toml) and OUT/objects/<name>/<key> (each decoded value), for the
Rust test to check certificates and the signed layout against the chart rather than against
mesh-ctl's own idea of the names. Exits 1 listing every failure.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate  # noqa: E402  (the shared render, report and kubernetes-validate helpers)
from validate import R, helm, tomllib, yaml  # noqa: E402

LABELS = {
    "app.kubernetes.io/part-of": "dark-store-mesh",
    "app.kubernetes.io/managed-by": "mesh-ctl",
}


def mounted_objects(sts: dict, ordinals: list[int]) -> dict[str, tuple[str, str | None, list[str]]]:
    """name -> (kind, Secret type the README promises, keys the pod template projects), for the
    objects a pod of these ordinals needs."""
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    name = sts["metadata"]["name"]
    out: dict[str, tuple[str, str | None, list[str]]] = {}
    ca = volumes["ca"]["secret"]
    out[ca["secretName"]] = ("Secret", "Opaque", [i["key"] for i in ca["items"]])
    wanted_dirs = {f"{name}-{i}" for i in ordinals}
    for src in volumes["node-credentials"]["projected"]["sources"]:
        sec = src["secret"]
        dirs = {it["path"].split("/")[0] for it in sec["items"]}
        if dirs & wanted_dirs:
            keys = [it["key"] for it in sec["items"]]
            type_ = "kubernetes.io/tls" if "tls.crt" in keys else "Opaque"
            out[sec["name"]] = ("Secret", type_, keys)
    if "layout" in volumes:
        cm = volumes["layout"]["configMap"]
        out[cm["name"]] = ("ConfigMap", None, [i["key"] for i in cm["items"]])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--ordinals", required=True, help="comma-separated pod ordinals the manifests cover")
    ap.add_argument("--values", type=Path, help="a values file (default: the chart's defaults)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("manifests", type=Path, nargs="+")
    args = ap.parse_args()
    ordinals = [int(o) for o in args.ordinals.split(",")]
    label = f"{args.release}/{args.namespace}"

    docs: list[dict] = []
    for path in args.manifests:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]

    R.step(f"[{label}] kubernetes-validate --strict on {len(docs)} mesh-ctl manifests")
    with tempfile.TemporaryDirectory(prefix="mesh-ctl-k8s-") as tmp:
        files = []
        for i, d in enumerate(docs):
            f = Path(tmp) / f"{i:02d}-{d.get('kind')}-{d.get('metadata', {}).get('name')}.yaml"
            f.write_text(yaml.safe_dump(d))
            files.append(f)
        validate.kube_validate(label, files)

    R.step(f"[{label}] the manifests are exactly what the rendered chart mounts")
    values = helm.values_from_yaml(args.values.read_text()) if args.values else {}
    docs_rendered, _ = validate.split(validate.render(values, args.release, args.namespace))
    with helm.Chart.load(str(validate.CHART)) as chart:
        merged = chart.merge_values(values)
    kinds = validate.by_kind(docs_rendered)
    (sts,) = kinds["StatefulSet"]
    want = mounted_objects(sts, ordinals)
    printed: dict[str, dict] = {}
    for d in docs:
        name = d["metadata"]["name"]
        if name in printed:
            R.fail(f"[{label}] {d['kind']} {name} is printed more than once")
        printed[name] = d
    R.check(
        set(printed) == set(want),
        f"[{label}] printed objects = mounted objects for ordinals {ordinals}: {sorted(want)}",
        f"printed {sorted(printed)}",
    )
    objects = args.out / "objects"
    for name, (kind, type_, keys) in sorted(want.items()):
        d = printed.get(name)
        if d is None:
            continue
        meta = d["metadata"]
        labels = meta.get("labels") or {}
        R.check(
            d["kind"] == kind
            and meta.get("namespace") == args.namespace
            and labels.get("app.kubernetes.io/instance") == args.release
            and all(labels.get(k) == v for k, v in LABELS.items()),
            f"[{label}] {kind} {name}: in namespace {args.namespace}, labelled for release {args.release}, "
            "managed-by mesh-ctl (not Helm)",
            json.dumps(meta),
        )
        body = "data" if kind == "Secret" else "binaryData"
        if kind == "Secret":
            R.check(d.get("type") == type_, f"[{label}] Secret {name} has type {type_}", str(d.get("type")))
        data = d.get(body) or {}
        other = set(d) - {"apiVersion", "kind", "metadata", body} - ({"type"} if kind == "Secret" else set())
        R.check(
            sorted(data) == sorted(keys) and not other,
            f"[{label}] {kind} {name} holds exactly the keys the pod template mounts: {keys}",
            f"got {sorted(data)}" + (f", and {sorted(other)}" if other else ""),
        )
        for key, b64 in data.items():
            try:
                raw = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError) as e:
                R.fail(f"[{label}] {kind} {name} key {key} is not base64: {e}")
                continue
            R.check(len(raw) > 0, f"[{label}] {kind} {name} key {key}: {len(raw)} bytes")
            (objects / name).mkdir(parents=True, exist_ok=True)
            (objects / name / key).write_bytes(raw)

    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    cm_name = {v["name"]: v for v in pod["volumes"]}["config"]["configMap"]["name"]
    (cm,) = [d for d in kinds["ConfigMap"] if d["metadata"]["name"] == cm_name]
    toml = tomllib.loads(cm["data"]["node.toml"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    by_pod: dict[str, dict[str, str]] = {}
    for src in volumes["node-credentials"]["projected"]["sources"]:
        for it in src["secret"]["items"]:
            pod_dir, file = it["path"].split("/")
            by_pod.setdefault(pod_dir, {})[file] = src["secret"]["name"]
    facts = {
        "fullname": sts["metadata"]["name"],
        "ca_secret": volumes["ca"]["secret"]["secretName"],
        "layout_config_map": volumes["layout"]["configMap"]["name"],
        # Per ordinal, the Secret each file of /etc/dsm/node comes from.
        "node_secrets": {str(i): by_pod[f"{sts['metadata']['name']}-{i}"] for i in ordinals},
        "peer_service": sts["spec"]["serviceName"],
        "namespace": args.namespace,
        "cluster_domain": merged["clusterDomain"],
        "ports": {p["name"]: p["containerPort"] for p in c["ports"]},
        "trust_domain": toml["trust_domain"],
        "node_toml": toml,
    }
    (args.out / "chart.json").write_text(json.dumps(facts, indent=2))
    print(f"   wrote {args.out / 'chart.json'} and {objects}")

    R.step("values typos are still refused")
    for text, needles in [
        ("config:\n  tls:\n    reloadIntervall: 5s\n", ["reloadIntervall"]),
        ("secrets:\n  caSecretNam: x\n", ["caSecretNam"]),
    ]:
        shown = text.strip().replace("\n", " / ")
        try:
            validate.render(helm.values_from_yaml(text), args.release, args.namespace)
        except helm.HelmValuesError as e:
            R.check(all(n in str(e) for n in needles), f"refused `{shown}`, naming {needles}", str(e))
            continue
        except helm.HelmError as e:
            R.fail(f"`{shown}` was refused with the wrong kind of error ({type(e).__name__}): {e}")
            continue
        R.fail(f"`{shown}` rendered without an error")

    print()
    if R.failures:
        print(f"mesh-ctl manifest contract FAILED: {len(R.failures)} problem(s):")
        for f in R.failures:
            print(f"  - {f}")
        return 1
    print("mesh-ctl manifest contract ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
