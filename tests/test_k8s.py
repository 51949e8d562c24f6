"""deploy/k8s: valid Kubernetes objects (the API's own schemas, via kubernetes-validate, offline),
and the things that matter when they run: the worker outlives its longest step without a
heartbeat, every secret the config names reaches the process that reads it, and the probes and
ports are the ones the processes really open."""

from __future__ import annotations

import ast
import importlib
import re
from datetime import timedelta
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from activities.common import ConfigSource
from starter.cli import app
from starter.webhook import create_app
from tests.conftest import ROOT
from workflows.config import RollbackConfig, load_config

K8S = ROOT / "deploy" / "k8s"
SECRET_EXAMPLE = K8S / "secret-example" / "rollback-secrets.yaml"
# The oldest Kubernetes minor still in common support and the newest the validator knows.
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def applied() -> list[dict]:
    """What `kubectl apply -k deploy/k8s` creates."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in documents(K8S / name)]


def find(kind: str, name: str) -> dict:
    [found] = [d for d in applied() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(deployment: str) -> dict:
    [only] = find("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return only


def cli_options(args: list[str]) -> dict:
    """The options the container's arguments give the real `rollback` command."""
    command = app.commands[args[0]]
    return command.make_context(args[0], list(args[1:])).params


def configmap_config(tmp_path: Path) -> RollbackConfig:
    path = tmp_path / "rollback.yaml"
    path.write_text(find("ConfigMap", "rollback-config")["data"]["rollback.yaml"])
    return load_config(path, require_services=True)


def secret_refs(spec: dict) -> dict[str, dict]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in spec.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def port_named(spec: dict, name: str) -> int:
    [port] = [p["containerPort"] for p in spec["ports"] if p["name"] == name]
    return port


# ---------------------------------------------------------------------------------------------
# Schema


def test_the_kustomization_applies_every_manifest_in_the_folder():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                       if p.name != "kustomization.yaml")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in applied()}
    assert {("Deployment", "rollback-worker"), ("Deployment", "rollback-receiver"), ("Service", "rollback-receiver"),
            ("ConfigMap", "rollback-config"), ("PodDisruptionBudget", "rollback-worker"),
            ("PodDisruptionBudget", "rollback-receiver")} <= kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_a_valid_kubernetes_object(version):
    for doc in [*applied(), *documents(SECRET_EXAMPLE)]:
        kubernetes_validate.validate(doc, version, strict=True)  # raises, naming the field, when wrong


def test_the_validator_refuses_a_misspelt_field():
    """So a pass above means something: strict validation rejects what Kubernetes would ignore."""
    worker = find("Deployment", "rollback-worker")
    pod = worker["spec"]["template"]["spec"]
    pod["terminationGracePeriodSecond"] = pod.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, VERSIONS[-1], strict=True)


# ---------------------------------------------------------------------------------------------
# Graceful termination


ACTIVITY_CALLS = {"execute_activity", "execute_activity_method", "execute_local_activity", "start_activity",
                  "start_activity_method"}
UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}


class Unreadable(Exception):
    pass


def _as_seconds(value) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise Unreadable(repr(value))


