#!/usr/bin/env bash
# End-to-end benchmark, side by side in one run. Redis: redis-server direct, through
# portcullis (plain sidecar listener, and TLS; both with AUTH at the proxy, the
# command policy and rate limits on; each also with the backend connection shared,
# `multiplex = true`, as "portcullis multiplexed"), and, where installed, HAProxy (TCP mode and
# TLS termination), stunnel and twemproxy. Load: redis-benchmark, 50 clients, GET
# and SET, pipeline 1 and 16. Then PostgreSQL, where its binaries are installed:
# scripts/bench-pg.sh (pgbench -S and -C: direct, portcullis, PgBouncer).
# For each proxy it reads the process's CPU time from /proc before and after the
# run and reports CPU microseconds per request, and the part of it spent in user
# space (the rest is the kernel's: system calls, TCP on loopback, wake-ups).
#
#   scripts/bench-e2e.sh                # prints a markdown table
#   scripts/bench-e2e.sh --write        # also replaces the table in BENCHMARKS.md
#
# Environment: N (requests per test), CLIENTS, PIPELINES (default "1 16"),
# PORTCULLIS_BIN (default target/release/portcullis, built if missing),
# PORTCULLIS_BASELINE_BIN (a second build, e.g. before a change: also measured,
# side by side in the same run, as "portcullis baseline"), ONLY (a regular
# expression: only targets whose name matches run, e.g. ONLY='portcullis|HAProxy'),
# WORKER_THREADS (portcullis's runtime.worker_threads; 0, the default: one per CPU),
# SCHEDULER (runtime.scheduler: per_thread, the default, or work_stealing),
# YIELD (runtime.yield_before_sleep: false, the default, or true), BASELINE_YIELD
# (the baseline is a build that knows runtime.yield_before_sleep: it runs with the
# same [runtime] but this value, e.g. BASELINE_YIELD=true with the same binary;
# unset, the baseline gets no [runtime] section and runs with its own defaults),
# ROUNDS (default 1: each target is run this many times, the whole list in turn,
# and the table gives each figure's median), PG=0 (skip PostgreSQL), T (seconds
# per pgbench run).
#
# Every server (redis-server, PostgreSQL, each proxy) runs in a session of its own
# (setsid), as a service under systemd or a container does: with the kernel's
# autogroup scheduling each session is a scheduling group, and one started from
# this script's session would otherwise share one group with the load generator
# and every other server. The load generator runs in the script's session.
#
# Everything listens on 127.0.0.1 and stops when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200000}          # requests per test (GET and SET each)
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-50}
write=false
[[ "${1:-}" == "--write" ]] && write=true

need() { command -v "$1" >/dev/null || { echo "bench-e2e: $1 is required (apt-get install $2)" >&2; exit 1; }; }
need redis-server redis-server
need redis-benchmark redis-tools

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; return 1; }

if [[ -n "${PORTCULLIS_BIN:-}" ]]; then
    bin=$(realpath "$PORTCULLIS_BIN")
else
    [[ -x target/release/portcullis ]] || cargo build --release --quiet
    bin=$PWD/target/release/portcullis
fi
baseline=${PORTCULLIS_BASELINE_BIN:+$(realpath "$PORTCULLIS_BASELINE_BIN")}
PIPELINES=${PIPELINES:-1 16}
ONLY=${ONLY:-.}

BACKEND_PW="Bench-Backend-Secret-0123456789-abcdefXYZ"
USER_PW="bench-password"
RP=$(free_port)
setsid redis-server --port "$RP" --bind 127.0.0.1 --requirepass "$BACKEND_PW" --save "" --appendonly no >/dev/null &
pids+=($!)
wait_port "$RP"
redis-cli -p "$RP" -a "$BACKEND_PW" --no-auth-warning set key:__rand_int__ x >/dev/null

"$bin" gen-certs --out "$work/certs" >/dev/null
cat "$work/certs/server.crt" "$work/certs/server.key" >"$work/certs/haproxy.pem"

