#!/usr/bin/env bash
# Memory per idle connection: redis-server, portcullis (one TLS Redis listener,
# AUTH at the proxy) and `portcullis bench redis --idle`, which opens N
# authenticated TLS connections, holds them idle, PINGs each at the end and
# reports the proxy's RSS growth per connection (from /proc/PID/status).
#
#   scripts/bench-idle.sh                 # N=10000, or what the open-file limit allows
#
# Environment: N (connections), HOLD (how long they stay idle, default 10s),
# PORTCULLIS_BIN (default target/release/portcullis, built if missing),
# MULTIPLEX=1 (the backend's `multiplex = true`: the sessions share backend
# connections instead of holding one each).
# The proxy needs two descriptors per connection (one with MULTIPLEX=1) and this
# script's client one: N is lowered to fit the open-file hard limit (printed when it is).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
HOLD=${HOLD:-10s}
MULTIPLEX=${MULTIPLEX:-0}
per=2; multiplex=false
[[ "$MULTIPLEX" == 1 ]] && { per=1; multiplex=true; }
command -v redis-server >/dev/null || { echo "bench-idle: redis-server is required (apt-get install redis-server)" >&2; exit 1; }

if [[ -n "${PORTCULLIS_BIN:-}" ]]; then
    bin=$(realpath "$PORTCULLIS_BIN")
else
    [[ -x target/release/portcullis ]] || cargo build --release --quiet
    bin=$PWD/target/release/portcullis
fi

hard=$(ulimit -Hn)
if [[ "$hard" != unlimited ]] && (( per * N + 100 > hard )); then
    fit=$(( (hard - 100) / per ))
    echo "bench-idle: open-file hard limit $hard: $N connections need $((per * N + 100)) descriptors in the proxy; measuring $fit" >&2
    N=$fit
fi
ulimit -n "$hard"

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

BACKEND_PW="Bench-Backend-Secret-0123456789-abcdefXYZ"
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --requirepass "$BACKEND_PW" --save "" --appendonly no \
    --maxclients $((N + 100)) >/dev/null &
pids+=($!)
wait_port "$RP"

"$bin" gen-certs --out "$work/certs" >/dev/null
PT=$(free_port)
cat >"$work/portcullis.toml" <<EOF
[admin]
enabled = false
[limits]
max_connections = $((N + 100))
max_connections_per_ip = $((N + 100))
max_unauthenticated = $((N + 100))
max_unauthenticated_per_ip = $((N + 100))
[limits.login_backoff]
enabled = false
[[backend]]
name = "redis"
protocol = "redis"
address = "127.0.0.1:$RP"
password = "\${BENCH_BACKEND_PW}"
multiplex = $multiplex
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
BENCH_BACKEND_PW=$BACKEND_PW BENCH_USER_PW=bench-password RUST_LOG=warn "$bin" run --config "$work/portcullis.toml" 2>"$work/portcullis.log" &
proxy=$!
pids+=($proxy)
wait_port "$PT" || { cat "$work/portcullis.log" >&2; exit 1; }
sleep 0.5

echo "Machine: $(nproc) vCPU, $(uname -sr), $(date -u +%F). Command: \`N=$N HOLD=$HOLD MULTIPLEX=$MULTIPLEX scripts/bench-idle.sh\`"
BENCH_PW=bench-password "$bin" bench redis --target "localhost:$PT" --tls --ca "$work/certs/ca.crt" \
    --user bench --password-env BENCH_PW --idle --clients "$N" --duration "$HOLD" --watch-pid "$proxy" "$@"
