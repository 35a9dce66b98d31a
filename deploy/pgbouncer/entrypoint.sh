#!/bin/sh
# Writes PgBouncer's settings from the environment (the password reaches it by environment,
# never a command line) and runs it in the foreground. The same settings as
# benchmarks/pgbouncer.py: transaction pooling, at most PGBOUNCER_POOL server connections per
# database, SCRAM towards clients and server.
set -eu
: "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}"
dir=/tmp/pgbouncer
mkdir -p "$dir"
umask 077
printf '"%s" "%s"\n' "$POSTGRES_USER" "$POSTGRES_PASSWORD" > "$dir/userlist.txt"
cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=${POSTGRES_HOST:-postgres} port=${POSTGRES_PORT:-5432}

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
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
exec pgbouncer "$dir/pgbouncer.ini"
