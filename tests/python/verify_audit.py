"""An independent verifier of a Dark Store Mesh node's audit trail, written from the format
documentation alone (SECURITY.md, "Audit trail format"): Python's hashlib and json, and the
`cryptography` package for X.509 and ECDSA. It shares no code with the node.

Usage: verify_audit.py --audit-dir DIR --ca CA.pem
Prints one JSON object; exit status 0 when the chain verifies, 1 when it does not.
"""

import argparse
import base64
import datetime
import glob
import hashlib
import json
import re
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

ZERO = "0" * 64


def complete_lines(path):
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1  # a torn last line (no newline) is not part of the log
    return [line for line in data[:end].split(b"\n") if line]


def checkpoint_ok(cp, ca):
    cert = x509.load_der_x509_certificate(base64.b64decode(cp["cert"]))
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return False
    at = datetime.datetime.fromtimestamp(cp["ts"] / 1000, tz=datetime.timezone.utc)
    if not (cert.not_valid_before_utc <= at <= cert.not_valid_after_utc):
        return False
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    if not any(u.startswith("spiffe://") and u.endswith("/node/" + cp["node"]) for u in uris):
        return False
    payload = f"dsm-audit-checkpoint-v1\n{cp['node']}\n{cp['seq']}\n{cp['head']}\n{cp['ts']}".encode()
    try:
        cert.public_key().verify(base64.b64decode(cp["sig"]), payload, ec.ECDSA(hashes.SHA256()))
        return True
    except Exception:
        return False


def verify(audit_dir, ca, node=None):
    cp_path = os.path.join(audit_dir, "checkpoints.jsonl")
    checkpoints = [json.loads(l) for l in complete_lines(cp_path)] if os.path.exists(cp_path) else []
    for cp in checkpoints:
        if not checkpoint_ok(cp, ca):
            return f"checkpoint for seq {cp['seq']}: bad signature or certificate"
    lines = []
    for seg in sorted(glob.glob(os.path.join(audit_dir, "segment-*.jsonl"))):
        lines.extend(complete_lines(seg))
    # Everything must belong to one node: the expected one, or the one the log starts with.
    if node is None:
        node = json.loads(lines[0])["node"] if lines else (checkpoints[0]["node"] if checkpoints else None)
    for cp in checkpoints:
        if cp["node"] != node:
            return f"checkpoint seq {cp['seq']} belongs to node {cp['node']}, not {node}"
    if lines and not checkpoints:
        return "no signed checkpoint covers this log"
    # The record ranges retention pruned, as AuditPrune records name them ("records A-B").
    pruned_to = set()
    for line in lines:
        rec = json.loads(line)
        if rec.get("action") == "AuditPrune":
            m = re.search(r"records (\d+)-(\d+)", rec.get("purpose", ""))
            if m:
                pruned_to.add(int(m.group(2)))
    hashes_by_seq = {}
    prev_seq, prev_hash = None, None
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec["node"] != node:
            return f"record seq {rec['seq']} belongs to node {rec['node']}, not {node}"
        if prev_seq is None:
            anchored = rec["prev"] == ZERO if rec["seq"] == 1 else any(
                c["seq"] == rec["seq"] - 1 and c["head"] == rec["prev"] for c in checkpoints
            )
            if not anchored:
                return f"record seq {rec['seq']}: not anchored"
            if rec["seq"] > 1 and rec["seq"] - 1 not in pruned_to:
                return f"records before seq {rec['seq']} are missing and no AuditPrune record accounts for them"
        else:
            if rec["seq"] != prev_seq + 1:
                return f"record seq {rec['seq']}: expected seq {prev_seq + 1}"
            if rec["prev"] != prev_hash:
                return f"record seq {rec['seq']}: prev does not match record {prev_seq}"
        prev_seq, prev_hash = rec["seq"], hashlib.sha256(line).hexdigest()
        hashes_by_seq[rec["seq"]] = prev_hash
    last = prev_seq or 0
    for cp in checkpoints:
        if cp["seq"] > last:
            return f"checkpoint for seq {cp['seq']} but the log ends at seq {last}"
        if cp["seq"] in hashes_by_seq and hashes_by_seq[cp["seq"]] != cp["head"]:
            return f"checkpoint for seq {cp['seq']}: head does not match"
    return None, len(lines), len(checkpoints)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--audit-dir", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--node", help="the node whose log this must be")
    args = ap.parse_args()
    with open(args.ca, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    result = verify(args.audit_dir, ca, args.node)
    if isinstance(result, str):
        print(json.dumps({"ok": False, "error": result}))
        sys.exit(1)
    _, records, checkpoints = result
    print(json.dumps({"ok": True, "records": records, "checkpoints": checkpoints}))


if __name__ == "__main__":
    main()