PP=$(free_port); PT=$(free_port); MP=$(free_port); MT=$(free_port)
WORKER_THREADS=${WORKER_THREADS:-0}
SCHEDULER=${SCHEDULER:-per_thread}
YIELD=${YIELD:-false}
cat >"$work/base.toml" <<EOF
[runtime]
worker_threads = $WORKER_THREADS
scheduler = "$SCHEDULER"
yield_before_sleep = $YIELD
[admin]
enabled = false
[limits]
# On, as in production; far above this load, so they never delay it.
max_connections_per_ip = 5000
commands_per_second_per_ip = 100000000
commands_per_second_per_user = 100000000
bytes_per_second_per_connection = 1000000000
[[backend]]
name = "redis"
protocol = "redis"
address = "127.0.0.1:$RP"
password = "\${BENCH_BACKEND_PW}"
[[listener]]
name = "plain"
protocol = "redis"
listen = "127.0.0.1:$PP"
backend = "redis"
[listener.tls]
mode = "disabled"
[[listener]]
name = "tls"
protocol = "redis"
listen = "127.0.0.1:$PT"
backend = "redis"
[listener.tls]
mode = "required"
cert = "$work/certs/server.crt"
key = "$work/certs/server.key"
[[user]]
name = "bench"
password = "\${BENCH_USER_PW}"
EOF
# The same listeners once more, with the backend connection shared (not for the baseline,
# which may be a build from before `multiplex`).
cat "$work/base.toml" - >"$work/portcullis.toml" <<EOF
[[backend]]
name = "redis-shared"
protocol = "redis"
address = "127.0.0.1:$RP"
password = "\${BENCH_BACKEND_PW}"
multiplex = true
[[listener]]
name = "plain-shared"
protocol = "redis"
listen = "127.0.0.1:$MP"
backend = "redis-shared"
[listener.tls]
mode = "disabled"
[[listener]]
name = "tls-shared"
protocol = "redis"
listen = "127.0.0.1:$MT"
backend = "redis-shared"
[listener.tls]
mode = "required"
cert = "$work/certs/server.crt"
key = "$work/certs/server.key"
EOF
BENCH_BACKEND_PW=$BACKEND_PW BENCH_USER_PW=$USER_PW RUST_LOG=warn setsid "$bin" run --config "$work/portcullis.toml" 2>"$work/portcullis.log" &
portcullis_pid=$!
pids+=($portcullis_pid)
{ wait_port "$PP" && wait_port "$PT" && wait_port "$MP" && wait_port "$MT"; } || { cat "$work/portcullis.log" >&2; exit 1; }

baseline_pid=""; BP=""; BT=""
if [[ -n "$baseline" ]]; then
    BP=$(free_port); BT=$(free_port)
    if [[ -n "${BASELINE_YIELD:-}" ]]; then
        runtime=(-e "s/^yield_before_sleep = .*/yield_before_sleep = $BASELINE_YIELD/")
    else
        # An older build may not know [runtime]: the baseline gets the thread count from tokio's variable.
        runtime=(-e '/^\[runtime\]$/d' -e '/^worker_threads = /d' -e '/^scheduler = /d' -e '/^yield_before_sleep = /d')
    fi
    sed -e "s/127.0.0.1:$PP\"/127.0.0.1:$BP\"/" -e "s/127.0.0.1:$PT\"/127.0.0.1:$BT\"/" \
        "${runtime[@]}" "$work/base.toml" >"$work/baseline.toml"
    threads=()
    [[ "$WORKER_THREADS" != 0 ]] && threads=(TOKIO_WORKER_THREADS="$WORKER_THREADS")
    setsid env "${threads[@]}" BENCH_BACKEND_PW=$BACKEND_PW BENCH_USER_PW=$USER_PW RUST_LOG=warn "$baseline" run --config "$work/baseline.toml" 2>"$work/baseline.log" &
    baseline_pid=$!
    pids+=($baseline_pid)
    { wait_port "$BP" && wait_port "$BT"; } || { cat "$work/baseline.log" >&2; exit 1; }
fi

haproxy_pid=""; HP=""; HT=""
if command -v haproxy >/dev/null; then
    HP=$(free_port); HT=$(free_port)
    cat >"$work/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend plain
    bind 127.0.0.1:$HP
    default_backend redis
frontend tls
    bind 127.0.0.1:$HT ssl crt $work/certs/haproxy.pem
    default_backend redis
backend redis
    server r1 127.0.0.1:$RP
EOF
    setsid haproxy -db -f "$work/haproxy.cfg" >/dev/null 2>&1 &
    haproxy_pid=$!
    pids+=($haproxy_pid)
    wait_port "$HP"; wait_port "$HT"
fi

stunnel_pid=""; SP=""
if command -v stunnel >/dev/null; then
    SP=$(free_port)
    cat >"$work/stunnel.conf" <<EOF