def _upper_bound(node: ast.AST, module, tree: ast.Module, function: ast.FunctionDef | None,
                 config: RollbackConfig) -> float:
    """The largest number of seconds `node` can be: literals, module constants (a dict indexed by
    a run-time key: its largest value), a function parameter (its default and every value a call
    in the module passes), and the config's statement_timeout."""
    def bound(n: ast.AST) -> float:
        return _upper_bound(n, module, tree, function, config)

    if isinstance(node, ast.Constant):
        return _as_seconds(node.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "timedelta":
        return sum(UNITS[k.arg] * bound(k.value) for k in node.keywords)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = bound(node.left), bound(node.right)
        return left + right if isinstance(node.op, ast.Add) else left * right
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        table = getattr(module, node.value.id)
        return max(_as_seconds(v) for v in table.values())
    if isinstance(node, ast.Attribute) and node.attr == "statement_timeout":
        return max(s.database.statement_timeout.total_seconds() for s in config.services.values() if s.database)
    if isinstance(node, ast.Name):
        arguments = function.args.args + function.args.kwonlyargs if function else []
        if node.id in {a.arg for a in arguments}:
            return _parameter_bound(node.id, module, tree, function, config)
        if hasattr(module, node.id):
            return _as_seconds(getattr(module, node.id))
    raise Unreadable(ast.unparse(node))


def _parameter_bound(name: str, module, tree: ast.Module, function: ast.FunctionDef, config) -> float:
    values: list[float] = []
    args = function.args
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        if arg.arg == name and default is not None:
            values.append(_upper_bound(default, module, tree, None, config))
    positional = args.args[len(args.args) - len(args.defaults):]
    for arg, default in zip(positional, args.defaults):
        if arg.arg == name:
            values.append(_upper_bound(default, module, tree, None, config))
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == function.name:
            caller = _enclosing(tree, call)
            values += [_upper_bound(k.value, module, tree, caller, config) for k in call.keywords if k.arg == name]
    return max(values)


def _enclosing(tree: ast.Module, target: ast.AST) -> ast.FunctionDef | None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(n is target for n in ast.walk(node)):
            inner = [f for f in ast.walk(node) if f is not node and isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and any(n is target for n in ast.walk(f))]
            if not inner:
                return node
    return None


def _heartbeats(value: ast.AST) -> bool:
    """A heartbeat timeout that is always set (`x if cond else None` may not be)."""
    if isinstance(value, ast.Constant) and value.value is None:
        return False
    if isinstance(value, ast.IfExp):
        return _heartbeats(value.body) and _heartbeats(value.orelse)
    return True


def steps_without_heartbeat(config: RollbackConfig) -> list[tuple[float, str]]:
    """(start-to-close bound in seconds, activity) of every activity the workflows run without a
    heartbeat timeout, read from the workflow code."""
    found = []
    for path in sorted((ROOT / "workflows").glob("*.py")):
        tree = ast.parse(path.read_text())
        module = importlib.import_module(f"workflows.{path.stem}")
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr in ACTIVITY_CALLS):
                continue
            function = _enclosing(tree, call)
            options = {k.arg: k.value for k in call.keywords if k.arg}
            for splat in (k.value for k in call.keywords if k.arg is None):
                options.update({key: ast.Constant(value) for key, value in getattr(module, splat.id).items()})
            if "heartbeat_timeout" in options and _heartbeats(options["heartbeat_timeout"]):
                continue
            name = ast.unparse(call.args[0]) if call.args else "?"
            where = f"{path.name}:{call.lineno} {name.strip(chr(39) + chr(34))}"
            timeout = options.get("start_to_close_timeout") or options.get("schedule_to_close_timeout")
            assert timeout is not None, f"{where}: no timeout at all"
            try:
                found.append((_upper_bound(timeout, module, tree, function, config), where))
            except (Unreadable, AttributeError) as exc:
                pytest.fail(f"{where}: cannot bound the timeout {ast.unparse(timeout)} ({exc}); teach "
                            "tests/test_k8s.py to read it, then check deploy/k8s/worker.yaml's grace period")
    return found


def test_the_worker_drains_longer_than_its_longest_step_without_heartbeat(tmp_path):
    steps = steps_without_heartbeat(configmap_config(tmp_path))
    longest = max(seconds for seconds, _ in steps)
    assert longest >= 1800, steps  # the scan found the 30-minute row export / re-import steps
    spec = find("Deployment", "rollback-worker")["spec"]["template"]["spec"]
    grace = cli_options(container("rollback-worker")["args"])["shutdown_grace"]
    assert grace >= longest, f"--shutdown-grace {grace} cuts short a step of {longest:.0f} s: {steps}"
    assert spec["terminationGracePeriodSeconds"] > grace  # Kubernetes SIGKILLs only after the drain
    text = (K8S / "worker.yaml").read_text()
    for seconds, where in steps:
        if seconds == longest:
            assert where.split()[-1] in text, f"worker.yaml's comment should name {where}"


def test_docker_compose_gives_the_worker_the_same_drain():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]
    grace = cli_options(compose["command"])["shutdown_grace"]
    minutes = re.fullmatch(r"(\d+)m", compose["stop_grace_period"])
    assert minutes and int(minutes[1]) * 60 > grace >= cli_options(container("rollback-worker")["args"])[
        "shutdown_grace"]


