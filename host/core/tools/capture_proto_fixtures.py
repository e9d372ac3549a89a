#!/usr/bin/env python3
"""Capture the protobuf bodies real kubectl sends, as fixtures for skiff-core's decoder tests.

For each case, kubectl (v1.32) runs against a live cluster with -v=9, which hex-dumps every
binary request body; the first `k8s\\0` body is written to tests/fixtures/proto/<case>.pb. For
`create <generator>` cases the same command with `--dry-run=client -o json` prints the object
kubectl encoded, as Go's JSON marshaller renders it; that goes to <case>.json and is the oracle
the decoded body must equal.

Usage (against any skiff or Kubernetes cluster; it creates objects in namespace proto-fixtures):
    KUBECONFIG=/var/lib/skiff/kubeconfig.yaml python3 host/core/tools/capture_proto_fixtures.py
"""

import json
import os
import re
import subprocess
import sys

KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32"
NS = "proto-fixtures"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "proto")

# (case, kubectl arguments, whether `--dry-run=client -o json` gives an oracle)
CASES = [
    ("namespace", ["create", "namespace", NS], True),
    ("deployment", ["create", "deployment", "web", "--image=busybox:1.36", "--replicas=0",
                    "--port=8080", "-n", NS], True),
    ("deployment_two_images", ["create", "deployment", "pair", "--image=busybox",
                               "--image=registry.example/app:v2", "-n", NS], True),
    ("configmap", ["create", "configmap", "cfg", "--from-literal=a=1", "--from-literal=empty=",
                   "-n", NS], True),
    ("secret", ["create", "secret", "generic", "pw", "--from-literal=password=hunter2",
                "--type=Opaque", "-n", NS], True),
    ("secret_docker_registry", ["create", "secret", "docker-registry", "reg",
                                "--docker-server=registry.example", "--docker-username=u",
                                "--docker-password=p", "-n", NS], True),
    ("service_clusterip", ["create", "service", "clusterip", "web", "--tcp=80:8080", "-n", NS],
     True),
    ("service_nodeport", ["create", "service", "nodeport", "np", "--tcp=80:http",
                          "--node-port=30080", "-n", NS], True),
    ("job", ["create", "job", "pi", "--image=busybox", "-n", NS, "--", "echo", "3.14"], True),
    ("cronjob", ["create", "cronjob", "tick", "--image=busybox", "--schedule=*/1 * * * *",
                 "--restart=OnFailure", "-n", NS, "--", "date"], True),
    ("serviceaccount", ["create", "serviceaccount", "robot", "-n", NS], True),
    ("role", ["create", "role", "reader", "--verb=get,list", "--resource=pods,deployments.apps",
              "--resource-name=web", "-n", NS], True),
    ("rolebinding", ["create", "rolebinding", "read", "--role=reader", "--user=alice",
                     f"--serviceaccount={NS}:robot", "-n", NS], True),
    ("clusterrole", ["create", "clusterrole", "proto-fixtures-viewer", "--verb=get",
                     "--non-resource-url=/healthz", "--non-resource-url=/version"], True),
    ("clusterrolebinding", ["create", "clusterrolebinding", "proto-fixtures-view",
                            "--clusterrole=proto-fixtures-viewer", "--group=devs"], True),
    ("quota", ["create", "quota", "q", "--hard=cpu=1,memory=1Gi,pods=10",
               "--scopes=NotBestEffort", "-n", NS], True),
    ("priorityclass", ["create", "priorityclass", "proto-fixtures-zero", "--value=0",
                       "--description=nothing special"], True),
    ("pdb", ["create", "pdb", "web", "--selector=app=web", "--min-available=0", "-n", NS],
     True),
    ("pdb_percent", ["create", "pdb", "half", "--selector=app=web", "--max-unavailable=50%",
                     "-n", NS], True),
    ("can_i", ["auth", "can-i", "create", "deployments.apps", "-n", NS], False),
    ("can_i_subresource", ["auth", "can-i", "get", "pods", "--subresource=log", "-n", NS],
     False),
    ("can_i_list", ["auth", "can-i", "--list", "-n", NS], False),
    ("whoami", ["auth", "whoami"], False),
]

HEX_LINE = re.compile(r"^\s*[0-9a-f]{8}  ((?:[0-9a-f]{2} {1,2})+)", re.M)


def first_protobuf_body(log):
    for block in re.split(r'"Request Body" body=<', log)[1:]:
        block = block.split("\n >", 1)[0]
        data = bytes.fromhex("".join(m.group(1).replace(" ", "") for m in HEX_LINE.finditer(block)))
        if data.startswith(b"k8s\0"):
            return data
    return None


def with_flags(args, *flags):
    """`args` with `flags` before any `--` (after it they would be the container's command)."""
    cut = args.index("--") if "--" in args else len(args)
    return [*args[:cut], *flags, *args[cut:]]


def main():
    os.makedirs(OUT, exist_ok=True)
    failed = False
    for case, args, oracle in CASES:
        if oracle:
            dry = subprocess.run([KUBECTL, *with_flags(args, "--dry-run=client", "-o", "json")],
                                 capture_output=True, text=True)
            if dry.returncode != 0:
                print(f"{case}: dry run failed: {dry.stderr.strip()}", file=sys.stderr)
                failed = True
                continue
            with open(os.path.join(OUT, case + ".json"), "w", encoding="utf-8") as f:
                json.dump(json.loads(dry.stdout), f, indent=2)
                f.write("\n")
        run = subprocess.run([KUBECTL, *with_flags(args, "-v=9")], capture_output=True, text=True)
        body = first_protobuf_body(run.stderr)
        if body is None:
            print(f"{case}: no protobuf request body in kubectl's log", file=sys.stderr)
            failed = True
            continue
        with open(os.path.join(OUT, case + ".pb"), "wb") as f:
            f.write(body)
        print(f"{case}: {len(body)} bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
