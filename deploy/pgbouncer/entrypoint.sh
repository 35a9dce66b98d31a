#!/bin/sh
# Writes PgBouncer's settings from the environment (passwords reach it by file or environment,
# never a command line) and runs it in the foreground. The same settings as
# tests/infra/pgbouncer.py: transaction pooling, at most PGBOUNCER_POOL server connections per
# database, SCRAM towards clients and server. Used by the compose `pgbouncer` service, the
# Kubernetes one (same image) and deploy/slurm/fer-search-pgbouncer.sbatch (natively).
#
# POSTGRES_USER: the one role clients may log in as (the workers' role, fer_worker in compose
# and Kubernetes); its password in POSTGRES_PASSWORD_FILE (a file: compose and Kubernetes) or
# POSTGRES_PASSWORD. PgBouncer logs in to PostgreSQL as that role with that password.
# PGBOUNCER_ADMIN_USER / PGBOUNCER_ADMIN_PASSWORD_FILE: the admin console's own user (database
# `pgbouncer`; PgBouncer's only, not a PostgreSQL role). Unset (Slurm, by hand): POSTGRES_USER
# is the console's admin, as before.
# PGBOUNCER_DIR: where the settings and the password file go (made private; default
# /tmp/pgbouncer). PGBOUNCER_PORT: the port to listen on (6432). PGBOUNCER_OPTIONS: more
# options for pgbouncer itself (e.g. `-u postgres`: PgBouncer refuses to run as root).
# TLS (optional, deploy/README.md "TLS to PostgreSQL"): PGBOUNCER_SERVER_TLS_SSLMODE (e.g.
# verify-full) and PGBOUNCER_SERVER_TLS_CA_FILE towards PostgreSQL; PGBOUNCER_CLIENT_TLS_SSLMODE
# (e.g. require), PGBOUNCER_CLIENT_TLS_CERT_FILE and PGBOUNCER_CLIENT_TLS_KEY_FILE towards the
# workers.
set -eu

say() { echo "pgbouncer-entrypoint: $*" >&2; }

secret() {  # $1: a variable's name; its value, or the first line of the file ${1}_FILE names
    eval "file=\${${1}_FILE:-}"
    if [ -n "$file" ]; then
        if [ ! -r "$file" ]; then
            say "${1}_FILE: cannot read $file"
            exit 2
        fi
        value=$(head -n 1 "$file" | tr -d '\r')
    else
        eval "value=\${$1:-}"
    fi
    case $value in
        "") say "$1 (or ${1}_FILE) is not set or empty"; exit 2 ;;
        change-me*) say "$1 is still the example's change-me; set a password of your own"; exit 2 ;;
    esac
    printf '%s' "$value"
}

: "${POSTGRES_USER:?}"
password=$(secret POSTGRES_PASSWORD)
admin=${PGBOUNCER_ADMIN_USER:-}
if [ -n "$admin" ]; then
    admin_password=$(secret PGBOUNCER_ADMIN_PASSWORD)
    if [ "$admin" = "$POSTGRES_USER" ]; then
        say "PGBOUNCER_ADMIN_USER must differ from POSTGRES_USER (the console has its own user)"
        exit 2
    fi
fi
# PgBouncer's auth file quotes names and passwords with "; a " inside is doubled.
quote() { printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"; }

dir=${PGBOUNCER_DIR:-/tmp/pgbouncer}
umask 077
mkdir -p "$dir"
{
    printf '%s %s\n' "$(quote "$POSTGRES_USER")" "$(quote "$password")"
    if [ -n "$admin" ]; then
        printf '%s %s\n' "$(quote "$admin")" "$(quote "$admin_password")"
    fi
} > "$dir/userlist.txt"
unset password admin_password

tls=""
if [ -n "${PGBOUNCER_SERVER_TLS_SSLMODE:-}" ]; then
    tls="${tls}server_tls_sslmode = $PGBOUNCER_SERVER_TLS_SSLMODE
"
    if [ -n "${PGBOUNCER_SERVER_TLS_CA_FILE:-}" ]; then
        tls="${tls}server_tls_ca_file = $PGBOUNCER_SERVER_TLS_CA_FILE
"
    fi
fi
if [ -n "${PGBOUNCER_CLIENT_TLS_SSLMODE:-}" ]; then
    tls="${tls}client_tls_sslmode = $PGBOUNCER_CLIENT_TLS_SSLMODE
client_tls_cert_file = ${PGBOUNCER_CLIENT_TLS_CERT_FILE:?PGBOUNCER_CLIENT_TLS_CERT_FILE is needed with PGBOUNCER_CLIENT_TLS_SSLMODE}
client_tls_key_file = ${PGBOUNCER_CLIENT_TLS_KEY_FILE:?PGBOUNCER_CLIENT_TLS_KEY_FILE is needed with PGBOUNCER_CLIENT_TLS_SSLMODE}
"
fi

cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=${POSTGRES_HOST:-postgres} port=${POSTGRES_PORT:-5432}

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = ${PGBOUNCER_PORT:-6432}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
admin_users = ${admin:-$POSTGRES_USER}
pool_mode = transaction
default_pool_size = ${PGBOUNCER_POOL:-40}
max_db_connections = ${PGBOUNCER_POOL:-40}
reserve_pool_size = 0
max_client_conn = ${PGBOUNCER_MAX_CLIENTS:-4000}
query_wait_timeout = 900
server_reset_query =
ignore_startup_parameters = extra_float_digits
${tls}
INI
# shellcheck disable=SC2086  # PGBOUNCER_OPTIONS: words on purpose
exec pgbouncer ${PGBOUNCER_OPTIONS:-} "$dir/pgbouncer.ini"
