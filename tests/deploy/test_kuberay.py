"""infra/: the KubeRay RayCluster (CPU head, autoscaling GPU workers), MLflow + PostgreSQL, the API, Secrets by
reference, the checkpoint volume. Parsed as YAML; no cluster needed."""
from __future__ import annotations

import yaml

from tests.deploy.deployment import (CHECKPOINTS, IMAGENET, INFRA, env_of, flag, manifest, manifests, pinned,
                                     pod_containers, pyproject)

SECRET_KEYS = {"RAY_AUTH_TOKEN": ("sibnn-ray-auth", "auth_token"), "SIBNN_API_TOKEN": ("sibnn-api", "api-token"),
               "POSTGRES_PASSWORD": ("sibnn-db", "postgres-password"),
               "SIBNN_DB_PASSWORD": ("sibnn-db", "sibnn-password"),
               "MLFLOW_DB_PASSWORD": ("sibnn-db", "mlflow-password")}


def ray_cluster() -> dict:
    return manifest("RayCluster", "sibnn")


def test_kustomization_lists_every_manifest_and_the_init_script():
    kust = yaml.safe_load((INFRA / "kustomization.yaml").read_text())
    files = {p.name for p in INFRA.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    for gen in kust["configMapGenerator"]:
        for f in gen["files"]:
            assert (INFRA / f).is_file()


def test_no_secret_value_is_written_in_a_manifest():
    assert not [d for d in manifests() if d["kind"] == "Secret"]
    for doc in manifests():
        for c in pod_containers(doc):
            for name, e in env_of(c).items():
                if name in SECRET_KEYS:
                    ref = e["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) == SECRET_KEYS[name], (doc["_file"], name)
                    assert "value" not in e


def test_the_ray_cluster_runs_pyprojects_ray_with_in_tree_autoscaling():
    rc = ray_cluster()
    assert rc["apiVersion"] == "ray.io/v1"
    assert rc["spec"]["rayVersion"] == pinned("ray")
    assert rc["spec"]["enableInTreeAutoscaling"] is True


def test_the_head_is_cpu_only_and_the_gpu_group_scales_from_zero():
    spec = ray_cluster()["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    for c in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    (worker,) = gpu["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_every_ray_container_and_the_autoscaler_carry_the_token():
    rc = ray_cluster()
    for env in [env_of(c) for c in pod_containers(rc)] + [{e["name"]: e for e in rc["spec"]["autoscalerOptions"]["env"]}]:
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "sibnn-ray-auth", "key": "auth_token"}


def test_every_ray_node_mounts_the_checkpoint_claim_and_imagenet_read_only_at_the_compose_paths():
    for c in pod_containers(ray_cluster()):
        volumes = {v["name"]: v for v in c["_pod"]["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert volumes[mounts[CHECKPOINTS]["name"]]["persistentVolumeClaim"]["claimName"] == "sibnn-checkpoints"
        assert mounts[IMAGENET]["readOnly"] is True
        assert volumes[mounts[IMAGENET]["name"]]["persistentVolumeClaim"]["readOnly"] is True
        assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
        assert env_of(c)["SIBNN_STORAGE_PATH"]["value"] == CHECKPOINTS
        assert c["image"] == f"sibnn/ray:{pyproject()['project']['version']}"
    assert manifest("PersistentVolumeClaim", "sibnn-checkpoints")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_api_points_at_the_kuberay_head_service_and_mlflow():
    (api,) = pod_containers(manifest("Deployment", "sibnn-api"))
    env = env_of(api)
    assert env["SIBNN_RAY_ADDRESS"]["value"] == "http://sibnn-head-svc:8265"  # KubeRay: <cluster>-head-svc
    assert env["SIBNN_MLFLOW_TRACKING_URI"]["value"] == env["SIBNN_JOB_MLFLOW_TRACKING_URI"]["value"] == \
        "http://mlflow:5000"
    assert env["SIBNN_DATABASE_URL"]["value"] == "postgresql+psycopg://sibnn:$(SIBNN_DB_PASSWORD)@postgres:5432/sibnn"
    assert list(env).index("SIBNN_DB_PASSWORD") < list(env).index("SIBNN_DATABASE_URL")  # $(VAR) needs order
    assert env["SIBNN_STORAGE_PATH"]["value"] == CHECKPOINTS
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {m["mountPath"]: m.get("readOnly") for m in api["volumeMounts"]}[IMAGENET] is True
    assert manifest("Service", "sibnn-api")["spec"]["ports"][0]["port"] == 8000


def test_the_api_pods_migrate_in_an_init_container_and_start_with_auto_migrate_off():
    dep = manifest("Deployment", "sibnn-api")
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    (api,) = pod_containers(dep)
    assert init["command"] == ["sibnn", "migrate"] and init["image"] == api["image"]
    ienv, aenv = env_of(init), env_of(api)
    assert ienv["SIBNN_DATABASE_URL"] == aenv["SIBNN_DATABASE_URL"]
    assert ienv["SIBNN_DB_PASSWORD"]["valueFrom"] == aenv["SIBNN_DB_PASSWORD"]["valueFrom"]
    assert list(ienv).index("SIBNN_DB_PASSWORD") < list(ienv).index("SIBNN_DATABASE_URL")  # $(VAR) needs order
    assert aenv["SIBNN_AUTO_MIGRATE"]["value"] == "false"


def test_mlflow_on_kubernetes_allows_its_service_names_and_uses_postgres():
    (ml,) = pod_containers(manifest("Deployment", "mlflow"))
    allowed = flag(ml["command"], "--allowed-hosts").split(",")
    assert {"mlflow", "mlflow:5000", "mlflow.*", "localhost:5000", "127.0.0.1:5000"} <= set(allowed)
    env = env_of(ml)
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql+psycopg://mlflow:$(MLFLOW_DB_PASSWORD)@")
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert flag(ml["command"], "--workers") == "1"
    assert ml["readinessProbe"]["httpGet"]["path"] == "/health"


def test_every_workload_runs_as_non_root_with_probes():
    for doc in manifests():
        for c in pod_containers(doc):
            assert c["_pod"]["securityContext"]["runAsNonRoot"] is True, (doc["_file"], c["name"])
            # Ray containers too: KubeRay's injected defaults (< 1.6) call wget, which sibnn/ray lacks
            assert "readinessProbe" in c and "livenessProbe" in c, (doc["_file"], c["name"])


def test_kubernetes_images_are_the_compose_images():
    version = pyproject()["project"]["version"]
    images = {c["image"] for d in manifests() for c in pod_containers(d)}
    assert images == {f"sibnn/ray:{version}", f"sibnn/api:{version}", f"sibnn/mlflow:{version}",
                      "postgres:15.14-bookworm"}
