#!/bin/sh
# Refuses to start the stack with a password of the examples: docker-compose.yml's
# `check-secrets` service runs it first, and every other service waits for it to exit 0.
# Each file in SECRETS_DIR (default /run/secrets; compose puts each `secrets:` entry there,
# filled from .env) must hold a value of 12 or more characters that is not `change-me...`.
# Otherwise one line naming each bad .env setting, and exit 1. By hand, on .env itself:
#
#   sh deploy/compose/check-secrets.sh --env .env
set -eu

# The secret's file name and the .env setting that fills it (docker-compose.yml `secrets:`).
names="postgres-password:POSTGRES_PASSWORD
worker-db-password:FER_WORKER_DB_PASSWORD
mlflow-db-password:FER_MLFLOW_DB_PASSWORD
dashboard-db-password:FER_DASHBOARD_DB_PASSWORD
pgbouncer-admin-password:PGBOUNCER_ADMIN_PASSWORD
mlflow-admin-password:MLFLOW_ADMIN_PASSWORD
mlflow-worker-password:MLFLOW_WORKER_PASSWORD
mlflow-secret-key:MLFLOW_SECRET_KEY"

env_file=""
if [ "${1:-}" = "--env" ]; then
    env_file=${2:?--env needs a file}
    [ -r "$env_file" ] || { echo "check-secrets: cannot read $env_file" >&2; exit 1; }
fi
dir=${SECRETS_DIR:-/run/secrets}

problems=""
seen=""
for pair in $names; do
    file=${pair%%:*}
    setting=${pair#*:}
    if [ -n "$env_file" ]; then
        # The last assignment wins, as in compose; surrounding quotes are dropped.
        value=$(sed -n "s/^[[:space:]]*$setting[[:space:]]*=[[:space:]]*//p" "$env_file" \
                | tail -n 1 | sed "s/^[\"']//; s/[\"'][[:space:]]*\$//")
    elif [ -r "$dir/$file" ]; then
        value=$(head -n 1 "$dir/$file" | tr -d '\r')
    else
        value=""
    fi
    problem=""
    case $value in
        "") problem="is not set or empty" ;;
        change-me*) problem="is still the example's change-me" ;;
        *) if [ "${#value}" -lt 12 ]; then problem="is shorter than 12 characters"; fi ;;
    esac
    case " $seen " in
        *" $value "*) if [ -z "$problem" ]; then problem="is the same as another password"; fi ;;
    esac
    seen="$seen $value"
    if [ -n "$problem" ]; then
        problems="${problems:+$problems; }$setting $problem"
    fi
done
unset value seen
if [ -n "$problems" ]; then
    echo "fer-search: set passwords of your own in .env (openssl rand -hex 24): $problems" >&2
    exit 1
fi
echo "fer-search: the passwords in .env are set"
