#!/bin/sh
# PostgreSQL first-start script (/docker-entrypoint-initdb.d; the same file is the KubeRay setup's ConfigMap):
# one database and one owner role for the API (sibnn) and one for MLflow (mlflow). Passwords from secret files
# (SIBNN_DB_PASSWORD_FILE, MLFLOW_DB_PASSWORD_FILE: the image's own *_FILE convention) or the plain variables.
# Runs once, when the data volume is empty. psql variables (:'pw') quote the passwords, whatever they contain.
set -eu
secret() {
    eval "file=\${${1}_FILE:-}"
    if [ -n "$file" ]; then
        cat "$file"
    else
        eval "printf %s \"\${$1:?$1 or ${1}_FILE is not set}\""
    fi
}
sibnn_pw=$(secret SIBNN_DB_PASSWORD)
mlflow_pw=$(secret MLFLOW_DB_PASSWORD)
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
     -v sibnn_pw="$sibnn_pw" -v mlflow_pw="$mlflow_pw" <<'SQL'
CREATE ROLE sibnn LOGIN PASSWORD :'sibnn_pw';
CREATE DATABASE sibnn OWNER sibnn;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE mlflow OWNER mlflow;
SQL
