"""The Kubernetes manifests are well-formed and agree with the binaries they run.

No cluster runs here; this checks what can be checked without one: every document
parses, the autoscaler may do exactly what its backend does (create Deployments,
patch their scale), GPU workers request `nvidia.com/gpu`, and every environment
variable a manifest sets is one the binary's `--help` documents.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BIN = Path(os.environ.get("SWITCHYARD_BIN_DIR") or Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/switchyard/target")) / "debug")


def docs():
    return [d for d in yaml.safe_load_all((HERE / "switchyard.yaml").read_text()) if d]


def template(**values) -> dict:
    text = (HERE / "inference-deployment.json").read_text()
    for k, v in values.items():
        text = text.replace("{" + k + "}", v)
    return json.loads(text.replace('"{replicas}"', "1"))


def help_env(binary: str) -> set[str]:
    out = subprocess.run([str(BIN / binary), "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)=?", out))


def test_every_document_parses_and_names_its_kind():
    kinds = [d["kind"] for d in docs()]
    assert {"Namespace", "Role", "RoleBinding", "ServiceAccount", "Deployment", "Service"} <= set(kinds)
    for d in docs():
        assert d["metadata"]["name"]


def test_the_autoscaler_may_create_deployments_and_patch_their_scale_only():
    role = next(d for d in docs() if d["kind"] == "Role")
    rules = {(tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in role["rules"]}
    assert (("deployments",), ("create", "get", "list")) in rules
    assert (("deployments/scale",), ("get", "patch", "update")) in rules
    assert not any("delete" in r["verbs"] for r in role["rules"])
    autoscaler = next(d for d in docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "switchyard-autoscaler")
    assert autoscaler["spec"]["replicas"] == 1
    assert autoscaler["spec"]["template"]["spec"]["serviceAccountName"] == "switchyard-autoscaler"


def test_inference_workers_request_a_gpu_and_set_only_documented_variables():
    t = template(name="sy-x", namespace="switchyard", model="m/x", account="acme", image="img")
    container = t["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    names = {e["name"] for e in container["env"]}
    assert names <= help_env("switchyard-inference"), names - help_env("switchyard-inference")
    selector = t["spec"]["selector"]["matchLabels"].items()
    assert set(selector) <= set(t["spec"]["template"]["metadata"]["labels"].items())
    # Ready = /healthz (503 while loading or draining); alive = /livez, so a draining
    # worker is not restarted and a hung one is; a long start (a TensorRT engine
    # build) is allowed for.
    port = int(next(e["value"] for e in container["env"] if e["name"] == "INFERENCE_BIND").rsplit(":", 1)[1])
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
    assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": port}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_a_stuck_autoscaler_is_restarted():
    # Its /healthz turns 503 once no reconciliation finished for AUTOSCALER_STALL_AFTER_MS;
    # a liveness probe on it (not /livez, which only says the process serves HTTP)
    # restarts it.
    d = next(d for d in docs() if d.get("kind") == "Deployment"
             and d["metadata"]["name"] == "switchyard-autoscaler")
    container = d["spec"]["template"]["spec"]["containers"][0]
    port = int(next(e["value"] for e in container["env"] if e["name"] == "AUTOSCALER_BIND").rsplit(":", 1)[1])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}


def test_service_deployments_set_only_documented_variables():
    binaries = {"ingress": "switchyard-ingress", "translator": "switchyard-translator",
                "autoscaler": "switchyard-autoscaler", "batch": "switchyard-batch"}
    for d in docs():
        if d["kind"] != "Deployment":
            continue
        container = d["spec"]["template"]["spec"]["containers"][0]
        binary = binaries[container["name"]]
        assert container["args"] == [binary]
        names = {e["name"] for e in container.get("env", [])}
        documented = help_env(binary)
        assert names <= documented, f"{binary}: {names - documented}"


def test_the_nats_url_comes_from_a_secret_everywhere():
    # It carries the internal user's password: never a ConfigMap or a plain value.
    containers = [d["spec"]["template"]["spec"]["containers"][0] for d in docs() if d["kind"] == "Deployment"]
    containers.append(template(name="n", namespace="switchyard", model="m", account="a", image="i",
                               instance_type="cpu")["spec"]["template"]["spec"]["containers"][0])
    assert {c["name"] for c in containers} >= {"ingress", "translator", "autoscaler", "batch", "inference"}
    for c in containers:
        (nats,) = [e for e in c["env"] if e["name"] == "NATS_URL"]
        assert nats["valueFrom"] == {"secretKeyRef": {"name": "switchyard-nats", "key": "url"}}, c["name"]
    assert not [d for d in docs() if d["kind"] == "ConfigMap"]