foreground = yes
pid =
[redis]
accept = 127.0.0.1:$SP
connect = 127.0.0.1:$RP
cert = $work/certs/server.crt
key = $work/certs/server.key
EOF
    setsid stunnel "$work/stunnel.conf" >/dev/null 2>&1 &
    stunnel_pid=$!
    pids+=($stunnel_pid)
    wait_port "$SP"
fi

twem_pid=""; TP=""
if command -v nutcracker >/dev/null; then
    TP=$(free_port)
    cat >"$work/nutcracker.yml" <<EOF
pool:
  listen: 127.0.0.1:$TP
  redis: true
  redis_auth: $BACKEND_PW
  servers:
    - 127.0.0.1:$RP:1
EOF
    setsid nutcracker -c "$work/nutcracker.yml" >/dev/null 2>&1 &
    twem_pid=$!
    pids+=($twem_pid)
    wait_port "$TP"
fi

ticks=$(getconf CLK_TCK)
# A process's CPU time in clock ticks: "user system".
cpu() { [[ -n "$1" ]] && awk '{print $14, $15}' "/proc/$1/stat" || echo "0 0"; }

# run NAME PID PORT PIPELINE redis-benchmark-args...: one line of results.tsv
run() {
    local name=$1 pid=$2 port=$3 pipeline=$4; shift 4
    local before after out get set us user
    [[ "$name" =~ $ONLY ]] || return 0
    # Unmeasured warm-up: the first target run is not the one that pays for a
    # cold start (caches, the host waking the cores).
    redis-benchmark -h 127.0.0.1 -p "$port" -c "$CLIENTS" -n "$((N / 10))" -P "$pipeline" -t get -q "$@" >/dev/null 2>&1
    before=$(cpu "$pid")
    out=$(redis-benchmark -h 127.0.0.1 -p "$port" -c "$CLIENTS" -n "$N" -P "$pipeline" -t get,set -q --csv "$@" 2>/dev/null)
    after=$(cpu "$pid")
    set=$(echo "$out" | awk -F'","' '/^"SET/ {print $2}')
    get=$(echo "$out" | awk -F'","' '/^"GET/ {print $2}')
    local p50get
    p50get=$(echo "$out" | awk -F'","' '/^"GET/ {print $5}')
    if [[ -n "$pid" ]]; then
        read -r us user < <(awk -v b="$before" -v a="$after" -v hz="$ticks" -v n="$((2 * N))" 'BEGIN {
            split(b, x, " "); split(a, y, " "); k = 1e6 / hz / n
            printf "%.2f %.2f\n", (y[1] + y[2] - x[1] - x[2]) * k, (y[1] - x[1]) * k }')
    else
        us="—"; user="—"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$pipeline" "${get:-?}" "${set:-?}" "${p50get:-?}" "$us" "$user" >>"$work/results.tsv"
}

