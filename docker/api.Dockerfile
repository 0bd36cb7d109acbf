# syntax=docker/dockerfile:1.7
# API image: the FastAPI control plane (service/), with the same Python, Ray and MLflow versions as the Ray image
# (requirements.lock's pins) and only what the API imports: no torch, scikit-learn, matplotlib, mlxtend or DALI (the
# API never imports torch, an import-linter contract in pyproject.toml; GET /models reads sibnn/catalog.json).
#
#   docker build -f docker/api.Dockerfile -t sibnn/api:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY docker/requirements.py /tmp/requirements.py
# The packages the API process imports (service/, jobs.spec/presets/tracking/results, sibnn.catalog) and what they
# need, exactly as requirements.lock pins them (`make lock`): mlflow-skinny, MLflow's client at the lock's version,
# instead of mlflow, whose server side brings scikit-learn and matplotlib; Ray for its job submission client; SciPy
# for the tables' t intervals; psycopg for PostgreSQL; typer and rich for `sibnn migrate` (compose's migrate service,
# the Kubernetes init container). tests/deploy/test_images.py runs both commands with nothing else importable.
RUN python /tmp/requirements.py requirements.lock --drop-extra test \
      --for fastapi uvicorn starlette pydantic pydantic-settings sqlalchemy alembic psycopg httpx anyio requests \
            cachetools scipy mlflow-skinny ray typer rich \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY sibnn ./sibnn
COPY jobs ./jobs
COPY service ./service
COPY console ./console
RUN pip install --no-deps -e . \
 && python -c "import ray, mlflow, service.app, console.cli; print(ray.__version__, mlflow.__version__)"

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
