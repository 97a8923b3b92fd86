#!/usr/bin/env python3
"""Opens N authenticated, idle TLS connections to a portcullis Redis listener and
reports the proxy's RSS growth per connection (from /proc/PID/status).

    scripts/idle-connections.py --pid PID --port PORT --ca certs/ca.crt --user U --password P [-n 5000]

The proxy needs room for the run: two descriptors per connection (client and
backend; `ulimit -n` above 2N for the proxy, N for this script), redis-server
started with `--maxclients` above N, and caps and login backoff relaxed:

    [limits]
    max_connections = 19000
    max_unauthenticated = 19000
    max_unauthenticated_per_ip = 19000
    [limits.login_backoff]
    enabled = false
"""
import argparse, asyncio, ssl, resource

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS")

async def one(port, ctx, user, password, conns):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    msg = f"*3\r\n$4\r\nAUTH\r\n${len(user)}\r\n{user}\r\n${len(password)}\r\n{password}\r\n".encode()
    w.write(msg)
    await w.drain()
    reply = await r.readline()
    assert reply == b"+OK\r\n", reply
    conns.append((r, w))

async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("-n", type=int, default=5000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < a.n + 100:
        raise SystemExit(f"open-file hard limit {hard} is too low for {a.n} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.n + 1000), hard))
    ctx = ssl.create_default_context(cafile=a.ca)
    before = rss_kib(a.pid)
    conns = []
    for start in range(0, a.n, 200):
        await asyncio.gather(*(one(a.port, ctx, a.user, a.password, conns) for _ in range(min(200, a.n - start))))
    await asyncio.sleep(1)
    after = rss_kib(a.pid)
    print(f"{a.n} idle authenticated TLS connections: RSS {before} KiB -> {after} KiB, "
          f"{(after - before) / a.n:.1f} KiB per connection")

asyncio.run(main())
