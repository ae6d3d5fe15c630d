"""The Helm chart: rendered by Helm's own engine (helm-python-sdk), linted, checked against the
Kubernetes schemas and the KEDA / Prometheus Operator CRD schemas (tests/crds/), and read back to
check the shape the farm relies on. No cluster needed; what only a cluster can check is the
chart's `helm test` hooks (helm/README.md, "Smoke tests")."""

from __future__ import annotations

import json
import py_compile
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from farm import keys
from workers import liveness
from workers.routing import ALL_QUEUES

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "manim-render-farm"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
KUBE_VERSION = "1.37.0"
RELEASE, NAMESPACE = "farm", "farm"
FULL = f"{RELEASE}-manim-render-farm"

# Custom resources: no schema in kubernetes-validate; checked against the vendored CRDs instead.
CRD_DIR = REPO / "tests" / "crds"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
RENDER_QUEUES = ["render.low", "render.medium", "render.high", "render.twok", "render.fourk"]
DEFAULT_POOLS = {
    "render-low": ["render.low"],
    "render-medium": ["render.medium"],
    "render-high": ["render.high"],
    "render-twok": ["render.twok"],
    "render-fourk": ["render.fourk"],
    "stitch": ["stitch"],
    "webhooks": ["webhooks"],
}
# The smallest install on the production path: credentials in a Secret, an S3 endpoint, and
# where the backing services live (render pods may reach nothing else).
EXTERNAL = {
    "secrets": {"existingSecret": "farm-credentials"},
    "config": {"s3Endpoint": "s3.example.com:443"},
    "networkPolicy": {
        "postgres": {"to": [{"ipBlock": {"cidr": "10.20.0.10/32"}}]},
        "redis": {"to": [{"ipBlock": {"cidr": "10.20.0.11/32"}}]},
        "s3": {"to": [{"ipBlock": {"cidr": "52.219.0.0/16"}}]},
    },
}


def load_values(path: Path) -> dict[str, Any]:
    """Parse a values file the way `helm -f` does."""
    return helm.values_from_yaml(path.read_text())


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge value layers, later ones winning (like repeated `-f`)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


OWN_SECRET = merge(
    {k: v for k, v in EXTERNAL.items() if k != "secrets"},
    {
        "secrets": {
            "databaseUrl": "postgresql://farm:pw@db.farm.svc:5432/farm",
            "redisUrl": "rediss://:redis-pw@redis.farm.svc:6380/3",
            "s3AccessKey": "ak",
            "s3SecretKey": "sk",
        }
    },
)


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Render like `helm install` would and return every manifest as a dict (NOTES.txt excluded)."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Worker Deployments keyed by pool name."""
    return {
        d["metadata"]["labels"]["manim-render-farm/pool"]: d
        for d in of_kind(objects, "Deployment").values()
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    }


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (only,) = containers
    return only


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(deployment).get("env", [])}


# --- every configuration renders, lints and validates -------------------------------------

CONFIGS = {"defaults+credentials": EXTERNAL} | {p.stem: None for p in CI_VALUES}


def config_values(name: str) -> dict[str, Any]:
    return (
        EXTERNAL if name == "defaults+credentials" else load_values(CHART / "ci" / f"{name}.yaml")
    )


def test_ci_value_files_cover_the_documented_cases() -> None:
    assert {p.stem for p in CI_VALUES} >= {
        "keda-on",
        "keda-off-hpa",
        "gpu-off",
        "cpu-opengl",
        "external-services",
        "ingress-on",
        "evaluation-keda",
        "evaluation-values",
    }


