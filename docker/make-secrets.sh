#!/bin/sh
# Create the secret files docker-compose.yml mounts at /run/secrets/* (`make secrets`; safe to rerun: existing files
# are kept, so a running deployment's passwords never change under it). Random values, 32 bytes as hex (they go
# into a database URL, where characters like @ / : would need escaping).
#
#   sh docker/make-secrets.sh [DIR]        # DIR defaults to ./secrets (git-ignored, and left out of the image context)
#
# The folder is 0700 (only you on this box); the files are 0644 because Docker Compose bind-mounts them unchanged
# and each container reads them as its own non-root user (uid 1000; postgres 999).
set -eu
dir="${1:-secrets}"
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

rand() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

make() {  # make NAME [VALUE]: write NAME unless it exists
    if [ ! -s "$dir/$1" ]; then
        printf '%s\n' "${2:-$(rand)}" > "$dir/$1"
        echo "created $dir/$1"
    fi
    chmod 644 "$dir/$1"
}

make ray_auth_token         # Ray token authentication: every Ray node, the autoscaler and the API
make api_token              # bearer token for every API request (reads and writes)
make read_token             # read-only bearer token (GET requests)
make postgres_password      # PostgreSQL superuser
make sibnn_db_password      # owner of the API's database (sibnn)
make mlflow_db_password     # owner of MLflow's database (mlflow, also MLflow's users)
make mlflow_admin_password  # MLflow's basic-auth admin: the UI login, the API's and the Ray jobs' MLflow client
make mlflow_flask_secret_key  # the key MLflow's auth app signs its CSRF tokens with
# The API's database URL carries the sibnn password: derived from it, so the two always agree.
make sibnn_database_url "postgresql+psycopg://sibnn:$(cat "$dir/sibnn_db_password")@postgres:5432/sibnn"
