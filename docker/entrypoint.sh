#!/bin/sh
# Entry point of the Ray and API images: refuse to start a cluster member without the shared Ray token.
# Ray 2.60 with RAY_AUTH_MODE=token and no token would make up its own (~/.ray/auth_token) — a cluster no other
# container could join — so a missing token is an error here, with the fix named.
set -eu
if [ "${RAY_AUTH_MODE:-token}" = "token" ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
    echo "sibnn: RAY_AUTH_TOKEN is not set; put one in .env (openssl rand -hex 32) or mount a file and set RAY_AUTH_TOKEN_PATH" >&2
    exit 64
fi
case "${RAY_AUTH_TOKEN:-}" in
    change-me*) echo "sibnn: RAY_AUTH_TOKEN is still the placeholder from .env.example; generate one: openssl rand -hex 32" >&2
                exit 64 ;;
esac
exec "$@"
