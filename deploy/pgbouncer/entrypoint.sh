#!/bin/sh
# Writes PgBouncer's settings from the environment (the password reaches it by environment,
# never a command line) and runs it in the foreground. The same settings as
# benchmarks/pgbouncer.py: transaction pooling, at most PGBOUNCER_POOL server connections per
# database, SCRAM towards clients and server. Used by the compose `pgbouncer` service, the
# Kubernetes one (same image) and deploy/slurm/fer-search-pgbouncer.sbatch (natively).
#
# PGBOUNCER_DIR: where the settings and the password file go (made private; default
# /tmp/pgbouncer). PGBOUNCER_PORT: the port to listen on (6432). PGBOUNCER_OPTIONS: more
# options for pgbouncer itself (e.g. `-u postgres`: PgBouncer refuses to run as root).
set -eu
: "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}"
dir=${PGBOUNCER_DIR:-/tmp/pgbouncer}
umask 077
mkdir -p "$dir"
printf '"%s" "%s"\n' "$POSTGRES_USER" "$POSTGRES_PASSWORD" > "$dir/userlist.txt"
cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=${POSTGRES_HOST:-postgres} port=${POSTGRES_PORT:-5432}

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = ${PGBOUNCER_PORT:-6432}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
admin_users = $POSTGRES_USER
pool_mode = transaction
default_pool_size = ${PGBOUNCER_POOL:-40}
max_db_connections = ${PGBOUNCER_POOL:-40}
reserve_pool_size = 0
max_client_conn = ${PGBOUNCER_MAX_CLIENTS:-4000}
query_wait_timeout = 900
server_reset_query =
ignore_startup_parameters = extra_float_digits
INI
# shellcheck disable=SC2086  # PGBOUNCER_OPTIONS: words on purpose
exec pgbouncer ${PGBOUNCER_OPTIONS:-} "$dir/pgbouncer.ini"
