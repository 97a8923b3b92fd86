//! Compares CommandPolicy::check with a real redis-server's ACL DRYRUN, and the
//! reply builders with the server's own error replies.

use portcullis::redis::commands::{self, COMMANDS};
use portcullis::redis::policy::{self, CommandPolicy, DenyReason, Verdict};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn connect(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }
    fn send(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&out).unwrap();
    }
    /// Reads one reply, also returning its raw bytes.
    fn read_raw(&mut self) -> (Reply, Vec<u8>) {
        let mut raw = Vec::new();
        let r = self.read_into(&mut raw);
        (r, raw)
    }
    fn read(&mut self) -> Reply {
        self.read_raw().0
    }
    fn read_into(&mut self, raw: &mut Vec<u8>) -> Reply {
        let mut line = Vec::new();
        self.r.read_until(b'\n', &mut line).unwrap();
        raw.extend_from_slice(&line);
        let body = line[1..line.len() - 2].to_vec();
        let num = || std::str::from_utf8(&body).unwrap().parse::<i64>().unwrap();
        match line[0] {
            b'+' => Reply::Simple(body),
            b'-' => Reply::Error(body),
            b':' => Reply::Int(num()),
            b'$' => {
                let n = num();
                if n < 0 {
                    return Reply::Bulk(None);
                }
                let mut buf = vec![0; n as usize + 2];
                self.r.read_exact(&mut buf).unwrap();
                raw.extend_from_slice(&buf);
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
            b'*' => {
                let n = num();
                if n < 0 {
                    return Reply::Array(None);
                }
                Reply::Array(Some((0..n).map(|_| self.read_into(raw)).collect()))
            }
            b => panic!("unexpected type byte {b}"),
        }
    }
    fn call(&mut self, args: &[&[u8]]) -> Reply {
        self.send(args);
        self.read()
    }
}

