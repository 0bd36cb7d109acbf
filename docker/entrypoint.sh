#!/bin/sh
# Entry point of the Ray, API and MLflow images.
# 1. Secrets as files (the postgres image's *_FILE convention): for a library that reads a secret only from one
#    environment variable (MLflow's client: MLFLOW_TRACKING_PASSWORD; MLflow's auth app: MLFLOW_AUTH_ADMIN_PASSWORD
#    and MLFLOW_FLASK_SERVER_SECRET_KEY, its CSRF key; libpq: PGPASSWORD), VAR_FILE names a mounted secret (/run/secrets/...) and VAR is exported from it here, inside
#    this process only: the container's configuration (`docker inspect`, the pod spec) holds the path, never the value.
# 2. Refuse to start a Ray cluster member without the shared Ray token: Ray 2.60 with RAY_AUTH_MODE=token and no token
#    would make up its own (~/.ray/auth_token), a cluster no other container could join.
set -eu

die() { echo "sibnn: $*" >&2; exit 64; }

file_env() {
    var=$1
    eval "value=\${$var:-}"
    eval "file=\${${var}_FILE:-}"
    [ -n "$file" ] || return 0
    [ -z "$value" ] || die "both $var and ${var}_FILE are set: use one"
    [ -r "$file" ] || die "${var}_FILE=$file is not a readable file (a missing secret? see README: make secrets)"
    value=$(cat "$file")
    [ -n "$value" ] || die "${var}_FILE=$file is empty"
    export "$var=$value"
}

for var in MLFLOW_TRACKING_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY PGPASSWORD; do
    file_env "$var"
done

if [ "${RAY_AUTH_MODE:-}" = "token" ]; then
    token="${RAY_AUTH_TOKEN:-}"
    if [ -z "$token" ] && [ -n "${RAY_AUTH_TOKEN_PATH:-}" ]; then
        [ -r "$RAY_AUTH_TOKEN_PATH" ] || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is not a readable file (make secrets)"
        token=$(cat "$RAY_AUTH_TOKEN_PATH")
    fi
    [ -n "$token" ] || die "RAY_AUTH_TOKEN is not set; mount the secret and set RAY_AUTH_TOKEN_PATH (make secrets), or set RAY_AUTH_TOKEN"
    case "$token" in
        change-me*) die "the Ray token is still the placeholder from .env.example; generate one: make secrets" ;;
    esac
fi
exec "$@"
