#!/bin/sh
# The fer-search image's entrypoint: secrets arrive as files (a Kubernetes Secret volume, compose
# `secrets:`), never as values in the pod spec or the container's environment, then this runs
# the command it is given (`fer-search ...`, `fer-mlflow-server ...`).
#
#   FER_SEARCH_DB_PASSWORD_FILE       the database role's password: written into a private libpq
#                                     password file (PGPASSFILE), so the storage URL carries no
#                                     password (postgresql+psycopg2://fer_worker@pgbouncer:6432/optuna)
#   MLFLOW_TRACKING_PASSWORD_FILE     -> MLFLOW_TRACKING_PASSWORD (MLflow's client has no file of its
#                                     own but ~/.mlflow/credentials; MLFLOW_TRACKING_USERNAME stays
#                                     a plain variable)
#   MLFLOW_AUTH_ADMIN_PASSWORD_FILE   -> MLFLOW_AUTH_ADMIN_PASSWORD (the MLflow server's admin)
#   MLFLOW_FLASK_SERVER_SECRET_KEY_FILE -> MLFLOW_FLASK_SERVER_SECRET_KEY (its CSRF key)
#
# A file that is missing, empty, shorter than 12 characters (MLflow's minimum) or still the
# examples' `change-me...` stops the container with one line and exit code 2. Only the process
# started here (and its children) see the exported values; the files stay where they were.
# FER_SEARCH_RUNTIME_DIR (default /tmp/fer-search) is where the password file goes: an emptyDir
# or tmpfs when the root filesystem is read-only.
set -eu

say() { echo "fer-search-secrets: $*" >&2; }

read_secret() {  # $1: the variable naming the file; prints the file's first line
    eval "file=\${$1}"
    # shellcheck disable=SC2154  # set by the eval above
    if [ ! -r "$file" ]; then
        say "$1: cannot read $file"
        exit 2
    fi
    value=$(head -n 1 "$file" | tr -d '\r')
    case $value in
        "") say "$1: $file is empty; set a password of your own"; exit 2 ;;
        change-me*) say "$1: $file is still the example's change-me; set a password of your own"
                    exit 2 ;;
    esac
    if [ "${#value}" -lt 12 ]; then
        say "$1: $file holds fewer than 12 characters; use a long random one (openssl rand -hex 24)"
        exit 2
    fi
    printf '%s' "$value"
}

if [ -n "${FER_SEARCH_DB_PASSWORD_FILE:-}" ]; then
    password=$(read_secret FER_SEARCH_DB_PASSWORD_FILE)
    dir=${FER_SEARCH_RUNTIME_DIR:-/tmp/fer-search}
    (umask 077 && mkdir -p "$dir")
    # libpq's format: host:port:database:user:password, `:` and `\` escaped; any host, port,
    # database and user (the URL names them). libpq ignores the file unless it is mode 0600.
    escaped=$(printf '%s' "$password" | sed 's/[\\:]/\\&/g')
    (umask 077 && printf '*:*:*:*:%s\n' "$escaped" > "$dir/pgpass")
    PGPASSFILE=$dir/pgpass
    export PGPASSFILE
    unset password escaped
fi

for name in MLFLOW_TRACKING_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
    eval "file=\${${name}_FILE:-}"
    if [ -n "$file" ]; then
        value=$(read_secret "${name}_FILE")
        eval "$name=\$value"
        # shellcheck disable=SC2163  # the variable named by $name
        export "$name"
        unset "${name}_FILE" value
    fi
done

if [ "$#" -eq 0 ]; then
    say "no command given"
    exit 2
fi
exec "$@"