def test_ci_files_are_installable_or_labelled_render_only(chart: helm.Chart) -> None:
    # chart-testing installs only ci/*-values.yaml: those must need nothing outside the release
    # (no Secret, service, CRD or GPU node of ours); every other file says it is render-only.
    installable = [p for p in CI_VALUES if p.name.endswith("-values.yaml")]
    assert installable
    for path in installable:
        values = load_values(path)
        assert values.get("evaluation", {}).get("enabled") is True, path.name
        assert not values.get("secrets", {}).get("existingSecret"), path.name
        objects = render(chart, values)
        assert not {o["kind"] for o in objects} & CRD_KINDS, path.name
        for deploy in workers(objects).values():
            assert "nvidia.com/gpu" not in container(deploy)["resources"]["limits"], path.name
            assert "nodeSelector" not in deploy["spec"]["template"]["spec"], path.name
    for path in set(CI_VALUES) - set(installable):
        assert path.read_text().startswith("# Render-only:"), path.name
    readme = (REPO / "helm" / "README.md").read_text()
    assert "render-only" in readme.lower() and "evaluation-values.yaml" in readme


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_chart_lints_clean(name: str) -> None:
    report = helm.lint(
        CHART,
        config_values(name),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def _strict(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields refused (`kubectl --validate=strict`)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, from the vendored CRDs."""
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_manifest_validates_against_kubernetes_and_crd_schemas(
    chart: helm.Chart, name: str, crd_schemas: dict[tuple[str, str], dict[str, Any]]
) -> None:
    objects = render(chart, config_values(name))
    assert objects
    for obj in objects:
        what = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in CRD_KINDS:
            schema = crd_schemas[(obj["apiVersion"], obj["kind"])]
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=str)
            assert not errors, f"{what}: {errors[0].json_path}: {errors[0].message}"
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{what}: {where}: {e.message}")


def test_crd_validation_catches_a_bad_custom_resource(
    crd_schemas: dict[tuple[str, str], dict[str, Any]],
) -> None:
    # The CRD check can fail: a trigger without its type, and an unknown field.
    schema = crd_schemas[("keda.sh/v1alpha1", "ScaledObject")]
    bad = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"metadata": {}}], "typo": 1},
    }
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(bad)]
    assert any("'type' is a required property" in m for m in messages), messages
    assert any("typo" in m for m in messages), messages


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_container_is_hardened_and_bounded(chart: helm.Chart, name: str) -> None:
    for obj in render(chart, config_values(name)):
        if obj["kind"] not in {"Deployment", "StatefulSet", "Job", "Pod"}:
            continue
        pod = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, obj["metadata"]["name"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            sec = c["securityContext"]
            assert sec["allowPrivilegeEscalation"] is False
            assert sec["readOnlyRootFilesystem"] is True
            assert sec["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"], (
                obj["metadata"]["name"],
                c["name"],
            )
            if "/tmp" not in {m["mountPath"] for m in c.get("volumeMounts", [])}:
                assert c["name"] == "wait-for-postgres"  # runs one tool, writes nothing


# --- bare defaults ---------------------------------------------------------------------------


def test_bare_defaults_refuse_to_install_without_credentials(chart: helm.Chart) -> None:
    # Given the chart's defaults only (production path, nothing configured)
    # When it renders, Then it fails naming what to set instead of starting pods that crash.
    with pytest.raises(helm.HelmRenderError) as err:
        chart.render(None, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert "config.s3Endpoint" in str(err.value) or "secrets.existingSecret" in str(err.value)


def test_bare_defaults_lint_clean() -> None:
    report = helm.lint(CHART, None, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert not [m for m in report["messages"] if m["severity"] >= 2], report


def test_missing_credentials_are_named(chart: helm.Chart) -> None:
    values = {
        "config": {"s3Endpoint": "s3:443"},
        "secrets": {"databaseUrl": "postgresql://u:p@db/farm"},
    }
    with pytest.raises(helm.HelmRenderError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert "secrets.redisUrl" in str(err.value) and "secrets.s3SecretKey" in str(err.value)
    assert "secrets.databaseUrl" not in str(err.value)


# --- worker pools ----------------------------------------------------------------------------


def test_one_worker_deployment_per_pool_with_its_queues(chart: helm.Chart) -> None:
    pools = workers(render(chart, EXTERNAL))
    assert set(pools) == set(DEFAULT_POOLS)
    for pool, queues in DEFAULT_POOLS.items():
        deploy = pools[pool]
        assert deploy["metadata"]["name"] == f"{FULL}-worker-{pool}"
        args = container(deploy)["args"]
        assert args[0] == "worker"
        assert arg_after(args, "--queues").split(",") == queues
        assert int(arg_after(args, "--concurrency")) >= 1
        assert container(deploy)["ports"] == [
            {"name": "metrics", "containerPort": 9101, "protocol": "TCP"}
        ]
    # Every queue of the contract has a consumer.
    consumed = {
        q for d in pools.values() for q in arg_after(container(d)["args"], "--queues").split(",")
    }
    assert consumed == {*RENDER_QUEUES, "stitch", "webhooks"}


def test_fourk_pool_renders_opengl_on_a_gpu(chart: helm.Chart) -> None:
    fourk = workers(render(chart, EXTERNAL))["render-fourk"]
    c = container(fourk)
    assert arg_after(c["args"], "--queues") == "render.fourk"
    assert arg_after(c["args"], "--renderer") == "opengl"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert "graphics" in env(fourk)["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert c["image"].startswith("manim-render-farm/worker-gpu:")
    pod = fourk["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


def test_cpu_pools_use_cairo_and_no_gpu(chart: helm.Chart) -> None:
    for pool, deploy in workers(render(chart, EXTERNAL)).items():
        if pool == "render-fourk":
            continue
        c = container(deploy)
        assert arg_after(c["args"], "--renderer") == "cairo"
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert c["image"].startswith("manim-render-farm/worker:")
        assert "NVIDIA_DRIVER_CAPABILITIES" not in env(deploy)


def test_gpu_off_runs_fourk_on_cpu(chart: helm.Chart) -> None:
    pools = workers(render(chart, merge(EXTERNAL, load_values(CHART / "ci" / "gpu-off.yaml"))))
    fourk = pools["render-fourk"]
    c = container(fourk)
    assert arg_after(c["args"], "--renderer") == "cairo"
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "nodeSelector" not in fourk["spec"]["template"]["spec"]
    assert "tolerations" not in fourk["spec"]["template"]["spec"]


def test_a_new_pool_merges_over_worker_defaults(chart: helm.Chart) -> None:
    values = merge(
        EXTERNAL,
        {
            "workers": {
                "render-burst": {"queues": ["render.low", "render.medium"], "sandbox": False}
            }
        },
    )
    burst = workers(render(chart, values))["render-burst"]
    assert arg_after(container(burst)["args"], "--queues") == "render.low,render.medium"
    assert arg_after(container(burst)["args"], "--concurrency") == "2"  # workerDefaults
    # sandbox: false wins over the default true (a plain mergeOverwrite would drop it).
    assert "hostUsers" not in burst["spec"]["template"]["spec"]
    assert burst["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }


def test_disabled_pool_is_not_rendered(chart: helm.Chart) -> None:
    values = merge(
        EXTERNAL,
        {
            "workers": {
                "render-twok": {"enabled": False},
                "render-high": {"queues": ["render.high", "render.twok"]},
            }
        },
    )
    assert "render-twok" not in workers(render(chart, values))


# --- sandbox and hardening -------------------------------------------------------------------


def test_render_pools_get_the_sandbox_settings(chart: helm.Chart) -> None:
    for pool, deploy in workers(render(chart, EXTERNAL)).items():
        pod = deploy["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["terminationGracePeriodSeconds"] >= 60
        if pool.startswith("render-"):
            assert pod["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
            assert pod["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}
            assert pod["terminationGracePeriodSeconds"] >= 600  # a chunk in flight may finish
        if pool.startswith("render-") and pool != "render-fourk":
            assert pod["hostUsers"] is False
            assert container(deploy)["securityContext"]["procMount"] == "Unmasked"
            assert "runtimeClassName" not in pod
        elif not pool.startswith("render-"):
            assert "hostUsers" not in pod
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "procMount" not in container(deploy)["securityContext"]


def test_gvisor_option(chart: helm.Chart) -> None:
    values = merge(
        EXTERNAL,
        {"workerSandbox": {"runtimeClassName": "gvisor", "hostUsers": None, "procMount": ""}},
    )
    pod = workers(render(chart, values))["render-low"]["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "gvisor"
    assert "hostUsers" not in pod


def test_api_and_scheduler_run_runtime_default_seccomp_and_probes(chart: helm.Chart) -> None:
    deployments = of_kind(render(chart, EXTERNAL), "Deployment")
    api, scheduler = deployments[f"{FULL}-api"], deployments[f"{FULL}-scheduler"]
    for d in (api, scheduler):
        assert d["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {
            "type": "RuntimeDefault"
        }
    c = container(api)
    assert c["args"][:3] == ["api", "--bind", "0.0.0.0:8000"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8000}
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}
    assert container(scheduler)["args"] == ["scheduler"]
    assert container(scheduler)["ports"][0] == {
        "name": "metrics",
        "containerPort": 9102,
        "protocol": "TCP",
    }


def test_metrics_ports_are_named_metrics(chart: helm.Chart) -> None:
    services = of_kind(render(chart, EXTERNAL), "Service")
    api_ports = {p["name"]: p for p in services[f"{FULL}-api"]["spec"]["ports"]}
    assert api_ports["metrics"]["port"] == 8000
    assert services[f"{FULL}-metrics"]["spec"]["ports"][0]["name"] == "metrics"
    assert services[f"{FULL}-metrics"]["spec"]["ports"][0]["targetPort"] == "metrics"


def test_network_policies(chart: helm.Chart) -> None:
    policies = of_kind(
        render(chart, load_values(CHART / "ci" / "external-services.yaml")), "NetworkPolicy"
    )
    render_low = policies[f"{FULL}-worker-render-low"]["spec"]
    assert set(render_low["policyTypes"]) == {"Ingress", "Egress"}
    ports = sorted(p["port"] for rule in render_low["egress"] for p in rule["ports"])
    assert ports == [53, 53, 443, 5432, 6379]
    # Every render egress rule is pinned to a destination: no internet, no rest of the cluster.
    for rule in render_low["egress"]:
        assert rule.get("to"), rule
        assert all(peer.get("ipBlock", {}).get("cidr") != "0.0.0.0/0" for peer in rule["to"])
    webhooks = policies[f"{FULL}-worker-webhooks"]["spec"]
    internet = [
        r
        for r in webhooks["egress"]
        if any(p.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for p in r.get("to", []))
    ]
    assert len(internet) == 1 and internet[0]["ports"] == [{"protocol": "TCP", "port": 443}]
    assert "169.254.0.0/16" in internet[0]["to"][0]["ipBlock"]["except"]
    assert {f"{FULL}-api", f"{FULL}-scheduler"} <= set(policies)


def test_pod_disruption_budgets(chart: helm.Chart) -> None:
    pdbs = of_kind(render(chart, EXTERNAL), "PodDisruptionBudget")
    expected = {f"{FULL}-api", f"{FULL}-scheduler"} | {f"{FULL}-worker-{p}" for p in DEFAULT_POOLS}
    assert set(pdbs) == expected


# --- settings, secrets, migrations -----------------------------------------------------------


def test_config_and_secret_split(chart: helm.Chart) -> None:
    values = load_values(CHART / "ci" / "external-services.yaml")
    objects = render(chart, values)
    config = of_kind(objects, "ConfigMap")[f"{FULL}-config"]["data"]
    secret = of_kind(objects, "Secret")[f"{FULL}-credentials"]["stringData"]
    credentials = {
        "FARM_DATABASE_URL",
        "FARM_REDIS_URL",
        "FARM_S3_ACCESS_KEY",
        "FARM_S3_SECRET_KEY",
    }
    assert set(secret) == credentials
    assert not credentials & set(config)
    assert all(k.startswith("FARM_") for k in config)
    assert (
        config["FARM_WORKER_METRICS_PORT"] == "9101"
        and config["FARM_SCHEDULER_METRICS_PORT"] == "9102"
    )
    for deploy in of_kind(objects, "Deployment").values():
        env_from = container(deploy)["envFrom"]
        assert {"secretRef": {"name": f"{FULL}-credentials"}} in env_from
        assert {"configMapRef": {"name": f"{FULL}-config"}} in env_from


def test_existing_secret_is_referenced_not_created(chart: helm.Chart) -> None:
    objects = render(chart, EXTERNAL)
    assert not of_kind(objects, "Secret")
    for deploy in of_kind(objects, "Deployment").values():
        assert {"secretRef": {"name": "farm-credentials"}} in container(deploy)["envFrom"]
    job = of_kind(objects, "Job")[f"{FULL}-migrate"]
    assert {"secretRef": {"name": "farm-credentials"}} in container(job)["envFrom"]


def test_checksums_roll_pods_when_config_changes(chart: helm.Chart) -> None:
    def sums(values: dict[str, Any]) -> dict[str, dict[str, str]]:
        return {
            name: d["spec"]["template"]["metadata"]["annotations"]
            for name, d in of_kind(render(chart, values), "Deployment").items()
        }

    base = sums(EXTERNAL)
    assert all(set(a) >= {"checksum/config", "checksum/secret"} for a in base.values())
    changed = sums(merge(EXTERNAL, {"config": {"logLevel": "DEBUG"}}))
    for name in base:
        assert base[name]["checksum/config"] != changed[name]["checksum/config"]
        assert base[name]["checksum/secret"] == changed[name]["checksum/secret"]
    rotated = sums(merge(EXTERNAL, {"secrets": {"existingSecret": "farm-credentials-v2"}}))
    assert all(base[n]["checksum/secret"] != rotated[n]["checksum/secret"] for n in base)


def test_migrations_run_as_a_pre_install_pre_upgrade_hook(chart: helm.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "external-services.yaml"))
    job = of_kind(objects, "Job")[f"{FULL}-migrate"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert container(job)["args"] == ["migrate"]
    # Its settings exist before the release's own ConfigMap/Secret: hook copies with a lower weight.
    for kind in ("ConfigMap", "Secret"):
        copy = next(
            o
            for o in of_kind(objects, kind).values()
            if o["metadata"]["name"].startswith(f"{FULL}-migrate")
        )
        assert copy["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert int(copy["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            job["metadata"]["annotations"]["helm.sh/hook-weight"]
        )
    config = of_kind(objects, "ConfigMap")
    assert config[f"{FULL}-migrate-config"]["data"] == config[f"{FULL}-config"]["data"]


# --- autoscaling -----------------------------------------------------------------------------


def test_keda_scaled_object_per_pool_on_its_own_work(chart: helm.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "keda-on.yaml"))
    scaled = of_kind(objects, "ScaledObject")
    pools = workers(objects)
    assert set(scaled) == {f"{FULL}-worker-{p}" for p in pools}
    for pool, deploy in pools.items():
        so = scaled[f"{FULL}-worker-{pool}"]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert so["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
        assert 0 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        # KEDA owns the replica count: the Deployment must not fight it on upgrade.
        assert "replicas" not in deploy["spec"]
    assert scaled[f"{FULL}-worker-render-fourk"]["spec"]["minReplicaCount"] == 0
    assert scaled[f"{FULL}-worker-render-low"]["spec"]["minReplicaCount"] >= 1
    assert not of_kind(objects, "HorizontalPodAutoscaler")


def _triggers(so: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [t for t in so["spec"]["triggers"] if t["type"] == kind]


def test_every_keda_trigger_measures_running_work(chart: helm.Chart) -> None:
    # Celery's Redis list holds only messages no worker has taken: with acks_late and prefetch 1
    # a running chunk is in kombu's unacked hash. Scaling on the list scales a busy pool in
    # under its running chunks, so pools on steps-backed queues scale on the steps table.
    objects = render(chart, load_values(CHART / "ci" / "keda-on.yaml"))
    scaled = of_kind(objects, "ScaledObject")
    for pool, deploy in workers(objects).items():
        so = scaled[f"{FULL}-worker-{pool}"]
        queues = arg_after(container(deploy)["args"], "--queues").split(",")
        steps_backed = [q for q in queues if q != "webhooks"]
        redis_lists = [t["metadata"]["listName"] for t in _triggers(so, "redis")]
        assert not set(redis_lists) & set(steps_backed), (pool, redis_lists)
        if steps_backed:
            (pg,) = _triggers(so, "postgresql")
            query = pg["metadata"]["query"]
            assert "s.status = 'pending'" in query and "s.status = 'running'" in query
            assert "s.lease_until > now()" in query  # a lost worker's step is not running work
            concurrency = int(arg_after(container(deploy)["args"], "--concurrency"))
            expected = 8 if pool == "render-low" else concurrency  # keda-on.yaml sets 8
            assert pg["metadata"]["targetQueryValue"] == str(expected)
            assert pg["authenticationRef"] == {"name": f"{FULL}-keda-postgres"}
    auth = of_kind(objects, "TriggerAuthentication")[f"{FULL}-keda-postgres"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "connection", "name": "farm-credentials", "key": "FARM_DATABASE_URL"}
    ]


def test_keda_redis_settings_come_from_the_farm_redis_url(chart: helm.Chart) -> None:
    values = merge(OWN_SECRET, {"autoscaling": {"keda": {"enabled": True}}})
    objects = render(chart, values)
    so = of_kind(objects, "ScaledObject")[f"{FULL}-worker-webhooks"]
    (trigger,) = _triggers(so, "redis")
    # rediss://:redis-pw@redis.farm.svc:6380/3
    assert trigger["metadata"]["address"] == "redis.farm.svc:6380"
    assert trigger["metadata"]["databaseIndex"] == "3"
    assert trigger["metadata"]["enableTLS"] == "true"
    assert trigger["metadata"]["listName"] == "webhooks"
    secret = of_kind(objects, "Secret")[f"{FULL}-keda-redis"]
    assert secret["stringData"] == {"password": "redis-pw"}
    auth = of_kind(objects, "TriggerAuthentication")[f"{FULL}-keda-redis"]
    assert auth["spec"]["secretTargetRef"][0]["name"] == f"{FULL}-keda-redis"
    # A contradicting explicit setting is refused rather than silently split-brained.
    bad = merge(values, {"autoscaling": {"keda": {"redis": {"databaseIndex": 0}}}})
    with pytest.raises(helm.HelmRenderError, match="databaseIndex"):
        render(chart, bad)


def test_keda_with_an_existing_secret_needs_the_redis_address(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"autoscaling\.keda\.redis\.address"):
        render(chart, merge(EXTERNAL, {"autoscaling": {"keda": {"enabled": True}}}))


def test_keda_steps_query_runs_on_the_migrated_schema(chart: helm.Chart, pool: Any) -> None:
    # The exact SQL of the chart's triggers, against the real schema: a migration that renames
    # what it reads breaks this test, not the autoscaler in production.
    objects = render(chart, merge(OWN_SECRET, {"autoscaling": {"keda": {"enabled": True}}}))
    scaled = of_kind(objects, "ScaledObject")
    query = {
        pool_name: _triggers(scaled[f"{FULL}-worker-{pool_name}"], "postgresql")[0]["metadata"][
            "query"
        ]
        for pool_name in ("render-low", "render-medium", "stitch")
    }
    with pool.connection() as conn:
        # Everything below is rolled back at the end.
        api_key = keys.create_key(conn, "keda-query").api_key

        def job(job_id: str, quality: str, status: str, held: int | None = None) -> None:
            conn.execute(
                "INSERT INTO jobs (id, key_id, user_id, status, code, class_name, quality,"
                " aspect_ratio, fps, width, height, cache_key, held_limit) VALUES (%s, %s, %s,"
                " %s, '', 'S', %s, '16:9', 15, 854, 480, %s, %s)",
                (job_id, api_key.id, api_key.user_id, status, quality, job_id, held),
            )

        def step(
            job_id: str,
            kind: str,
            idx: int,
            status: str,
            lease: str | None = None,
            published: bool = True,
        ) -> None:
            conn.execute(
                "INSERT INTO steps (job_id, kind, idx, status, lease_until, published_at) VALUES"
                " (%s, %s, %s, %s, now() + %s::interval, CASE WHEN %s THEN now() END)",
                (job_id, kind, idx, status, lease, published),
            )

        # Given low work queued (a plan), running (a chunk under a live lease), lost (expired
        # lease: the reaper re-queues it), done, and work of ended jobs
        job("keda-low-1", "low", "queued")
        step("keda-low-1", "plan", 0, "pending")
        job("keda-low-2", "low", "running")
        step("keda-low-2", "plan", 0, "done")
        step("keda-low-2", "chunk", 0, "running", "30 seconds")
        step("keda-low-2", "chunk", 1, "running", "-30 seconds")
        step("keda-low-2", "chunk", 2, "done")
        step("keda-low-2", "chunk", 3, "pending")
        step("keda-low-2", "stitch", 0, "pending")
        job("keda-low-3", "low", "failed")
        step("keda-low-3", "chunk", 0, "pending")
        # A step waiting to be published (a dispatcher's outbox) is queued work too.
        job("keda-low-4", "low", "queued")
        step("keda-low-4", "plan", 0, "pending", published=False)
        # A job held over its user's limit is not work any pool can take yet.
        job("keda-low-5", "low", "queued", held=1)
        step("keda-low-5", "plan", 0, "pending", published=False)
        job("keda-medium-1", "medium", "running")
        step("keda-medium-1", "chunk", 0, "running", "30 seconds")
        counts = {name: conn.execute(sql).fetchone() for name, sql in query.items()}
        conn.rollback()
    # Then each pool sees its queued + running steps, as one integer
    assert {name: list(row.values()) for name, row in counts.items()} == {
        "render-low": [4],  # pending plans (published or not), live chunk, pending chunk
        "render-medium": [1],
        "stitch": [1],
    }


def test_hpa_without_keda(chart: helm.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "keda-off-hpa.yaml"))
    assert not of_kind(objects, "ScaledObject")
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    assert {f"{FULL}-worker-{p}" for p in DEFAULT_POOLS} <= set(hpas)
    for hpa in hpas.values():
        assert hpa["spec"]["minReplicas"] >= 1  # an HPA cannot scale to zero
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_keda_and_hpa_together_are_rejected(chart: helm.Chart) -> None:
    values = merge(
        load_values(CHART / "ci" / "keda-on.yaml"), {"autoscaling": {"hpa": {"enabled": True}}}
    )
    with pytest.raises(helm.HelmRenderError, match="exclusive"):
        render(chart, values)


# --- optional pieces -------------------------------------------------------------------------


def test_ingress_on(chart: helm.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "ingress-on.yaml"))
    (ingress,) = of_kind(objects, "Ingress").values()
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULL}-api", "port": {"name": "http"}}


def test_monitoring_objects(chart: helm.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "external-services.yaml"))
    (monitor,) = of_kind(objects, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        s
        for s in of_kind(objects, "Service").values()
        if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert {s["metadata"]["name"] for s in scraped} == {f"{FULL}-api", f"{FULL}-metrics"}

    (rule,) = of_kind(objects, "PrometheusRule").values()
    alerts = yaml.safe_load((CHART / "files" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]

    dashboard = next(
        c
        for c in of_kind(objects, "ConfigMap").values()
        if c["metadata"]["name"].endswith("-dashboard")
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["farm-dashboard.json"]) == json.loads(
        (CHART / "files" / "farm-dashboard.json").read_text()
    )


def test_monitoring_is_off_by_default(chart: helm.Chart) -> None:
    kinds = {o["kind"] for o in render(chart, EXTERNAL)}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize(
    ("chart_copy", "source"),
    [
        ("files/alerts.yml", "ops/prometheus/alerts.yml"),
        ("files/farm-dashboard.json", "ops/grafana/farm-dashboard.json"),
    ],
)
def test_chart_copies_match_ops_sources(chart_copy: str, source: str) -> None:
    # Helm cannot read outside the chart, so it carries copies; they must not drift.
    if not (REPO / source).exists():
        pytest.skip(f"{source} not written yet")
    assert (CHART / chart_copy).read_bytes() == (REPO / source).read_bytes(), (
        f"cp {source} helm/manim-render-farm/{chart_copy}"
    )


def test_evaluation_mode_runs_backing_services_in_cluster(chart: helm.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "evaluation-keda.yaml"))
    sets = of_kind(objects, "StatefulSet")
    assert set(sets) == {f"{FULL}-postgres", f"{FULL}-redis", f"{FULL}-minio"}
    secret = of_kind(objects, "Secret")[f"{FULL}-credentials"]["stringData"]
    # Fully qualified: KEDA, in its own namespace, connects with the same URLs.
    assert f"@{FULL}-postgres.{NAMESPACE}.svc:5432/" in secret["FARM_DATABASE_URL"]
    assert secret["FARM_REDIS_URL"] == f"redis://{FULL}-redis.{NAMESPACE}.svc:6379/0"
    config = of_kind(objects, "ConfigMap")[f"{FULL}-config"]["data"]
    assert (
        config["FARM_S3_ENDPOINT"] == f"{FULL}-minio:9000" and config["FARM_S3_SECURE"] == "false"
    )
    # The database is a release resource here, so migrations wait for it after install.
    job = of_kind(objects, "Job")[f"{FULL}-migrate"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    assert not {o["kind"] for o in render(chart, EXTERNAL)} & {"StatefulSet"}


def test_notes_explain_keys_and_first_render(chart: helm.Chart) -> None:
    text = notes(chart, EXTERNAL)
    assert f"kubectl -n {NAMESPACE} exec deploy/{FULL}-api -- farm keys create --name me" in text
    assert "/api/v2/render" in text and "Authorization: Bearer" in text
    assert '"className": "Hello", "quality": "low"' in text


# --- the schema rejects bad values, naming the field -----------------------------------------


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"workers": {"render-low": {"renderer": "vulkan"}}}, "/workers/render-low/renderer"),
        ({"workers": {"render-low": {"replicas": -1}}}, "/workers/render-low/replicas"),
        ({"workers": {"render-extra": {"concurrency": 2}}}, "/workers/render-extra"),  # no queues
        ({"workers": {"render-low": {"queues": ["render.ultra"]}}}, "/workers/render-low/queues/0"),
        ({"workers": {"render-low": {"queues": []}}}, "/workers/render-low/queues"),
        ({"workerDefaults": {"gpu": -1}}, "/workerDefaults/gpu"),
        ({"workerSandbox": {"mode": "docker"}}, "/workerSandbox/mode"),
        ({"config": {"logFormat": "xml"}}, "/config/logFormat"),
        ({"config": {"extra": {"FARM_DATABASE_URL": "postgresql://x"}}}, "/config/extra"),
        ({"workerz": {}}, "workerz"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(
    chart: helm.Chart, bad: dict[str, Any], field: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(merge(EXTERNAL, bad), name=RELEASE, namespace=NAMESPACE)
    assert field in str(err.value)


def test_bad_values_file_fails_lint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workers:\n  render-low:\n    renderer: vulkan\n")
    report = helm.lint(CHART, merge(EXTERNAL, load_values(bad)))
    assert any("/workers/render-low/renderer" in e for e in report["errors"]), report


# --- issue 15: installs on a real cluster ----------------------------------------------------


def _hook_phases(obj: dict[str, Any]) -> set[str]:
    hook = obj["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    return {h.strip() for h in hook.split(",") if h.strip()}


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] == "Pod":
        spec: dict[str, Any] = obj["spec"]
        return spec
    template = obj.get("spec", {}).get("template", {})
    return template.get("spec")


def _references(pod: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of every namespaced object a pod spec needs to exist before it starts."""
    refs = {("ServiceAccount", pod.get("serviceAccountName", "default"))}
    for c in pod.get("initContainers", []) + pod["containers"]:
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                refs.add(("ConfigMap", source["configMapRef"]["name"]))
            if "secretRef" in source:
                refs.add(("Secret", source["secretRef"]["name"]))
        for var in c.get("env", []):
            for ref_kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key in var.get("valueFrom", {}):
                    refs.add((ref_kind, var["valueFrom"][key]["name"]))
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            refs.add(("ConfigMap", volume["configMap"]["name"]))
        if "secret" in volume:
            refs.add(("Secret", volume["secret"]["secretName"]))
    return refs


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hook_pods_reference_only_hook_scoped_or_pre_existing_objects(
    chart: helm.Chart, name: str
) -> None:
    # Helm creates pre-install hooks before the release's own objects: a hook that needs one of
    # them (e.g. the release's ServiceAccount) hangs a fresh install. It may use objects of its
    # own phase with a lower weight, or ones the chart does not create at all (existingSecret).
    objects = render(chart, config_values(name))
    released = {(o["kind"], o["metadata"]["name"]) for o in objects if not _hook_phases(o)}
    hooks = [o for o in objects if _hook_phases(o)]
    for obj in hooks:
        pod = _pod_spec(obj)
        if pod is None:
            continue
        weight = int(obj["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
        for phase in _hook_phases(obj) - {"post-install", "post-upgrade", "test"}:
            for ref in _references(pod):
                earlier = any(
                    (o["kind"], o["metadata"]["name"]) == ref
                    and phase in _hook_phases(o)
                    and int(o["metadata"]["annotations"].get("helm.sh/hook-weight", "0")) < weight
                    for o in hooks
                )
                assert earlier or ref not in released, (
                    f"{obj['kind']}/{obj['metadata']['name']} ({phase}) needs {ref}, "
                    "which the release creates only after its pre-install hooks"
                )


def test_gpu_pool_shares_the_node_user_namespace_and_uses_the_gpu_runtime(
    chart: helm.Chart,
) -> None:
    # NVIDIA's container hook does not support pod user namespaces: hostUsers: false on the GPU
    # pool leaves it unable to start on GPU Operator clusters. CPU render pools keep theirs.
    pools = workers(render(chart, EXTERNAL))
    fourk = pools["render-fourk"]["spec"]["template"]["spec"]
    assert fourk["hostUsers"] is True
    assert fourk["runtimeClassName"] == "nvidia"
    assert "procMount" not in container(pools["render-fourk"])["securityContext"]
    for pool in ("render-low", "render-twok"):
        assert pools[pool]["spec"]["template"]["spec"]["hostUsers"] is False
    # The GPU runtime is not a sandbox setting: a GPU pool without the sandbox still needs it.
    bare = workers(
        render(chart, merge(EXTERNAL, {"workers": {"render-fourk": {"sandbox": False}}}))
    )
    assert bare["render-fourk"]["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert "hostUsers" not in bare["render-fourk"]["spec"]["template"]["spec"]


def test_sandbox_settings_are_per_pool(chart: helm.Chart) -> None:
    values = merge(
        EXTERNAL,
        {
            "workers": {
                "render-high": {
                    "workerSandbox": {
                        "runtimeClassName": "gvisor",
                        "hostUsers": True,
                        "procMount": "",
                        "seccompProfile": {
                            "type": "Localhost",
                            "localhostProfile": "profiles/farm-bwrap.json",
                        },
                    }
                }
            }
        },
    )
    pools = workers(render(chart, values))
    high = pools["render-high"]["spec"]["template"]["spec"]
    assert high["runtimeClassName"] == "gvisor" and high["hostUsers"] is True
    assert high["securityContext"]["seccompProfile"]["type"] == "Localhost"
    low = pools["render-low"]["spec"]["template"]["spec"]
    assert "runtimeClassName" not in low and low["hostUsers"] is False
    # Back on CPU (gpu: 0), the 4K pool returns to the CPU sandbox defaults.
    cpu = workers(render(chart, merge(EXTERNAL, load_values(CHART / "ci" / "gpu-off.yaml"))))
    fourk = cpu["render-fourk"]["spec"]["template"]["spec"]
    assert fourk["hostUsers"] is False and "runtimeClassName" not in fourk


def test_gpu_pods_get_their_devices_from_the_device_plugin_only(chart: helm.Chart) -> None:
    # The device plugin sets NVIDIA_VISIBLE_DEVICES to the GPUs the pod was given; the chart and
    # the image must not widen it (NVIDIA_VISIBLE_DEVICES=all exposes every GPU of the node).
    for deploy in workers(render(chart, EXTERNAL)).values():
        assert "NVIDIA_VISIBLE_DEVICES" not in env(deploy)


def test_gpu_image_does_not_expose_every_gpu_of_the_node() -> None:
    # Under the toolkit's legacy mode an image-wide NVIDIA_VISIBLE_DEVICES=all gives each pod
    # every GPU of its node, whatever the device plugin allocated.
    dockerfiles = [REPO / "Dockerfile", *sorted((REPO / "ops" / "docker").glob("*Dockerfile"))]
    found = [p for p in dockerfiles if p.exists()]
    assert found
    for path in found:
        text = re.sub(r"#.*", "", path.read_text())
        assert not re.search(r"NVIDIA_VISIBLE_DEVICES\s*=\s*all", text), (
            f"{path.relative_to(REPO)} bakes NVIDIA_VISIBLE_DEVICES=all into an image"
        )


def test_worker_liveness_probes_the_consumer_heartbeat(chart: helm.Chart) -> None:
    # /metrics is served by a thread that stays up while the Celery consumer is wedged.
    for pool, deploy in workers(render(chart, EXTERNAL)).items():
        c = container(deploy)
        for probe in ("startupProbe", "livenessProbe"):
            command = c[probe]["exec"]["command"]
            assert command[:3] == ["python", "-m", "workers.liveness"], (pool, probe)
            max_age = float(command[command.index("--max-age") + 1])
            # Three missed beats before the probe calls the consumer dead.
            assert max_age >= 3 * liveness.INTERVAL_SECONDS, pool
        assert "httpGet" not in c["livenessProbe"]
    # The probe's module is a command (tests/test_worker_liveness.py runs it against workers).
    assert liveness.main(["--max-age", "1", "--file", "/nonexistent/alive"]) == 1


def test_kubernetes_older_than_1_33_is_refused(chart: helm.Chart) -> None:
    # 1.30-1.32 accept hostUsers: false but drop it unless the feature gate is on, and render
    # pods would then run in the node's user namespace. `helm install` enforces Chart.yaml's
    # kubeVersion; `kubeVersion` renders as a given cluster version would (helm-python-sdk's
    # render has no --kube-version, and helm lint does not report `fail`).
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart_yaml["kubeVersion"] == ">=1.33.0-0"
    with pytest.raises(helm.HelmRenderError, match=r"needs Kubernetes >= 1\.33 \(found 1\.32\.9\)"):
        render(chart, merge(EXTERNAL, {"kubeVersion": "1.32.9"}))
    assert render(chart, merge(EXTERNAL, {"kubeVersion": "v1.33.0"}))


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()  # type: ignore[union-attr]
    return float(number) * {"Mi": 1, "Gi": 1024, "Ki": 1 / 1024, "": 1 / 2**20}[unit]


def _millicores(quantity: str) -> float:
    q = str(quantity)
    return float(q[:-1]) if q.endswith("m") else float(q) * 1000


def test_pod_resources_follow_concurrency_and_the_jail_limits(chart: helm.Chart) -> None:
    objects = render(chart, EXTERNAL)
    config = of_kind(objects, "ConfigMap")[f"{FULL}-config"]["data"]
    for pool, deploy in workers(objects).items():
        c = container(deploy)
        concurrency = int(arg_after(c["args"], "--concurrency"))
        jail_env = {**config, **env(deploy)}
        memory = int(jail_env["FARM_CHUNK_MEMORY_MB"])
        disk = int(jail_env["FARM_CHUNK_MAX_DISK_MB"])
        res = c["resources"]
        scratch = next(
            v["emptyDir"]["sizeLimit"]
            for v in deploy["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "scratch"
        )
        assert res["requests"]["ephemeral-storage"] and res["limits"]["ephemeral-storage"], pool
        assert _mebibytes(res["limits"]["ephemeral-storage"]) > _mebibytes(scratch), pool
        if pool.startswith("render-"):
            # Every jail of the pod may use its whole limit at once.
            assert _mebibytes(res["limits"]["memory"]) >= concurrency * memory, pool
            assert _mebibytes(scratch) >= concurrency * disk, pool
            assert _millicores(res["requests"]["cpu"]) >= concurrency * 1000, pool
    # A pool's own slot size reaches its jails (FARM_CHUNK_MEMORY_MB) and its pod limit.
    small = merge(EXTERNAL, {"workers": {"render-low": {"slot": {"memoryMb": 2048}}}})
    low = workers(render(chart, small))["render-low"]
    assert env(low)["FARM_CHUNK_MEMORY_MB"] == "2048"
    assert _mebibytes(container(low)["resources"]["limits"]["memory"]) == 4 * 2048 + 1024


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"limits": {"memory": "6Gi"}}, "limits.memory"),
        ({"limits": {"ephemeral-storage": "10Gi"}}, "ephemeral-storage"),
        ({"requests": {"cpu": "1"}}, "requests.cpu"),
    ],
)
def test_resources_below_what_the_jails_may_use_are_refused(
    chart: helm.Chart, resources: dict[str, Any], field: str
) -> None:
    values = merge(EXTERNAL, {"workers": {"render-low": {"resources": resources}}})
    with pytest.raises(helm.HelmRenderError, match=re.escape(field)):
        render(chart, values)


def test_pod_knobs(chart: helm.Chart) -> None:
    digest = "sha256:" + "ab" * 32
    values = merge(
        EXTERNAL,
        {
            "podAnnotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
            "priorityClassName": "farm",
            "images": {"workerGpu": {"digest": digest}},
            "workers": {
                "render-low": {
                    "podAnnotations": {"karpenter.sh/do-not-disrupt": "true"},
                    "podLabels": {"team": "render"},
                    "priorityClassName": "render-batch",
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": {"team": "render"}},
                        }
                    ],
                    "extraEnv": [{"name": "EXTRA", "value": "1"}],
                    "extraVolumes": [{"name": "fonts", "configMap": {"name": "fonts"}}],
                    "extraVolumeMounts": [{"name": "fonts", "mountPath": "/fonts"}],
                }
            },
            "api": {"podLabels": {"tier": "front"}, "extraEnv": [{"name": "X", "value": "y"}]},
        },
    )
    objects = render(chart, values)
    pools = workers(objects)
    low = pools["render-low"]["spec"]["template"]
    assert low["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert low["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == (
        "false"
    )
    assert low["metadata"]["labels"]["team"] == "render"
    assert low["spec"]["priorityClassName"] == "render-batch"
    assert low["spec"]["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert {"name": "fonts", "mountPath": "/fonts"} in container(pools["render-low"])[
        "volumeMounts"
    ]
    assert env(pools["render-low"])["EXTRA"] == "1"
    assert pools["render-high"]["spec"]["template"]["spec"]["priorityClassName"] == "farm"
    assert container(pools["render-fourk"])["image"] == f"manim-render-farm/worker-gpu@{digest}"
    api = of_kind(objects, "Deployment")[f"{FULL}-api"]["spec"]["template"]
    assert api["metadata"]["labels"]["tier"] == "front" and env_of(api)["X"] == "y"
    for kubernetes_object in objects:
        if kubernetes_object["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(kubernetes_object, KUBE_VERSION, strict=True)


def env_of(template: dict[str, Any]) -> dict[str, str]:
    (c,) = template["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"workers": {"render-high": {"terminationGracePeriodSeconds": 300}}},
            "workers.render-high.terminationGracePeriodSeconds",
        ),
        ({"workers": {"stitch": {"enabled": False}}}, "no enabled worker pool consumes stitch"),
        (
            {"workers": {"render-twok": {"queues": ["render.high"]}}},
            "no enabled worker pool consumes render.twok",
        ),
        (
            {"workers": {"render-low": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}},
            "minReplicas (5) is greater than maxReplicas (2)",
        ),
        (
            {"workers": {"render-low": {"workerSandbox": {"hostUsers": True}}}},
            "procMount Unmasked needs a pod user namespace",
        ),
        ({"networkPolicy": {"redis": {"to": []}}}, "networkPolicy.redis.to is empty"),
        (
            {
                "networkPolicy": {"apiFrom": [{"podSelector": {}}]},
                "metrics": {"serviceMonitor": {"enabled": True}},
            },
            "set networkPolicy.metricsFrom",
        ),
    ],
)
def test_inconsistent_values_fail_the_render_with_a_message(
    chart: helm.Chart, bad: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError) as err:
        render(chart, merge(EXTERNAL, bad))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (
            {"autoscaling": {"keda": {"redis": {"address": "redis://redis:6379/0"}}}},
            "/autoscaling/keda/redis/address",
        ),
        (
            {"workerSandbox": {"seccompProfile": {"type": "Localhost"}}},
            "/workerSandbox/seccompProfile': missing property 'localhostProfile'",
        ),
        (
            {
                "workers": {
                    "render-low": {"workerSandbox": {"appArmorProfile": {"type": "Localhost"}}}
                }
            },
            "render-low/workerSandbox/appArmorProfile': missing property 'localhostProfile'",
        ),
        ({"secrets": {"existingSecret": "Farm_Credentials"}}, "/secrets/existingSecret"),
        ({"images": {"worker": {"digest": "latest"}}}, "/images/worker/digest"),
    ],
)
def test_schema_refuses_mistakes(chart: helm.Chart, bad: dict[str, Any], field: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(merge(EXTERNAL, bad), name=RELEASE, namespace=NAMESPACE)
    assert field in str(err.value)


def test_prometheus_may_scrape_the_api_when_api_from_is_set(chart: helm.Chart) -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
    ingress_nginx = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ing"}}}
    values = merge(
        EXTERNAL,
        {"networkPolicy": {"apiFrom": [ingress_nginx], "metricsFrom": [prometheus]}},
    )
    policy = of_kind(render(chart, values), "NetworkPolicy")[f"{FULL}-api"]["spec"]
    allowed = [peer for rule in policy["ingress"] for peer in rule.get("from", [])]
    assert all(rule.get("from") for rule in policy["ingress"])  # the API is not open to all
    assert ingress_nginx in allowed and prometheus in allowed
    # ... and the chart's own `helm test` pods reach it too.
    assert {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "manim-render-farm",
                "app.kubernetes.io/instance": RELEASE,
                "app.kubernetes.io/component": "test",
            }
        }
    } in allowed


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_egress_rule_names_its_destination(chart: helm.Chart, name: str) -> None:
    # An egress rule without `to` allows its port to any address, internet included.
    for policy in of_kind(render(chart, config_values(name)), "NetworkPolicy").values():
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to"), (policy["metadata"]["name"], rule)