struct Server {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn start() -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("helper_policy_{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut c) = Conn::connect(port) {
            if c.call(&[b"PING"]) == Reply::Simple(b"PONG".to_vec()) {
                return server;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server did not start");
}

/// Every (words, name, sub) to DRYRUN: each command and subcommand padded to its arity.
/// (words sent to DRYRUN, command name, subcommand name)
type Probe = (Vec<Vec<u8>>, &'static str, Option<&'static str>);

fn probes() -> Vec<Probe> {
    let pad = |mut words: Vec<Vec<u8>>, arity: i32| {
        while (words.len() as i32) < arity.abs() {
            words.push(b"x".to_vec());
        }
        words
    };
    let mut out = Vec::new();
    for cmd in &COMMANDS {
        if !cmd.has_subcommands() || cmd.arity == -1 {
            out.push((pad(vec![cmd.name.into()], cmd.arity), cmd.name, None));
        }
        for sub in cmd.subcommands {
            let words = pad(vec![cmd.name.into(), sub.name.into()], sub.arity);
            out.push((words, cmd.name, Some(sub.name)));
        }
    }
    out
}

/// Small deterministic generator for random rule sequences.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn rule_sets() -> Vec<String> {
    let mut sets: Vec<String> = [
        policy::DEFAULT_RULES,
        "",
        "+@all",
        "-@all",
        "allcommands",
        "nocommands",
        "+@all -@dangerous +config|get",
        "-@all +@admin -config|get",
        "-@all +config -config|set",
        "+@all -client +client|id",
        "-@all +@slow -@admin",
        "-@all +@fast +@slow -@dangerous +flushall",
        "+@read +@write -@keyspace +del",
        "-@all +@connection",
        "+@all -@slow",
        "-@all +@slow",
        "+@all -acl +acl|whoami",
        "+command|info +@connection -command|docs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for cat in commands::CATEGORY_NAMES {
        sets.push(format!("+@{cat}"));
        sets.push(format!("+@all -@{cat}"));
        sets.push(format!("-@all +@{cat} -@slow"));
    }
    // Random sequences over categories, commands and subcommands.
    let mut pool: Vec<String> = commands::CATEGORY_NAMES
        .iter()
        .map(|c| format!("@{c}"))
        .collect();
    pool.push("@all".into());
    for cmd in &COMMANDS {
        pool.push(cmd.name.into());
        for sub in cmd.subcommands {
            pool.push(format!("{}|{}", cmd.name, sub.name));
        }
    }
    let mut rng = Lcg(0x5eed);
    for _ in 0..300 {
        let n = 1 + rng.next(10);
        let tokens: Vec<String> = (0..n)
            .map(|_| {
                let sign = if rng.next(2) == 0 { '+' } else { '-' };
                // Bias towards categories so rules overlap a lot.
                let item = if rng.next(2) == 0 {
                    &pool[rng.next(commands::CATEGORY_NAMES.len() + 1)]
                } else {
                    &pool[rng.next(pool.len())]
                };
                format!("{sign}{item}")
            })
            .collect();
        sets.push(tokens.join(" "));
    }
    sets
}

#[test]
fn check_agrees_with_acl_dryrun() {
    let server = start();
    let mut c = Conn::connect(server.port).unwrap();
    let probes = probes();
    let sets = rule_sets();
    let (mut total, mut agree) = (0usize, 0usize);
    let mut disagreements = Vec::new();
    for rules in &sets {
        let policy = CommandPolicy::parse(rules).unwrap_or_else(|e| panic!("{rules}: {e}"));
        let mut setuser: Vec<&[u8]> = vec![b"ACL", b"SETUSER", b"t", b"reset", b"on", b"nopass"];
        setuser.extend([&b"~*"[..], b"&*"]);
        setuser.extend(rules.split_whitespace().map(str::as_bytes));
        assert_eq!(
            c.call(&setuser),
            Reply::Simple(b"OK".to_vec()),
            "ACL SETUSER {rules}"
        );
        // Pipeline all DRYRUNs for this rule set.
        for (words, _, _) in &probes {
            let mut args: Vec<&[u8]> = vec![b"ACL", b"DRYRUN", b"t"];
            args.extend(words.iter().map(Vec::as_slice));
            c.send(&args);
        }
        for (words, name, sub) in &probes {
            let redis_allows = match c.read() {
                Reply::Simple(s) if s == b"OK" => true,
                Reply::Bulk(Some(s)) if s.starts_with(b"This user has no permissions to run") => {
                    false
                }
                other => panic!("DRYRUN {words:?}: {other:?}"),
            };
            let ours = policy.check(name.as_bytes(), sub.map(str::as_bytes)) == Verdict::Allow;
            total += 1;
            if ours == redis_allows {
                agree += 1;
            } else if disagreements.len() < 20 {
                disagreements.push(format!(
                    "{rules:?}: {name} {sub:?}: redis {redis_allows}, ours {ours}"
                ));
            }
        }
    }
    println!(
        "rule sets: {}, decisions: {total}, agree: {agree} ({:.3}%)",
        sets.len(),
        100.0 * agree as f64 / total as f64
    );
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn rejected_tokens_match_redis() {
    let server = start();
    let mut c = Conn::connect(server.port).unwrap();
    // Redis also rejects these (except first-arg rules, which we refuse on purpose).
    for token in [
        "+@nosuch",
        "+gte",
        "-nosuch|x",
        "+config|nosuch",
        "+config|",
        "+config|get|x",
        "-get|x",
    ] {
        assert!(CommandPolicy::parse(token).is_err(), "{token}");
        let r = c.call(&[b"ACL", b"SETUSER", b"e", token.as_bytes()]);
        assert!(
            matches!(r, Reply::Error(_)),
            "redis accepted {token}: {r:?}"
        );
    }
    assert!(CommandPolicy::parse("+get|x").is_err());
    assert_eq!(
        c.call(&[b"ACL", b"SETUSER", b"e", b"+get|x"]),
        Reply::Simple(b"OK".to_vec())
    );
}

#[test]
fn replies_match_redis_bytes() {
    let server = start();
    let mut admin = Conn::connect(server.port).unwrap();
    let rules = "-@all +@read +json.get";
    let mut setuser: Vec<&[u8]> = vec![b"ACL", b"SETUSER", b"u", b"on", b">pw", b"~*", b"&*"];
    setuser.extend(
        rules
            .split_whitespace()
            .filter(|t| !t.contains('.'))
            .map(str::as_bytes),
    );
    assert_eq!(admin.call(&setuser), Reply::Simple(b"OK".to_vec()));
    let policy = CommandPolicy::parse(rules).unwrap();

    let mut c = Conn::connect(server.port).unwrap();
    assert_eq!(
        c.call(&[b"AUTH", b"u", b"pw"]),
        Reply::Simple(b"OK".to_vec())
    );
    let long_sub = [b"no\r\nsuch".as_slice(), &[b'x'; 200]].concat();
    let cases: Vec<Vec<&[u8]>> = vec![
        vec![b"SET", b"k", b"v"],
        vec![b"CONFIG", b"GET", b"x"],
        vec![b"CoNfIg", b"gEt", b"x"],
        vec![b"client", b"kill", b"x"],
        vec![b"flushall"],
        vec![b"command"],
        vec![b"FOO\r\nBAR\0zz", b"a\nb", &[b'c'; 200]],
        vec![&[b'F'; 200], &[b'a'; 100], &[b'b'; 100], b"c"],
        vec![b"FOO", b"aaaaaaaaaa\0yy", b"bbbbbbbbbb"],
        vec![b"FOO"],
        vec![b"nosuch", b""],
        vec![b"CONFIG", &long_sub],
        vec![b"config", b"nosuch"],
        vec![b"client", b"NoSuch", b"x"],
        vec![b"object", b"nosuch"],
    ];
    let mut compared = 0;
    for words in &cases {
        let (name, args) = (words[0], &words[1..]);
        let verdict = policy.check(name, args.first().copied());
        let Verdict::Deny(reason) = verdict else {
            panic!("{words:?} allowed");
        };
        let ours = policy::deny_reply(reason, name, args.iter().copied());
        c.send(words);
        let (_, raw) = c.read_raw();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&raw),
            "{words:?} ({reason:?})"
        );
        compared += 1;
    }
    assert_eq!(
        policy.check(b"json.get", None),
        Verdict::Allow,
        "module rule"
    );
    assert_eq!(
        policy.check(b"json.set", None),
        Verdict::Deny(DenyReason::UnknownCommand)
    );
    println!("compared {compared} replies byte for byte");
}
