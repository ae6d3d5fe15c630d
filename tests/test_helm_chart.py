"""The Helm chart: rendered by Helm's own engine (helm-python-sdk), linted, checked against the
Kubernetes schemas, and read back to check the shape the farm relies on. No cluster needed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "manim-render-farm"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
KUBE_VERSION = "1.37.0"
RELEASE, NAMESPACE = "farm", "farm"
FULL = f"{RELEASE}-manim-render-farm"

# Custom resources: no schema in kubernetes-validate; their shape is checked by hand below.
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
# The smallest install on the production path: credentials in a Secret, an S3 endpoint.
EXTERNAL = {
    "secrets": {"existingSecret": "farm-credentials"},
    "config": {"s3Endpoint": "s3.example.com:443"},
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
        "external-services",
        "ingress-on",
        "evaluation",
    }


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


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_manifest_validates_against_kubernetes_schemas(chart: helm.Chart, name: str) -> None:
    objects = render(chart, config_values(name))
    assert objects
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {e.message}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_container_is_hardened_and_bounded(chart: helm.Chart, name: str) -> None:
    for obj in render(chart, config_values(name)):
        if obj["kind"] not in {"Deployment", "StatefulSet", "Job"}:
            continue
        pod = obj["spec"]["template"]["spec"]
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
    values = merge(EXTERNAL, {"workers": {"render-twok": {"enabled": False}}})
    assert "render-twok" not in workers(render(chart, values))


# --- sandbox and hardening -------------------------------------------------------------------


def test_render_pools_get_the_sandbox_settings(chart: helm.Chart) -> None:
    for pool, deploy in workers(render(chart, EXTERNAL)).items():
        pod = deploy["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["terminationGracePeriodSeconds"] >= 60
        if pool.startswith("render-"):
            assert pod["hostUsers"] is False
            assert pod["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
            assert pod["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}
            assert container(deploy)["securityContext"]["procMount"] == "Unmasked"
            assert pod["terminationGracePeriodSeconds"] >= 600  # a chunk in flight may finish
        else:
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


def test_keda_scaled_object_per_pool_on_its_own_queue(chart: helm.Chart) -> None:
    objects = render(chart, load_values(CHART / "ci" / "keda-on.yaml"))
    scaled = of_kind(objects, "ScaledObject")
    pools = workers(objects)
    assert set(scaled) == {f"{FULL}-worker-{p}" for p in pools}
    for pool, deploy in pools.items():
        so = scaled[f"{FULL}-worker-{pool}"]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert so["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
        queues = arg_after(container(deploy)["args"], "--queues").split(",")
        assert [t["metadata"]["listName"] for t in so["spec"]["triggers"]] == queues
        for t in so["spec"]["triggers"]:
            assert t["type"] == "redis"
            assert int(t["metadata"]["listLength"]) >= 1
            assert t["metadata"]["address"]
            assert t["authenticationRef"] == {"name": f"{FULL}-keda-redis"}
        assert 0 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        # KEDA owns the replica count: the Deployment must not fight it on upgrade.
        assert "replicas" not in deploy["spec"]
    assert scaled[f"{FULL}-worker-render-fourk"]["spec"]["minReplicaCount"] == 0
    assert scaled[f"{FULL}-worker-render-low"]["spec"]["minReplicaCount"] >= 1
    (auth,) = of_kind(objects, "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"][0]["parameter"] == "password"
    assert not of_kind(objects, "HorizontalPodAutoscaler")


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
    objects = render(chart, load_values(CHART / "ci" / "evaluation.yaml"))
    sets = of_kind(objects, "StatefulSet")
    assert set(sets) == {f"{FULL}-postgres", f"{FULL}-redis", f"{FULL}-minio"}
    secret = of_kind(objects, "Secret")[f"{FULL}-credentials"]["stringData"]
    assert f"@{FULL}-postgres:5432/" in secret["FARM_DATABASE_URL"]
    assert secret["FARM_REDIS_URL"] == f"redis://{FULL}-redis:6379/0"
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