def test_any_destination_is_an_explicit_opt_in(chart: helm.Chart) -> None:
    values = merge(EXTERNAL, {"networkPolicy": {"s3": {"to": [], "anyDestination": True}}})
    policy = of_kind(render(chart, values), "NetworkPolicy")[f"{FULL}-worker-render-low"]
    s3 = [r for r in policy["spec"]["egress"] if r["ports"][0]["port"] == 443]
    assert s3 == [{"ports": [{"protocol": "TCP", "port": 443}]}]


def test_no_user_namespace_without_the_bwrap_sandbox(chart: helm.Chart) -> None:
    values = merge(EXTERNAL, {"workerSandbox": {"mode": "none"}})
    for pool, deploy in workers(render(chart, values)).items():
        pod = deploy["spec"]["template"]["spec"]
        assert "hostUsers" not in pod, pool
        assert "procMount" not in container(deploy)["securityContext"], pool
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, pool


def test_api_waits_for_endpoints_to_drop_it_before_stopping(chart: helm.Chart) -> None:
    api = of_kind(render(chart, EXTERNAL), "Deployment")[f"{FULL}-api"]
    c = container(api)
    seconds = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < seconds < api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] - 30


def test_helm_test_hooks(chart: helm.Chart) -> None:
    objects = render(chart, EXTERNAL)
    tests = {o["metadata"]["name"]: o for o in objects if "test" in _hook_phases(o)}
    assert set(tests) == {
        f"{FULL}-test-api-ready",
        f"{FULL}-test-render-low",
        f"{FULL}-test-render-fourk",
    }

    def container(pod: dict[str, Any]) -> dict[str, Any]:
        (only,) = pod["spec"]["containers"]
        return dict(only)

    api_url = f"http://{FULL}-api:80"
    assert container(tests[f"{FULL}-test-api-ready"])["args"][:2] == [api_url, ""]
    assert container(tests[f"{FULL}-test-render-low"])["args"][:3] == [api_url, "low", ""]
    # On the GPU pool the 4K job must come back from OpenGL, not a silent cairo fallback.
    assert container(tests[f"{FULL}-test-render-fourk"])["args"][:3] == [api_url, "fourk", "opengl"]
    for pod in tests.values():
        assert pod["spec"]["restartPolicy"] == "Never"
        assert container(pod)["command"][:2] == ["python", "-c"]
        assert container(pod)["command"][2] == (CHART / "files" / "smoke.py").read_text()
    cpu = render(chart, merge(EXTERNAL, load_values(CHART / "ci" / "gpu-off.yaml")))
    fourk = next(o for o in cpu if o["metadata"]["name"] == f"{FULL}-test-render-fourk")
    assert container(fourk)["args"][2] == ""


