# syntax=docker/dockerfile:1.7
# Ray node image (compose ray-head / ray-worker, KubeRay head and GPU workers): CUDA-enabled torch, DALI for the same
# CUDA, Ray, MLflow client and the project, all at requirements.lock's pins. The NVIDIA driver comes from the host through
# the NVIDIA container toolkit; the CUDA runtime libraries (cudart, cuBLAS, cuDNN, NCCL, nvJPEG) come with the torch
# and DALI wheels, so the base is the same plain Python 3.11 as the API image (same interpreter for Ray's client and
# cluster, same /opt/venv/bin/python path for the job entrypoint the API submits).
#
#   docker build -f docker/ray.Dockerfile -t sibnn/ray:0.1.0 .
#
# CUDA 13 builds (default) need an NVIDIA driver >= 580. Older drivers (>= 525, CUDA 12.x):
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 --build-arg DALI_CUDA=cuda120
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG DALI_CUDA=cuda130
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY docker/requirements.py /tmp/requirements.py
# torch first, from the index of the wanted CUDA build; the version is the lock's (torch==X matches X+cu130). Then
# every other package exactly as requirements.lock pins it (`make lock`), less the test tools, DALI for DALI_CUDA.
RUN pip install --index-url "$TORCH_INDEX_URL" "$(python /tmp/requirements.py requirements.lock --only torch)" \
 && python /tmp/requirements.py requirements.lock --drop-extra test \
      --rename nvidia-dali-cuda130 "nvidia-dali-$DALI_CUDA" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY sibnn ./sibnn
COPY jobs ./jobs
COPY service ./service
RUN pip install --no-deps -e . \
 && python -c "import ray, torch, mlflow, nvidia.dali, jobs.run; print('ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=1000
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RAY_USAGE_STATS_ENABLED=0 \
    RAY_AUTH_MODE=token \
    SIBNN_STORAGE_PATH=/var/lib/sibnn/runs
RUN groupadd --gid "$UID" sibnn \
 && useradd --uid "$UID" --gid "$UID" --create-home --shell /bin/bash sibnn \
 && mkdir -p /var/lib/sibnn/runs /data/imagenet \
 && chown -R sibnn:sibnn /var/lib/sibnn
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/sibnn-healthcheck
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/sibnn-entrypoint
USER sibnn
WORKDIR /app
# GCS, dashboard + job API, Ray client; every other Ray port stays inside the container network.
EXPOSE 6379 8265 10001
# The raylet's own health (head and workers); no token needed for Ray's healthz endpoints.
HEALTHCHECK --interval=15s --timeout=10s --start-period=90s --retries=5 \
    CMD ["sibnn-healthcheck", "http://127.0.0.1:52365/api/local_raylet_healthz"]
ENTRYPOINT ["sibnn-entrypoint"]
CMD ["ray", "start", "--head", "--block", "--disable-usage-stats", "--port", "6379", "--include-dashboard", "true", \
     "--dashboard-host", "0.0.0.0", \
     "--dashboard-port", "8265", "--dashboard-agent-listen-port", "52365", "--temp-dir", "/tmp/ray", \
     "--resources", "{\"TRAIN_DRIVER_RESOURCE\": 1}"]
