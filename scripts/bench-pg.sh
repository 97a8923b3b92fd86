#!/usr/bin/env bash
# End-to-end PostgreSQL benchmark, side by side in one run: pgbench -S against
# PostgreSQL directly, through portcullis (TLS + SCRAM at the proxy) and, where
# installed, through PgBouncer (session mode). Also -C (a new connection per
# transaction). Reports each proxy's CPU time per transaction from /proc.
#
#   scripts/bench-pg.sh            # T=10 seconds per run, 16 clients
#
# Environment: T, C (clients), PORTCULLIS_BIN (default target/release/portcullis,
# built if missing), PORTCULLIS_BASELINE_BIN (a second build measured side by
# side, e.g. the one before a change), WORKER_THREADS (portcullis's
# runtime.worker_threads), SCHEDULER (runtime.scheduler), YIELD
# (runtime.yield_before_sleep, default false), BASELINE_YIELD (as in bench-e2e.sh).
# scripts/bench-e2e.sh runs this after its Redis part.
#
# Needs PostgreSQL server binaries (Debian: postgresql), pgbench; runs as root by
# running PostgreSQL as the `postgres` user. Everything is on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${T:-10}
C=${C:-16}

bindir=$(dirname "$(readlink -f "$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")")
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# A server in a session of its own (see bench-e2e.sh).
pg_daemon() { if [[ $(id -u) == 0 ]]; then setsid runuser -u postgres -- "$@"; else setsid "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; return 1; }

PW="Bench-Pg-Secret-0123456789-abcdefXYZ"
PGP=$(free_port)
if [[ -n "${PORTCULLIS_BIN:-}" ]]; then
    bin=$(realpath "$PORTCULLIS_BIN")
else
    [[ -x target/release/portcullis ]] || cargo build --release --quiet
    bin=$PWD/target/release/portcullis
fi
"$bin" gen-certs --out "$work/certs" >/dev/null
mkdir -p "$work/pgtls" && cp "$work/certs/server.crt" "$work/certs/server.key" "$work/pgtls/"
chown -R postgres "$work/pgtls" 2>/dev/null || true
chmod 600 "$work/pgtls/server.key"
mkdir -p "$work/data" && chown postgres "$work/data" 2>/dev/null || true
echo "$PW" >"$work/pw" && chown postgres "$work/pw" 2>/dev/null || true
as_pg "$bindir/initdb" -D "$work/data" -U bench --auth=scram-sha-256 --pwfile="$work/pw" >/dev/null
pg_daemon "$bindir/postgres" -D "$work/data" -p "$PGP" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$work/data" \
    -c max_connections=200 -c fsync=off -c ssl=on -c ssl_cert_file="$work/pgtls/server.crt" \
    -c ssl_key_file="$work/pgtls/server.key" >/dev/null 2>&1 &
pids+=($!)
wait_port "$PGP"
export PGPASSWORD=$PW
"$bindir/pgbench" -h 127.0.0.1 -p "$PGP" -U bench -i -s 1 -q postgres >/dev/null 2>&1

PX=$(free_port)
cat >"$work/portcullis.toml" <<EOF
[runtime]
worker_threads = ${WORKER_THREADS:-0}
scheduler = "${SCHEDULER:-per_thread}"
yield_before_sleep = ${YIELD:-false}
[admin]
enabled = false
[limits]
# On, as in production; far above this load, so they never delay it.
max_connections_per_ip = 5000
commands_per_second_per_ip = 100000000
commands_per_second_per_user = 100000000
bytes_per_second_per_connection = 1000000000
[[backend]]
name = "pg"
protocol = "postgres"
address = "127.0.0.1:$PGP"
user = "bench"
password = "\${BENCH_PW}"
[[listener]]
name = "pg"
protocol = "postgres"
listen = "127.0.0.1:$PX"
backend = "pg"
[listener.tls]
mode = "required"
cert = "$work/certs/server.crt"
key = "$work/certs/server.key"
[[user]]
name = "bench"
password = "\${BENCH_PW}"
EOF
BENCH_PW=$PW RUST_LOG=warn setsid env ${PORTCULLIS_ENV:-} "$bin" run --config "$work/portcullis.toml" 2>"$work/portcullis.log" &
portcullis_pid=$!
pids+=($portcullis_pid)
wait_port "$PX" || { cat "$work/portcullis.log" >&2; exit 1; }

baseline_pid=""; XB=""
if [[ -n "${PORTCULLIS_BASELINE_BIN:-}" ]]; then
    XB=$(free_port)
    if [[ -n "${BASELINE_YIELD:-}" ]]; then
        runtime=(-e "s/^yield_before_sleep = .*/yield_before_sleep = $BASELINE_YIELD/")
    else
        # An older build may not know [runtime]: the baseline gets the thread count from tokio's variable.
        runtime=(-e '/^\[runtime\]$/d' -e '/^worker_threads = /d' -e '/^scheduler = /d' -e '/^yield_before_sleep = /d')
    fi
    sed -e "s/127.0.0.1:$PX\"/127.0.0.1:$XB\"/" "${runtime[@]}" \
        "$work/portcullis.toml" >"$work/baseline.toml"
    threads=()
    [[ "${WORKER_THREADS:-0}" != 0 ]] && threads=(TOKIO_WORKER_THREADS="$WORKER_THREADS")
    setsid env "${threads[@]}" BENCH_PW=$PW RUST_LOG=warn "$(realpath "$PORTCULLIS_BASELINE_BIN")" run --config "$work/baseline.toml" 2>"$work/baseline.log" &
    baseline_pid=$!
    pids+=($baseline_pid)
    wait_port "$XB" || { cat "$work/baseline.log" >&2; exit 1; }
fi

bouncer_pid=""; BP=""
if command -v pgbouncer >/dev/null; then
    BP=$(free_port)
    echo "\"bench\" \"$PW\"" >"$work/userlist.txt"
    cat >"$work/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$PGP dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BP
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 50
client_tls_sslmode = allow
client_tls_key_file = $work/certs/server.key
client_tls_cert_file = $work/certs/server.crt
unix_socket_dir =
EOF
    chown -R postgres "$work" 2>/dev/null || true
    pg_daemon pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$BP"
    # The process to measure is pgbouncer itself, not the runuser wrapper.
    bouncer_pid=$(pgrep -n -f "pgbouncer $work/pgbouncer.ini" | head -1)
    pids+=($bouncer_pid)
fi

ticks=$(getconf CLK_TCK)
cpu() { [[ -n "$1" ]] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
rows=()
run() {
    local name=$1 pid=$2 port=$3 sslmode=$4; shift 4
    local before after out tps n us
    # Unmeasured warm-up, so that no target is the one that pays for a cold start.
    PGSSLMODE=$sslmode "$bindir/pgbench" -h 127.0.0.1 -p "$port" -U bench -S -T 2 -c "$C" -j 2 "$@" postgres >/dev/null 2>&1 || true
    before=$(cpu "$pid")
    out=$(PGSSLMODE=$sslmode "$bindir/pgbench" -h 127.0.0.1 -p "$port" -U bench -S -T "$T" -c "$C" -j 2 "$@" postgres 2>&1) || true
    after=$(cpu "$pid")
    tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
    n=$(echo "$out" | awk '/number of transactions actually processed/ {print $NF}')
    if [[ -n "$pid" && -n "$n" && "$n" != 0 ]]; then
        us=$(awk -v t="$((after - before))" -v hz="$ticks" -v n="$n" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    else
        us="—"
    fi
    rows+=("| $name | ${*:-} | ${tps:-?} | $us |")
}
for flags in "" -C; do
    run "PostgreSQL direct (TLS)" "" "$PGP" require $flags
    run "portcullis (TLS, SCRAM at the proxy)" "$portcullis_pid" "$PX" require $flags
    [[ -n "$baseline_pid" ]] && run "portcullis baseline (TLS, SCRAM at the proxy)" "$baseline_pid" "$XB" require $flags
    [[ -n "$bouncer_pid" ]] && run "PgBouncer, session mode (TLS)" "$bouncer_pid" "$BP" require $flags
done

echo "Machine: $(nproc) vCPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -sr), $(date -u +%Y-%m-%d). Command: \`T=$T scripts/bench-pg.sh\` (pgbench -S, T=$T s, $C clients; portcullis worker_threads=${WORKER_THREADS:-0}, scheduler=${SCHEDULER:-per_thread}, yield_before_sleep=${YIELD:-false}${BASELINE_YIELD:+, baseline yield_before_sleep=$BASELINE_YIELD})."
echo
echo "| target | extra pgbench flags | tps | proxy CPU µs/transaction |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
