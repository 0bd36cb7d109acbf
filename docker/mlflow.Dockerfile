# syntax=docker/dockerfile:1.7
# MLflow tracking server + UI on PostgreSQL (psycopg 3: SQLAlchemy 2's driver for postgresql+psycopg:// URLs), behind
# MLflow's basic-auth app (--app-name basic-auth; its config docker/mlflow/basic_auth.ini holds no secret).
# MLFLOW_VERSION must equal pyproject.toml's mlflow pin (tests/deploy checks it): clients and server agree.
#
#   docker build -f docker/mlflow.Dockerfile -t sibnn/mlflow:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG MLFLOW_VERSION=3.17.2
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# Every version from the project's lock (requirements.lock, `make lock`): MLflow, its auth app's Flask-WTF, psycopg 3.
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
 && pip install -c /tmp/requirements.lock "mlflow==${MLFLOW_VERSION}" "psycopg[binary]" Flask-WTF \
 && python -c "import mlflow, psycopg, sqlalchemy, flask_wtf; print('mlflow', mlflow.__version__, 'sqlalchemy', sqlalchemy.__version__)"

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=1000
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
RUN groupadd --gid "$UID" mlflow \
 && useradd --uid "$UID" --gid "$UID" --create-home --shell /usr/sbin/nologin mlflow \
 && mkdir -p /mlflow/artifacts \
 && chown -R mlflow:mlflow /mlflow
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/sibnn-healthcheck
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/sibnn-entrypoint
COPY --chmod=0644 docker/mlflow/basic_auth.ini /etc/mlflow/basic_auth.ini
USER mlflow
WORKDIR /mlflow
EXPOSE 5000
# /health is exempt from MLflow's Host-header check: it says 200 even when the allowed hosts are wrong, which is why
# tests/deploy also checks an API call with the compose Host header.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=5 \
    CMD ["sibnn-healthcheck", "http://127.0.0.1:5000/health"]
# MLFLOW_BACKEND_STORE_URI comes from the environment (no password in it); the entrypoint exports PGPASSWORD and
# MLFLOW_AUTH_ADMIN_PASSWORD from the secret files PGPASSWORD_FILE and MLFLOW_AUTH_ADMIN_PASSWORD_FILE name.
ENV MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini
ENTRYPOINT ["sibnn-entrypoint"]
CMD ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", "5000", "--workers", "1", \
     "--serve-artifacts", "--artifacts-destination", "/mlflow/artifacts", \
     "--allowed-hosts", "mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000"]