def test_smoke_script_is_plain_python_with_the_standard_library(tmp_path: Path) -> None:
    script = CHART / "files" / "smoke.py"
    py_compile.compile(str(script), cfile=str(tmp_path / "smoke.pyc"), doraise=True)
    imports = set(re.findall(r"^import (\w+)", script.read_text(), flags=re.M))
    assert imports <= {"json", "secrets", "subprocess", "sys", "time", "urllib"}, imports


def test_every_routed_queue_is_known_to_the_chart() -> None:
    # The chart's queue-coverage check and the schema list the routing table's queues.
    validate = (CHART / "templates" / "validate.yaml").read_text()
    for queue in ALL_QUEUES:
        assert f'"{queue}"' in validate


def test_queue_without_consumer_alert_allows_a_gpu_cold_start(tmp_path: Path) -> None:
    promtool = subprocess.run(["which", "promtool"], capture_output=True, text=True, check=False)
    if promtool.returncode != 0:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    # A GPU pool scaled to zero needs a node, a driver and an image pull before its first
    # worker beats: a queued 4K job without a consumer is normal for a while, a low one is not.
    rules = {
        r["alert"]: r
        for g in yaml.safe_load((REPO / "ops" / "prometheus" / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }

    def fired(alert: str, queue: str) -> dict[str, Any]:
        notes = {
            k: v.replace("{{ $labels.queue }}", queue)
            for k, v in rules[alert]["annotations"].items()
        }
        return {"exp_labels": {"severity": "critical", "queue": queue}, "exp_annotations": notes}

    tests = {
        "rule_files": [str(REPO / "ops" / "prometheus" / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'farm_queue_consumers{queue="render.fourk"}', "values": "0x40"},
                    {"series": 'farm_queue_depth{queue="render.fourk"}', "values": "1x40"},
                    {"series": 'farm_queue_consumers{queue="render.low"}', "values": "0x40"},
                    {"series": 'farm_queue_depth{queue="render.low"}', "values": "1x40"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "FarmQueueWithoutConsumer",
                        "exp_alerts": [fired("FarmQueueWithoutConsumer", "render.low")],
                    },
                    {
                        "eval_time": "10m",
                        "alertname": "FarmGpuQueueWithoutConsumer",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "FarmGpuQueueWithoutConsumer",
                        "exp_alerts": [fired("FarmGpuQueueWithoutConsumer", "render.fourk")],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "cold-start-test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool.stdout.strip(), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
