# syntax=docker/dockerfile:1.7
# API image: the FastAPI control plane (service/), with the same Python, Ray, MLflow and torch versions as the Ray
# image (requirements.lock's pins). CPU torch (the API only builds models for GET /models summaries); no DALI.
#
#   docker build -f docker/api.Dockerfile -t sibnn/api:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY docker/requirements.py /tmp/requirements.py
# CPU torch at the lock's version, then every other package exactly as requirements.lock pins it (`make lock`),
# less the test tools and DALI (with the CUDA codecs only DALI needs).
RUN pip install --index-url "$TORCH_INDEX_URL" "$(python /tmp/requirements.py requirements.lock --only torch)" \
 && python /tmp/requirements.py requirements.lock --drop-extra test --drop nvidia-dali-cuda130 \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY sibnn ./sibnn
COPY jobs ./jobs
COPY service ./service
RUN pip install --no-deps -e . \
 && python -c "import ray, mlflow, service.app; print('ray', ray.__version__, 'mlflow', mlflow.__version__)"

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=1000
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAY_AUTH_MODE=token \
    SIBNN_HOME=/var/lib/sibnn/api \
    SIBNN_HOST=0.0.0.0 \
    SIBNN_PORT=8000
RUN groupadd --gid "$UID" sibnn \
 && useradd --uid "$UID" --gid "$UID" --create-home --shell /usr/sbin/nologin sibnn \
 && mkdir -p /var/lib/sibnn/api /data/imagenet \
 && chown -R sibnn:sibnn /var/lib/sibnn
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/sibnn-healthcheck
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/sibnn-entrypoint
USER sibnn
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=5 \
    CMD ["sibnn-healthcheck", "http://127.0.0.1:8000/healthz"]
ENTRYPOINT ["sibnn-entrypoint"]
CMD ["python", "-m", "uvicorn", "service.app:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log", \
     "--timeout-graceful-shutdown", "5"]