# One table row per target and pipeline, in the order first run: the median of
# each column over the rounds (a figure that is missing in a round is left out).
# Then, where portcullis and HAProxy both ran, issue 6's ratios from those medians.
median_rows() {
    python3 - "$work/results.tsv" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, pipeline, *figures = line.rstrip("\n").split("\t")
    rows.setdefault((name, pipeline), []).append(figures)
def median(values):
    nums = sorted(float(v) for v in values if v not in ("?", "—"))
    if not nums:
        return values[0]
    mid = len(nums) // 2
    m = nums[mid] if len(nums) % 2 else (nums[mid - 1] + nums[mid]) / 2
    decimals = len(values[0].split(".")[1]) if "." in values[0] else 0
    return f"{m:.{decimals}f}"
medians = {}
for (name, pipeline), runs in rows.items():
    cols = [median([r[i] for r in runs]) for i in range(5)]
    medians[(name, pipeline)] = cols
    print(f"| {name} | {pipeline} | " + " | ".join(cols) + " |")
# Issue 6's targets, from the same medians: portcullis against HAProxy, at most
# `limit` times its CPU per request and at least its GET throughput.
pairs = [("plain", "portcullis, plain (AUTH, policy)", "HAProxy, TCP mode", 1.0),
         ("TLS", "portcullis, TLS (AUTH, policy)", "HAProxy, TLS termination", 0.8),
         ("plain, multiplexed", "portcullis multiplexed, plain (AUTH, policy)", "HAProxy, TCP mode", 1.0),
         ("TLS, multiplexed", "portcullis multiplexed, TLS (AUTH, policy)", "HAProxy, TLS termination", 0.8)]
lines = []
for pipeline in dict.fromkeys(p for _, p in medians):
    for label, ours, peer, limit in pairs:
        a, b = medians.get((ours, pipeline)), medians.get((peer, pipeline))
        try:
            cpu = float(a[3]) / float(b[3])
            get = float(a[0]) / float(b[0])
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        verdict = "met" if cpu <= limit and get >= 1 else "not met"
        lines.append(f"| {label} | {pipeline} | {cpu:.2f}× (≤ {limit}×) | {get * 100:.0f} % (≥ 100 %) | {verdict} |")
if lines:
    print()
    print("| against HAProxy | pipeline | CPU per request | GET throughput | target |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(lines))
PY
}

# redis-benchmark uses one key: written once here, every target's GETs find
# the same value (the first target's would otherwise all miss).
redis-benchmark -h 127.0.0.1 -p "$RP" -a "$BACKEND_PW" -n 1000 -t set -q >/dev/null 2>&1

for round in $(seq "$ROUNDS"); do
for p in $PIPELINES; do
    run "redis-server direct" "" "$RP" "$p" -a "$BACKEND_PW"
    run "portcullis, plain (AUTH, policy)" "$portcullis_pid" "$PP" "$p" --user bench -a "$USER_PW"
    [[ -n "$baseline_pid" ]] && run "portcullis baseline, plain (AUTH, policy)" "$baseline_pid" "$BP" "$p" --user bench -a "$USER_PW"
    run "portcullis, TLS (AUTH, policy)" "$portcullis_pid" "$PT" "$p" --tls --cacert "$work/certs/ca.crt" --user bench -a "$USER_PW"
    [[ -n "$baseline_pid" ]] && run "portcullis baseline, TLS (AUTH, policy)" "$baseline_pid" "$BT" "$p" --tls --cacert "$work/certs/ca.crt" --user bench -a "$USER_PW"
    run "portcullis multiplexed, plain (AUTH, policy)" "$portcullis_pid" "$MP" "$p" --user bench -a "$USER_PW"
    run "portcullis multiplexed, TLS (AUTH, policy)" "$portcullis_pid" "$MT" "$p" --tls --cacert "$work/certs/ca.crt" --user bench -a "$USER_PW"
    [[ -n "$haproxy_pid" ]] && run "HAProxy, TCP mode" "$haproxy_pid" "$HP" "$p" -a "$BACKEND_PW"
    [[ -n "$haproxy_pid" ]] && run "HAProxy, TLS termination" "$haproxy_pid" "$HT" "$p" --tls --cacert "$work/certs/ca.crt" -a "$BACKEND_PW"
    [[ -n "$stunnel_pid" ]] && run "stunnel (TLS)" "$stunnel_pid" "$SP" "$p" --tls --cacert "$work/certs/ca.crt" -a "$BACKEND_PW"
    [[ -n "$twem_pid" ]] && run "twemproxy" "$twem_pid" "$TP" "$p" -a "$BACKEND_PW"
done
done

rounds_note=""
if ((ROUNDS > 1)); then
    rounds_note="; each figure the median of $ROUNDS rounds, every target run once in each, in turn"
fi
machine="$(nproc) vCPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -sr), $(date -u +%Y-%m-%d)"
table=$(
    echo "Machine: $machine. Command: \`N=$N ROUNDS=$ROUNDS WORKER_THREADS=$WORKER_THREADS SCHEDULER=$SCHEDULER YIELD=$YIELD${BASELINE_YIELD:+ BASELINE_YIELD=$BASELINE_YIELD} scripts/bench-e2e.sh\` (N=$N requests per test, $CLIENTS clients; rate limits on)$rounds_note."
    echo
    echo "| target | pipeline | GET req/s | SET req/s | GET p50 ms | proxy CPU µs/request | of which user space |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    median_rows
)
echo "$table"
replace_block() {
    python3 - "$1" "$2" <<'PY'
import sys, re
name, table = sys.argv[1], sys.argv[2]
path = "BENCHMARKS.md"
text = open(path).read()
start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
block = f"{start}\n{table}\n{end}"
if start in text:
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
else:
    text += "\n" + block + "\n"
open(path, "w").write(text)
PY
}
$write && replace_block bench-e2e "$table"

if [[ "${PG:-1}" != 0 ]] && { command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }; then
    echo
    pg_table=$(PORTCULLIS_BIN="$bin" PORTCULLIS_BASELINE_BIN="$baseline" WORKER_THREADS="$WORKER_THREADS" SCHEDULER="$SCHEDULER" YIELD="$YIELD" scripts/bench-pg.sh)
    echo "$pg_table"
    $write && replace_block bench-pg "$pg_table"
fi
