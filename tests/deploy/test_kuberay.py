"""infra/: the KubeRay RayCluster (CPU head, autoscaling GPU workers), MLflow + PostgreSQL, the API, Secrets mounted
as files, the checkpoint volume. Parsed as YAML; no cluster needed."""
from __future__ import annotations

import re

import yaml

from tests.deploy.deployment import (CHECKPOINTS, IMAGENET, INFRA, SECRET_NAME, SECRET_VALUE, SECRETS_MOUNT, env_of,
                                     environment, flag, load_compose, manifest, manifests, pinned, pod_containers,
                                     pyproject)


def ray_cluster() -> dict:
    return manifest("RayCluster", "sibnn")


def every_container():
    """(file, container with its pod) for every container, init container and the KubeRay autoscaler sidecar."""
    for doc in manifests():
        for c in pod_containers(doc):
            yield doc["_file"], c
            for init in c["_pod"].get("initContainers", []):
                yield doc["_file"], dict(init, _pod=c["_pod"])
        if doc["kind"] == "RayCluster":
            head = doc["spec"]["headGroupSpec"]["template"]["spec"]
            yield doc["_file"], dict(doc["spec"]["autoscalerOptions"], name="autoscaler", _pod=head)


def mounted_secret_files(container: dict) -> dict[str, tuple[str, str]]:
    """/run/secrets/<file> → (Secret name, key) of the projected secret volume the container mounts there."""
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    out = {}
    for vol in container["_pod"].get("volumes", []):
        if vol["name"] in mounts and "projected" in vol:
            for src in vol["projected"]["sources"]:
                for item in src["secret"]["items"]:
                    out[f"{mounts[vol['name']].rstrip('/')}/{item['path']}"] = (src["secret"]["name"], item["key"])
    return out


def documented_secrets() -> dict[str, set[str]]:
    """The Secrets infra/README.md tells the operator to create: name → keys (kubectl create secret generic)."""
    out: dict[str, set[str]] = {}
    text = (INFRA / "README.md").read_text().replace("\\\n", " ")
    for m in re.finditer(r"create secret generic (\S+)(.*)", text):
        out[m.group(1)] = set(re.findall(r"--from-(?:literal|file)=([\w-]+)=", m.group(2)))
    return out