# ---------------------------------------------------------------------------------------------
# Secrets


def test_every_secret_the_config_names_reaches_the_process_that_reads_it(tmp_path):
    config = configmap_config(tmp_path)
    worker, receiver = secret_refs(container("rollback-worker")), secret_refs(container("rollback-receiver"))
    for name, service in config.services.items():
        for variable in service.secret_env_names():
            assert variable in worker, f"service {name}: the worker needs {variable} (secretKeyRef in worker.yaml)"
    receiver_needs = [getattr(source, field) for source in config.webhooks.sources.values()
                      for field in ("bearer_env", "basic_env", "secret_env") if getattr(source, field)]
    receiver_needs += [config.slack.signing_secret_env] if config.slack else []
    receiver_needs += [config.flags.token_env] if config.flags.token_env else []
    assert receiver_needs, "the example config should show the receiver's secrets too"
    for variable in receiver_needs:
        assert variable in receiver, f"the receiver needs {variable} (secretKeyRef in receiver.yaml)"


def test_every_secret_reference_is_in_the_example_secret_or_documented():
    [secret] = documents(SECRET_EXAMPLE)
    readme = (ROOT / "README.md").read_text()
    for deployment in ("rollback-worker", "rollback-receiver"):
        for variable, ref in secret_refs(container(deployment)).items():
            if ref.get("optional"):
                assert ref["key"] in readme, f"{deployment}: optional secret key {ref['key']} is not in the README"
                continue
            assert ref["name"] == secret["metadata"]["name"], f"{deployment}: {variable} from unknown {ref['name']}"
            assert ref["key"] in secret["stringData"], f"{deployment}: key {ref['key']} missing from the example"
    used = {ref["key"] for d in ("rollback-worker", "rollback-receiver") for ref in secret_refs(container(d)).values()}
    assert set(secret["stringData"]) <= used  # nothing in the example that no pod reads


# ---------------------------------------------------------------------------------------------
# Probes, ports, selectors


def test_worker_probes_hit_the_metrics_port_the_worker_opens():
    spec = container("rollback-worker")
    options = cli_options(spec["args"])
    assert options["metrics_host"] == "0.0.0.0"  # the kubelet and Prometheus come from outside the pod
    assert port_named(spec, "metrics") == options["metrics_port"]
    for probe in ("livenessProbe", "readinessProbe"):
        # /metrics is what the SDK serves there (tests/e2e/test_observability.py scrapes it)
        assert spec[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    annotations = find("Deployment", "rollback-worker")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(options["metrics_port"])


def test_receiver_probes_and_service_hit_routes_and_the_port_it_opens(tmp_path):
    spec = container("rollback-receiver")
    options = cli_options(spec["args"])
    assert options["host"] == "0.0.0.0" and port_named(spec, "http") == options["port"]
    path = tmp_path / "rollback.yaml"
    path.write_text(find("ConfigMap", "rollback-config")["data"]["rollback.yaml"])
    routes = {route.path for route in create_app(None, ConfigSource(path), "rollback").routes}
    for probe in ("livenessProbe", "readinessProbe"):
        assert spec[probe]["httpGet"]["port"] == "http" and spec[probe]["httpGet"]["path"] in routes
    assert "/metrics" in routes
    service = find("Service", "rollback-receiver")["spec"]
    assert [p["targetPort"] for p in service["ports"]] == ["http"]
    pod_labels = find("Deployment", "rollback-receiver")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()


def test_selectors_pick_their_own_pods_only():
    for name in ("rollback-worker", "rollback-receiver"):
        deployment = find("Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert find("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"] == selector
        others = [d for d in applied() if d["kind"] == "Deployment" and d["metadata"]["name"] != name]
        assert all(not selector.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in others)
        config = find("ConfigMap", "rollback-config")["metadata"]["name"]
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert {"name": config} in [v.get("configMap") for v in volumes]
        mounts = {m["mountPath"]: m["name"] for m in container(name)["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container(name)["env"]}
        assert Path(env["ROLLBACK_CONFIG"]).parent.as_posix() in mounts
