#!/usr/bin/env python3
"""Generate src/redis/commands.rs: the Redis command table with ACL categories.

Starts a throwaway redis-server on a free loopback port (no persistence, its
own temporary directory), asks it `COMMAND` and `ACL CAT` over raw RESP, and
writes a sorted static table that `src/redis/policy.rs` compiles ACL rules
against. Only the Python standard library is used, so the script runs on any
machine that has redis-server.

Usage:
    scripts/gen-redis-commands.py [--redis-server PATH] [--out PATH]

The output is passed through rustfmt when it is on PATH so that `cargo fmt`
leaves the generated file alone.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "src", "redis", "commands.rs")

# The categories Redis 7 defines, in the order of its ACLCommandCategories
# table (and of `ACL CAT`). The generator refuses a server whose list differs,
# because policy.rs documents and tests exactly these.
EXPECTED_CATEGORIES = [
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string",
    "bitmap", "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow",
    "blocking", "dangerous", "connection", "transaction", "scripting",
]

# Seconds to wait for the throwaway server to accept connections.
STARTUP_TIMEOUT = 10.0
# Attempts to find a port: another process may grab the one we picked between
# our probe and redis-server's bind.
PORT_ATTEMPTS = 5


class RespError(Exception):
    """An error reply (`-ERR ...`) from the server."""


class Resp:
    """A minimal blocking RESP2 client: enough for COMMAND, ACL CAT and INFO."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode() if isinstance(arg, str) else arg
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        reply = self.read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("redis-server closed the connection")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError("unexpected RESP type byte %r" % kind)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(redis_server, workdir):
    """Start redis-server and return (process, connected client)."""
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        log = os.path.join(workdir, "redis.log")
        proc = subprocess.Popen(
            [
                redis_server,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", workdir,
                "--logfile", log,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                time.sleep(0.05)
                continue
            client = Resp(sock)
            try:
                if client.call("PING") == "PONG":
                    return proc, client
            except (RespError, OSError):
                pass
            sock.close()
            time.sleep(0.05)
        stop_server(proc)
        # Exited early: most likely the port was taken; try another one.
    with open(os.path.join(workdir, "redis.log"), errors="replace") as f:
        sys.stderr.write(f.read())
    sys.exit("gen-redis-commands: could not start %s" % redis_server)


def stop_server(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_version(client):
    for line in client.call("INFO", "server").splitlines():
        if line.startswith("redis_version:"):
            return line.split(":", 1)[1].strip()
    sys.exit("gen-redis-commands: INFO server has no redis_version")


def parse_entry(entry, categories):
    """One `COMMAND` reply entry → dict(name, arity, cats, no_auth, subs)."""
    name, arity, flags = entry[0], entry[1], entry[2]
    cats = []
    for cat in entry[6]:
        cat = cat.lstrip("@")
        if cat not in categories:
            sys.exit("gen-redis-commands: %s has unknown category @%s" % (name, cat))
        cats.append(cat)
    subs = entry[9] if len(entry) > 9 and entry[9] else []
    return {
        "name": name.lower(),
        "arity": arity,
        "cats": sorted(cats, key=categories.index),
        "no_auth": "no_auth" in flags,
        "subs": [parse_entry(s, categories) for s in subs],
    }


def check_name(name):
    # Lookup compares ASCII-lowercased input bytes with these names, so they
    # must already be lowercase ASCII without the separator.
    if not name or not name.isascii() or name != name.lower() or "|" in name:
        sys.exit("gen-redis-commands: unexpected command name %r" % name)


def rust_cats(cats):
    return " | ".join(c.upper() for c in cats) if cats else "0"


def render(version, categories, commands):
    out = []
    w = out.append
    w("// @generated by scripts/gen-redis-commands.py from redis-server %s." % version)
    w("// Do not edit: change the script and re-run it.")
    w("")
    w("//! The Redis command table: every command redis-server %s knows, with its" % version)
    w("//! ACL categories and subcommands, as `COMMAND` reported them.")
    w("//!")
    w("//! `policy.rs` compiles ACL rules against this table; each command and")
    w("//! subcommand owns one permission slot, like Redis's command ids.")
    w("")
    w("use std::cmp::Ordering;")
    w("")
    w("/// Version of the redis-server this table was read from.")
    w('pub const REDIS_VERSION: &str = "%s";' % version)
    w("")
    w("/// ACL category bits; bit `i` is the category `CATEGORY_NAMES[i]`.")
    w("pub mod category {")
    for i, cat in enumerate(categories):
        w("    /// The `@%s` ACL category." % cat)
        w("    pub const %s: u32 = 1 << %d;" % (cat.upper(), i))
    w("}")
    w("")
    w("use category::*;")
    w("")
    w("/// Every ACL category name without the `@`, in Redis's order (`ACL CAT`).")
    w("pub const CATEGORY_NAMES: [&str; %d] = [" % len(categories))
    for cat in categories:
        w('    "%s",' % cat)
    w("];")
    w("")
    slot = 0
    body = []
    for cmd in commands:
        body.append("    CommandSpec {")
        body.append('        name: "%s",' % cmd["name"])
        body.append("        arity: %d," % cmd["arity"])
        body.append("        categories: %s," % rust_cats(cmd["cats"]))
        body.append("        no_auth: %s," % ("true" if cmd["no_auth"] else "false"))
        body.append("        slot: %d," % slot)
        slot += 1
        if cmd["subs"]:
            body.append("        subcommands: &[")
            for sub in cmd["subs"]:
                body.append("            SubcommandSpec {")
                body.append('                name: "%s",' % sub["name"])
                body.append("                arity: %d," % sub["arity"])
                body.append("                categories: %s," % rust_cats(sub["cats"]))
                body.append("                slot: %d," % slot)
                body.append("            },")
                slot += 1
            body.append("        ],")
        else:
            body.append("        subcommands: &[],")
        body.append("    },")
    w("/// Number of permission slots: one per command plus one per subcommand.")
    w("pub const SLOT_COUNT: usize = %d;" % slot)
    w("")
    w(RUST_TYPES.strip("\n"))
    w("")
    w("/// Every command, sorted by name so [`lookup`] can binary-search it.")
    w("pub static COMMANDS: [CommandSpec; %d] = [" % len(commands))
    out.extend(body)
    w("];")
    w("")
    w(RUST_FUNCTIONS.strip("\n"))
    return "\n".join(out) + "\n"


# Hand-written Rust emitted verbatim: kept here so commands.rs stays purely
# generated and still carries its own lookup code and tests.
RUST_TYPES = r'''
/// A Redis command as `COMMAND` describes it.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lowercase name.
    pub name: &'static str,
    /// Redis arity: `n > 0` means exactly `n` words including the name, `n < 0` at least `-n`.
    pub arity: i32,
    /// ACL categories as a bitset of [`category`] bits.
    pub categories: u32,
    /// Redis runs it without any ACL check (`no_auth` flag: AUTH and HELLO).
    pub no_auth: bool,
    /// This command's permission slot, below [`SLOT_COUNT`].
    pub slot: u16,
    /// Subcommands sorted by name; empty unless this is a container command.
    pub subcommands: &'static [SubcommandSpec],
}

/// A subcommand of a container command such as `config|get`.
#[derive(Debug)]
pub struct SubcommandSpec {
    /// Lowercase name without the `parent|` prefix.
    pub name: &'static str,
    /// Redis arity, counting the parent's name and the subcommand's.
    pub arity: i32,
    /// ACL categories as a bitset of [`category`] bits.
    pub categories: u32,
    /// This subcommand's permission slot, below [`SLOT_COUNT`].
    pub slot: u16,
}
'''

RUST_FUNCTIONS = r'''
impl CommandSpec {
    /// Whether this is a container command (`config`, `client`, …) whose first argument names a subcommand.
    pub fn has_subcommands(&self) -> bool {
        !self.subcommands.is_empty()
    }

    /// The subcommand named `sub`, compared ASCII-case-insensitively, without allocating.
    pub fn subcommand(&self, sub: &[u8]) -> Option<&'static SubcommandSpec> {
        let subs = self.subcommands;
        subs.binary_search_by(|s| cmp_lowercased(s.name, sub))
            .ok()
            .and_then(|i| subs.get(i))
    }
}

/// The command named `name`, compared ASCII-case-insensitively (Redis command names
/// are case-insensitive), without allocating.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS
        .binary_search_by(|c| cmp_lowercased(c.name, name))
        .ok()
        .and_then(|i| COMMANDS.get(i))
}

/// The bit of the category `name` (without `@`, any case, as Redis accepts it).
pub fn category_by_name(name: &str) -> Option<u32> {
    CATEGORY_NAMES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .map(|i| 1 << i)
}

/// Orders a stored lowercase name against client bytes as if the bytes were lowercased.
fn cmp_lowercased(stored: &str, input: &[u8]) -> Ordering {
    stored
        .bytes()
        .cmp(input.iter().map(u8::to_ascii_lowercase))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_strictly_sorted_so_binary_search_works() {
        for pair in COMMANDS.windows(2) {
            assert!(pair[0].name < pair[1].name, "{} / {}", pair[0].name, pair[1].name);
        }
        for cmd in &COMMANDS {
            for pair in cmd.subcommands.windows(2) {
                assert!(pair[0].name < pair[1].name, "{}|{}", cmd.name, pair[1].name);
            }
        }
    }

    #[test]
    fn every_entry_is_found_in_any_case() {
        for cmd in &COMMANDS {
            let upper = cmd.name.to_ascii_uppercase();
            assert!(std::ptr::eq(lookup(upper.as_bytes()).unwrap(), cmd));
            for sub in cmd.subcommands {
                let found = cmd.subcommand(sub.name.to_ascii_uppercase().as_bytes());
                assert!(std::ptr::eq(found.unwrap(), sub));
            }
        }
        assert!(lookup(b"").is_none());
        assert!(lookup(b"nosuchcommand").is_none());
        assert!(lookup(b"get\0").is_none());
        assert!(lookup(b"config|get").is_none());
    }

    #[test]
    fn slots_are_unique_and_in_range() {
        let mut seen = vec![false; SLOT_COUNT];
        let slots = COMMANDS.iter().flat_map(|c| {
            std::iter::once(c.slot).chain(c.subcommands.iter().map(|s| s.slot))
        });
        for slot in slots {
            let slot = usize::from(slot);
            assert!(!seen[slot], "slot {slot} used twice");
            seen[slot] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn categories_by_name() {
        assert_eq!(category_by_name("keyspace"), Some(KEYSPACE));
        assert_eq!(category_by_name("SCRIPTING"), Some(SCRIPTING));
        assert_eq!(category_by_name("all"), None);
        assert_eq!(category_by_name("@read"), None);
        for (i, name) in CATEGORY_NAMES.iter().enumerate() {
            assert_eq!(category_by_name(name), Some(1 << i));
        }
    }
}
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gen-redis-commands-") as workdir:
        proc, client = start_server(args.redis_server, workdir)
        try:
            version = server_version(client)
            categories = client.call("ACL", "CAT")
            raw = client.call("COMMAND")
        finally:
            client.sock.close()
            stop_server(proc)

    if categories != EXPECTED_CATEGORIES:
        sys.exit("gen-redis-commands: ACL CAT differs from the Redis 7 list: %r" % categories)
    commands = sorted((parse_entry(e, categories) for e in raw), key=lambda c: c["name"].encode())
    for cmd in commands:
        check_name(cmd["name"])
        prefix = cmd["name"] + "|"
        for sub in cmd["subs"]:
            if not sub["name"].startswith(prefix):
                sys.exit("gen-redis-commands: subcommand %r of %r" % (sub["name"], cmd["name"]))
            sub["name"] = sub["name"][len(prefix):]
            check_name(sub["name"])
        cmd["subs"].sort(key=lambda s: s["name"].encode())

    text = render(version, categories, commands)
    rustfmt = shutil.which("rustfmt")
    if rustfmt:
        text = subprocess.run(
            [rustfmt, "--edition", "2021", "--emit", "stdout"],
            input=text, capture_output=True, text=True, check=True,
        ).stdout
    else:
        print("gen-redis-commands: rustfmt not found; output is unformatted", file=sys.stderr)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    subs = sum(len(c["subs"]) for c in commands)
    print("wrote %s: %d commands, %d subcommands (redis %s)" % (args.out, len(commands), subs, version))


if __name__ == "__main__":
    main()