def test_kustomization_lists_every_manifest_and_the_init_script():
    kust = yaml.safe_load((INFRA / "kustomization.yaml").read_text())
    files = {p.name for p in INFRA.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    for gen in kust["configMapGenerator"]:
        for f in gen["files"]:
            assert (INFRA / f).is_file()


def test_no_secret_is_in_a_pod_spec_only_paths_to_files_from_kubernetes_secrets():
    assert not [d for d in manifests() if d["kind"] == "Secret"]
    for f in INFRA.glob("*.yaml"):
        assert not any(p.search(f.read_text()) for p in SECRET_VALUE), f.name
    for file, c in every_container():
        files = mounted_secret_files(c)
        for name, e in env_of(c).items():
            assert "valueFrom" not in e, (file, c["name"], name, "a secret as an environment variable")
            value = str(e.get("value", ""))
            assert not any(p.search(value) for p in SECRET_VALUE), (file, c["name"], name)
            if SECRET_NAME.search(name):
                assert name.endswith(("_FILE", "_PATH")) or not name.endswith(("TOKEN", "PASSWORD", "DATABASE_URL")), \
                    (file, c["name"], name)
                if name.endswith(("_FILE", "_PATH")):
                    assert value in files, (file, c["name"], name, value, "no secret mounted there")


def test_every_secret_a_pod_mounts_is_one_the_readme_tells_you_to_create(tmp_path):
    from tests.deploy.deployment import make_secrets

    made = make_secrets(tmp_path / "secrets")  # the README fills the Secrets from `make secrets`' files
    sources = re.findall(r"--from-file=[\w-]+=secrets/(\w+)", (INFRA / "README.md").read_text())
    assert sources and set(sources) <= set(made)
    documented = documented_secrets()
    used = {ref for _, c in every_container() for ref in mounted_secret_files(c).values()}
    assert used
    for secret, key in used:
        assert key in documented.get(secret, set()), (secret, key)
    assert {(s, k) for s, keys in documented.items() for k in keys} == used  # and nothing documented goes unused


def test_kubernetes_names_the_secret_files_as_compose_does():
    compose = load_compose()["services"]
    pairs = [(manifest("Deployment", "sibnn-api"), "api"), (manifest("Deployment", "mlflow"), "mlflow"),
             (manifest("StatefulSet", "postgres"), "postgres"), (ray_cluster(), "ray-head")]
    for doc, service in pairs:
        want = {k: v for k, v in environment(compose[service]).items() if v.startswith(SECRETS_MOUNT)}
        for c in pod_containers(doc):
            got = {k: e["value"] for k, e in env_of(c).items() if str(e.get("value", "")).startswith(SECRETS_MOUNT)}
            assert got == want, (doc["_file"], c["name"])


def test_ray_containers_start_through_the_secret_exporting_entrypoint_then_kuberays_ray_start():
    rc = ray_cluster()
    assert rc["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    for c in pod_containers(rc):
        assert c["command"][0] == "sibnn-entrypoint" and c["command"][1:3] == ["bash", "-c"]
        assert 'eval "$KUBERAY_GEN_RAY_START_CMD"' in c["args"][0] and "ulimit -n" in c["args"][0]
    for doc in (manifest("Deployment", "sibnn-api"), manifest("Deployment", "mlflow")):
        for c in pod_containers(doc):  # a pod's command replaces the image's ENTRYPOINT
            assert c["command"][0] == "sibnn-entrypoint", doc["_file"]


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


def test_every_ray_container_and_the_autoscaler_read_the_token_file_and_the_mlflow_login():
    rc = ray_cluster()
    autoscaler = dict(rc["spec"]["autoscalerOptions"], _pod=rc["spec"]["headGroupSpec"]["template"]["spec"])
    for c in pod_containers(rc) + [autoscaler]:
        env = env_of(c)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN_PATH"]["value"] == "/run/secrets/ray_auth_token"
        assert mounted_secret_files(c)["/run/secrets/ray_auth_token"] == ("sibnn-ray-auth", "auth_token")
    for c in pod_containers(rc):  # the jobs these nodes run log into MLflow
        assert env_of(c)["MLFLOW_TRACKING_USERNAME"]["value"] == "admin"
        assert mounted_secret_files(c)[env_of(c)["MLFLOW_TRACKING_PASSWORD_FILE"]["value"]] == \
            ("sibnn-mlflow", "admin-password")


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
    assert mounted_secret_files(api)[env["SIBNN_DATABASE_URL_FILE"]["value"]] == ("sibnn-db", "sibnn-database-url")
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
    assert ienv["SIBNN_DATABASE_URL_FILE"] == aenv["SIBNN_DATABASE_URL_FILE"]
    init = dict(init, _pod=dep["spec"]["template"]["spec"])
    assert mounted_secret_files(init)[ienv["SIBNN_DATABASE_URL_FILE"]["value"]] == ("sibnn-db", "sibnn-database-url")
    assert aenv["SIBNN_AUTO_MIGRATE"]["value"] == "false"


def test_mlflow_on_kubernetes_allows_its_service_names_and_uses_postgres():
    (ml,) = pod_containers(manifest("Deployment", "mlflow"))
    allowed = flag(ml["command"], "--allowed-hosts").split(",")
    assert {"mlflow", "mlflow:5000", "mlflow.*", "localhost:5000", "127.0.0.1:5000"} <= set(allowed)
    env = env_of(ml)
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == "postgresql+psycopg://mlflow@postgres:5432/mlflow"
    assert flag(ml["command"], "--app-name") == "basic-auth"
    files = mounted_secret_files(ml)
    assert files[env["PGPASSWORD_FILE"]["value"]] == ("sibnn-db", "mlflow-password")
    assert files[env["MLFLOW_AUTH_ADMIN_PASSWORD_FILE"]["value"]] == ("sibnn-mlflow", "admin-password")
    assert files[env["MLFLOW_FLASK_SERVER_SECRET_KEY_FILE"]["value"]] == ("sibnn-mlflow", "flask-secret-key")
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
