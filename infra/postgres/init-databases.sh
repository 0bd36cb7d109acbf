#!/bin/sh
# PostgreSQL first-start script (/docker-entrypoint-initdb.d; the same file is the KubeRay setup's ConfigMap):
# one database and one owner role for the API (sibnn) and one for MLflow (mlflow), passwords from the environment.
# Runs once, when the data volume is empty. psql variables (:'pw') quote the passwords, whatever they contain.
set -eu
: "${SIBNN_DB_PASSWORD:?SIBNN_DB_PASSWORD is not set}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
     -v sibnn_pw="$SIBNN_DB_PASSWORD" -v mlflow_pw="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE sibnn LOGIN PASSWORD :'sibnn_pw';
CREATE DATABASE sibnn OWNER sibnn;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE mlflow OWNER mlflow;
SQL
