//! Per-user command policy in Redis ACL rule syntax, decided without I/O.
//!
//! A policy is written like the command part of `ACL SETUSER` (`+@read -keys
//! +config|get`) and means what it would mean to Redis 7.0: rules apply left to
//! right from "no commands", and the last rule touching a command or subcommand
//! wins. [`CommandPolicy::parse`] compiles the rules against the generated
//! command table ([`super::commands`]) into one bit per command and subcommand,
//! so [`CommandPolicy::check`] is a table lookup and a bit test. Denials carry
//! the reason, and the `*_reply` functions give the bytes Redis 7.0 itself would
//! send, so a client cannot tell the proxy's refusal from the server's.

use super::commands::{self, CommandSpec, SLOT_COUNT};
use thiserror::Error;

/// The policy a user gets when the configuration names none: everything except
/// what could reveal or change the backend's credentials, configuration,
/// replication or persistence, and scripts (which could call any of those).
pub const DEFAULT_RULES: &str = "+@all -@admin -@dangerous -@scripting \
     -config -acl -module -debug -monitor -shutdown -replicaof -slaveof -migrate \
     -sync -psync -client|kill -client|info -eval -evalsha -eval_ro -evalsha_ro -fcall -fcall_ro \
     -script -function";

/// Redis caps client-supplied names echoed in errors at 128 bytes (`%.128s` in
/// server.c); we cap the same way so replies match byte for byte.
const MAX_ECHO: usize = 128;

/// `u64` words needed for one bit per table slot.
const SLOT_WORDS: usize = SLOT_COUNT.div_ceil(64);

/// A rule that cannot be compiled; each variant holds the offending token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// `+@name` or `-@name` with a category Redis 7 does not define.
    #[error("ACL rule '{0}': unknown category")]
    UnknownCategory(String),
    /// A command name that is not in the table and has no `.` (module commands are `module.name`).
    #[error(
        "ACL rule '{0}': unknown command (not in the redis {v} command table)",
        v = commands::REDIS_VERSION
    )]
    UnknownCommand(String),
    /// `name|sub` where `sub` is not a subcommand of `name`.
    #[error("ACL rule '{0}': unknown subcommand")]
    UnknownSubcommand(String),
    /// `name|arg` on a command without subcommands: Redis's deprecated first-argument rules are not supported.
    #[error("ACL rule '{0}': command has no subcommands (first-argument rules are not supported)")]
    NoSubcommands(String),
    /// A token that is not a command rule (key patterns, passwords, `on`, … belong elsewhere).
    #[error(
        "ACL rule '{0}': expected +@category, -@category, +command, -command, \
         +command|subcommand, -command|subcommand, allcommands or nocommands"
    )]
    Syntax(String),
}

/// The outcome of [`CommandPolicy::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the command to the backend.
    Allow,
    /// Answer the client with [`deny_reply`] and do not forward.
    Deny(DenyReason),
}

/// Why a command was refused; each maps to the reply Redis 7.0 would send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// A known command the rules deny: `-NOPERM …`.
    NoPermission,
    /// A name missing from the table while the policy does not allow unknown
    /// commands: `-ERR unknown command …`, as a backend of the table's version says.
    UnknownCommand,
    /// A container command (`config`, `client`, …) with a subcommand missing
    /// from the table, while the container is not allowed as a whole:
    /// `-ERR unknown subcommand …`, as a backend of the table's version says.
    UnknownSubcommand,
}

impl DenyReason {
    /// A fixed label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::NoPermission => "noperm",
            DenyReason::UnknownCommand => "unknown_command",
            DenyReason::UnknownSubcommand => "unknown_subcommand",
        }
    }
}

/// Compiled command rules for one user.
///
/// Semantics follow Redis 7.0's `ACLSetSelector`:
///
/// * `+@cat`/`-@cat` touch every command whose own categories include `cat`
///   (a container command such as `config` carries `@slow`, and touching it
///   touches all its subcommands), and every subcommand whose own categories
///   include it (`+@admin` allows `config|set`, not `config|help`).
/// * `+name`/`-name` touch the command and all its subcommands;
///   `+name|sub`/`-name|sub` touch one subcommand.
/// * `+@all`/`allcommands` and `-@all`/`nocommands` reset everything.
/// * Commands Redis runs without an ACL check (`auth`, `hello`, `quit`,
///   `reset`: the `no_auth` flag) are always allowed, as in Redis; the session
///   is expected to handle AUTH and HELLO itself before asking.
///
/// Commands missing from the table (module commands, commands of newer Redis
/// versions) are allowed only if the last `@all` rule was `+@all`/`allcommands`
/// — category and name rules do not touch them, as Redis skips module commands
/// in category rules — or if a `+module.name` rule names them. Rules accept
/// unknown names only when they contain a `.` (the module naming convention,
/// which no core command uses), so a typo such as `+gte` is an error rather
/// than a rule for a command that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPolicy {
    /// One bit per [`CommandSpec::slot`] / `SubcommandSpec::slot`.
    allowed: [u64; SLOT_WORDS],
    /// Whether commands missing from the table (and from `modules`) are allowed.
    unknown_allowed: bool,
    /// Explicit rules for names missing from the table, lowercase, sorted, one entry per name.
    modules: Vec<(Box<str>, bool)>,
}

impl CommandPolicy {
    /// Compiles whitespace-separated ACL command rules, applied left to right from "no commands".
    pub fn parse(rules: &str) -> Result<CommandPolicy, PolicyError> {
        let mut policy = CommandPolicy {
            allowed: [0; SLOT_WORDS],
            unknown_allowed: false,
            modules: Vec::new(),
        };
        for token in rules.split_whitespace() {
            policy.apply(token)?;
        }
        Ok(policy)
    }

    /// The policy for [`DEFAULT_RULES`].
    pub fn default_policy() -> CommandPolicy {
        // DEFAULT_RULES is a constant checked by the `default_rules_parse` test,
        // so this cannot fail at run time with the committed command table.
        let mut p =
            CommandPolicy::parse(DEFAULT_RULES).expect("DEFAULT_RULES compile against the table");
        // A backend newer than the table may have commands the table does not
        // know; the default does not let them through unseen (`+@all` in a
        // user's own rules does, as in Redis).
        p.unknown_allowed = false;
        p
    }

    /// Decides whether a user may run `name` (any case) with first argument `sub`.
    ///
    /// Pass the first argument whenever there is one: it is ignored unless
    /// `name` is a container command. A container called without a
    /// subcommand is checked as the container itself (that is what Redis
    /// checks for `COMMAND`; for the others Redis answers with an arity error).
    /// A container called with a subcommand missing from the table is allowed
    /// only if the container and all its known subcommands are allowed (as
    /// after `+config`), so a newer backend's subcommands cannot slip past a
    /// partial rule such as `+config|get`.
    pub fn check(&self, name: &[u8], sub: Option<&[u8]>) -> Verdict {
        self.check_spec(commands::lookup(name), name, sub)
    }

    /// [`check`](Self::check) for a caller that has looked `name` up already
    /// (`spec` is what [`commands::lookup`] gave for it).
    pub fn check_spec(
        &self,
        spec: Option<&CommandSpec>,
        name: &[u8],
        sub: Option<&[u8]>,
    ) -> Verdict {
        let Some(cmd) = spec else {
            return self.check_unknown(name);
        };
        if cmd.no_auth {
            return Verdict::Allow;
        }
        let slot = match sub {
            Some(sub) if cmd.has_subcommands() => match cmd.subcommand(sub) {
                Some(spec) => spec.slot,
                None if self.allows_whole(cmd) => return Verdict::Allow,
                None => return Verdict::Deny(DenyReason::UnknownSubcommand),
            },
            _ => cmd.slot,
        };
        if self.bit(slot) {
            Verdict::Allow
        } else {
            Verdict::Deny(DenyReason::NoPermission)
        }
    }

    fn check_unknown(&self, name: &[u8]) -> Verdict {
        let rule = self
            .modules
            .binary_search_by(|(m, _)| m.bytes().cmp(name.iter().map(u8::to_ascii_lowercase)))
            .ok()
            .and_then(|i| self.modules.get(i));
        match rule {
            Some((_, true)) => Verdict::Allow,
            Some((_, false)) => Verdict::Deny(DenyReason::NoPermission),
            None if self.unknown_allowed => Verdict::Allow,
            None => Verdict::Deny(DenyReason::UnknownCommand),
        }
    }

    fn allows_whole(&self, cmd: &CommandSpec) -> bool {
        self.bit(cmd.slot) && cmd.subcommands.iter().all(|s| self.bit(s.slot))
    }

    fn bit(&self, slot: u16) -> bool {
        let slot = usize::from(slot);
        self.allowed
            .get(slot / 64)
            .is_some_and(|word| word & (1 << (slot % 64)) != 0)
    }

    fn set(&mut self, slot: u16, allow: bool) {
        let slot = usize::from(slot);
        if let Some(word) = self.allowed.get_mut(slot / 64) {
            if allow {
                *word |= 1 << (slot % 64);
            } else {
                *word &= !(1 << (slot % 64));
            }
        }
    }

    /// Redis's `ACLChangeSelectorPerm`: a command rule covers its subcommands.
    fn set_command(&mut self, cmd: &CommandSpec, allow: bool) {
        self.set(cmd.slot, allow);
        for sub in cmd.subcommands {
            self.set(sub.slot, allow);
        }
    }

    fn set_all(&mut self, allow: bool) {
        self.allowed = [if allow { u64::MAX } else { 0 }; SLOT_WORDS];
        self.unknown_allowed = allow;
        self.modules.clear();
    }

    fn apply(&mut self, token: &str) -> Result<(), PolicyError> {
        if token.eq_ignore_ascii_case("+@all") || token.eq_ignore_ascii_case("allcommands") {
            self.set_all(true);
            return Ok(());
        }
        if token.eq_ignore_ascii_case("-@all") || token.eq_ignore_ascii_case("nocommands") {
            self.set_all(false);
            return Ok(());
        }
        let syntax = || PolicyError::Syntax(token.to_owned());
        let (allow, rest) = if let Some(rest) = token.strip_prefix('+') {
            (true, rest)
        } else if let Some(rest) = token.strip_prefix('-') {
            (false, rest)
        } else {
            return Err(syntax());
        };
        if rest.is_empty() {
            return Err(syntax());
        }

        if let Some(category) = rest.strip_prefix('@') {
            let bits = commands::category_by_name(category)
                .ok_or_else(|| PolicyError::UnknownCategory(token.to_owned()))?;
            // Redis's ACLSetSelectorCommandBitsForCategory: the container's own
            // categories cascade to its subcommands, then each subcommand
            // matches by its own categories.
            for cmd in &commands::COMMANDS {
                if cmd.categories & bits != 0 {
                    self.set_command(cmd, allow);
                }
                for sub in cmd.subcommands {
                    if sub.categories & bits != 0 {
                        self.set(sub.slot, allow);
                    }
                }
            }
            return Ok(());
        }

        let (name, sub) = match rest.split_once('|') {
            Some((name, sub)) => (name, Some(sub)),
            None => (rest, None),
        };
        let Some(cmd) = commands::lookup(name.as_bytes()) else {
            if sub.is_none() && name.contains('.') {
                self.set_module(name, allow);
                return Ok(());
            }
            return Err(PolicyError::UnknownCommand(token.to_owned()));
        };
        match sub {
            None => self.set_command(cmd, allow),
            Some(_) if !cmd.has_subcommands() => {
                return Err(PolicyError::NoSubcommands(token.to_owned()))
            }
            Some(sub) => {
                let spec = cmd
                    .subcommand(sub.as_bytes())
                    .ok_or_else(|| PolicyError::UnknownSubcommand(token.to_owned()))?;
                self.set(spec.slot, allow);
            }
        }
        Ok(())
    }

    fn set_module(&mut self, name: &str, allow: bool) {
        let name = name.to_ascii_lowercase();
        match self.modules.binary_search_by(|(m, _)| (**m).cmp(&*name)) {
            Ok(i) => {
                if let Some(entry) = self.modules.get_mut(i) {
                    entry.1 = allow;
                }
            }
            Err(i) => self.modules.insert(i, (name.into_boxed_str(), allow)),
        }
    }
}

/// The reply Redis 7.0 sends for `reason`, given the command as the client sent it.
pub fn deny_reply<'a>(
    reason: DenyReason,
    name: &[u8],
    args: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut args = args.into_iter().peekable();
    match reason {
        DenyReason::NoPermission => noperm_reply(name, args.peek().copied()),
        DenyReason::UnknownCommand => unknown_command_reply(name, args),
        DenyReason::UnknownSubcommand => unknown_subcommand_reply(name, args.next().unwrap_or(b"")),
    }
}

/// Redis 7.0's reply to a command the user may not run:
/// `-NOPERM this user has no permissions to run the 'config|get' command\r\n`.
///
/// The name is the table's lowercase one (`name|sub` for a known subcommand);
/// a name missing from the table is lowercased, cut at 128 bytes and stripped
/// of line breaks (replaced by spaces, as Redis does) before it is echoed.
pub fn noperm_reply(name: &[u8], sub: Option<&[u8]>) -> Vec<u8> {
    let mut out = b"-NOPERM this user has no permissions to run the '".to_vec();
    match commands::lookup(name) {
        Some(cmd) => {
            out.extend_from_slice(cmd.name.as_bytes());
            if let Some(spec) = sub.and_then(|s| cmd.subcommand(s)) {
                out.push(b'|');
                out.extend_from_slice(spec.name.as_bytes());
            }
        }
        None => {
            let start = out.len();
            push_echo(&mut out, name, MAX_ECHO);
            out[start..].make_ascii_lowercase();
        }
    }
    out.extend_from_slice(b"' command\r\n");
    out
}

/// Redis 7.0's reply to a command name it does not know, for example
/// `-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n`.
///
/// Follows server.c's `processCommand` exactly: the name is echoed as sent
/// (at most 128 bytes), then arguments are quoted while the argument text is
/// under 128 bytes, each cut to what remains of those 128; a NUL byte ends a
/// string (C `%s`), and CR and LF become spaces.
pub fn unknown_command_reply<'a>(name: &[u8], args: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = b"-ERR unknown command '".to_vec();
    push_echo(&mut out, name, MAX_ECHO);
    out.extend_from_slice(b"', with args beginning with: ");
    let start = out.len();
    for arg in args {
        let used = out.len() - start;
        if used >= MAX_ECHO {
            break;
        }
        out.push(b'\'');
        push_echo(&mut out, arg, MAX_ECHO - used);
        out.extend_from_slice(b"' ");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Redis 7.0's reply to a container command with an unknown subcommand:
/// `-ERR unknown subcommand 'nosuch'. Try CONFIG HELP.\r\n`.
pub fn unknown_subcommand_reply(name: &[u8], sub: &[u8]) -> Vec<u8> {
    let mut out = b"-ERR unknown subcommand '".to_vec();
    push_echo(&mut out, sub, MAX_ECHO);
    out.extend_from_slice(b"'. Try ");
    let start = out.len();
    match commands::lookup(name) {
        Some(cmd) => out.extend_from_slice(cmd.name.as_bytes()),
        None => push_echo(&mut out, name, MAX_ECHO),
    }
    out[start..].make_ascii_uppercase();
    out.extend_from_slice(b" HELP.\r\n");
    out
}

/// Appends client bytes the way Redis's `%.Ns` plus `sdsmapchars("\r\n", "  ")`
/// would: up to the first NUL, at most `max` bytes, CR and LF as spaces, so the
/// result is a valid single RESP line.
fn push_echo(out: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(bytes.len())
        .min(max);
    out.extend(bytes.iter().take(end).map(|&b| match b {
        b'\r' | b'\n' => b' ',
        b => b,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(p: &CommandPolicy, name: &str, sub: Option<&str>) -> bool {
        p.check(name.as_bytes(), sub.map(str::as_bytes)) == Verdict::Allow
    }

    fn policy(rules: &str) -> CommandPolicy {
        CommandPolicy::parse(rules).unwrap()
    }

    #[test]
    fn default_rules_parse() {
        let parsed = policy(DEFAULT_RULES);
        let default = CommandPolicy::default_policy();
        assert_eq!(default.allowed, parsed.allowed);
        assert!(parsed.unknown_allowed && !default.unknown_allowed);
    }

    #[test]
    fn default_policy_allows_data_and_connection_commands() {
        let p = CommandPolicy::default_policy();
        for (name, sub) in [
            ("get", None),
            ("set", Some("k")),
            ("ping", None),
            ("subscribe", Some("ch")),
            ("multi", None),
            ("exec", None),
            ("blpop", Some("k")),
            ("client", Some("setname")),
            ("client", Some("tracking")),
            ("client", Some("id")),
            ("auth", Some("pw")),
            ("hello", Some("3")),
        ] {
            assert!(allow(&p, name, sub), "{name} {sub:?}");
        }
    }

    #[test]
    fn default_policy_denies_admin_and_scripting() {
        let p = CommandPolicy::default_policy();
        // In the 7.0 table flushall, flushdb and keys are @dangerous, acl|whoami
        // is only @slow (denied by the explicit -acl), debug and monitor are @admin.
        for (name, sub) in [
            ("config", Some("get")),
            ("config", Some("set")),
            ("config", None),
            ("flushall", None),
            ("flushdb", None),
            ("keys", Some("*")),
            ("eval", Some("return 1")),
            ("evalsha_ro", Some("abc")),
            ("fcall", Some("f")),
            ("script", Some("load")),
            ("function", Some("list")),
            ("acl", Some("whoami")),
            ("acl", Some("setuser")),
            ("debug", Some("sleep")),
            ("monitor", None),
            ("client", Some("kill")),
            ("client", Some("list")),
            ("shutdown", None),
            ("replicaof", Some("no")),
            ("migrate", Some("h")),
            ("sync", None),
            ("module", Some("load")),
        ] {
            assert_eq!(
                p.check(name.as_bytes(), sub.map(str::as_bytes)),
                Verdict::Deny(DenyReason::NoPermission),
                "{name} {sub:?}"
            );
        }
    }

    #[test]
    fn names_and_subcommands_are_case_insensitive() {
        let p = policy("-@all +get +config|get");
        assert!(allow(&p, "GeT", None));
        assert!(allow(&p, "CoNfIg", Some("gEt")));
        assert!(!allow(&p, "CONFIG", Some("SET")));
        assert_eq!(policy("+GET +@READ"), policy("+get +@read"));
        assert_eq!(policy("ALLCOMMANDS"), policy("+@all"));
        assert_eq!(policy("NoCommands"), policy("-@all"));
    }

    #[test]
    fn last_rule_wins() {
        let p = policy("+@all -@dangerous +config|get");
        assert!(allow(&p, "config", Some("get")));
        assert!(!allow(&p, "config", Some("set")));
        assert!(!allow(&p, "flushall", None));
        assert!(allow(&p, "get", None));

        let p = policy("+config|get -config");
        assert!(!allow(&p, "config", Some("get")));
        let p = policy("-config +config|get");
        assert!(allow(&p, "config", Some("get")));
        let p = policy("+@read -get");
        assert!(!allow(&p, "get", None));
        assert!(allow(&p, "mget", None));
        let p = policy("-get +@read");
        assert!(allow(&p, "get", None));
        let p = policy("+@all -@all");
        assert!(!allow(&p, "get", None));
        assert!(policy("").check(b"get", None) == Verdict::Deny(DenyReason::NoPermission));
    }

    #[test]
    fn category_rules_follow_subcommand_categories() {
        // config|set is @admin; config|help is not.
        let p = policy("+@admin");
        assert!(allow(&p, "config", Some("set")));
        assert!(!allow(&p, "config", Some("help")));
        // The container itself is @slow, and that cascades to every subcommand.
        let p = policy("+@slow");
        assert!(allow(&p, "config", Some("set")));
        let p = policy("+@all -@slow");
        assert!(!allow(&p, "client", Some("id")));
    }

    #[test]
    fn plus_name_allows_all_subcommands() {
        let p = policy("+config");
        for sub in ["get", "set", "help", "rewrite", "resetstat"] {
            assert!(allow(&p, "config", Some(sub)), "{sub}");
        }
    }

    #[test]
    fn container_without_or_with_unknown_subcommand() {
        let whole = policy("+config");
        assert!(allow(&whole, "config", None));
        assert!(allow(&whole, "config", Some("newfangled")));

        let partial = policy("+config -config|set");
        assert!(allow(&partial, "config", None));
        assert_eq!(
            partial.check(b"config", Some(b"newfangled")),
            Verdict::Deny(DenyReason::UnknownSubcommand)
        );

        let sub_only = policy("+config|get");
        assert_eq!(
            sub_only.check(b"config", None),
            Verdict::Deny(DenyReason::NoPermission)
        );
        // COMMAND alone is a valid call, checked against the container's bit.
        assert!(allow(&policy("+command"), "command", None));
        assert!(!allow(&policy("+command|info"), "command", None));
    }

    #[test]
    fn first_argument_of_plain_command_is_ignored() {
        let p = policy("-@all +get");
        assert!(allow(&p, "get", Some("config")));
    }

    #[test]
    fn unknown_commands_follow_the_last_all_rule() {
        let unknown = Verdict::Deny(DenyReason::UnknownCommand);
        assert!(allow(&policy("+@all"), "json.get", None));
        assert!(allow(&policy("+@all -@read -get"), "newcommand", None));
        // The default is stricter than `+@all`: commands the table does not know stay out.
        assert_eq!(
            CommandPolicy::default_policy().check(b"newcommand", None),
            unknown
        );
        assert_eq!(
            policy("+@all -@all +@read").check(b"newcommand", None),
            unknown
        );
        assert_eq!(policy("").check(b"newcommand", None), unknown);
    }

    #[test]
    fn module_commands_by_explicit_rule() {
        let p = policy("-@all +json.get +JSON.SET -json.set");
        assert!(allow(&p, "JSON.GET", Some("k")));
        assert_eq!(
            p.check(b"json.set", None),
            Verdict::Deny(DenyReason::NoPermission)
        );
        assert_eq!(
            p.check(b"json.del", None),
            Verdict::Deny(DenyReason::UnknownCommand)
        );
        let p = policy("+@all -json.get");
        assert!(!allow(&p, "json.get", None));
        assert!(allow(&p, "json.set", None));
        // An @all rule resets explicit module rules too.
        assert!(!allow(&policy("+json.get -@all"), "json.get", None));
        assert!(allow(&policy("-json.get +@all"), "json.get", None));
    }

    #[test]
    fn bad_tokens_are_named_in_errors() {
        type Variant = fn(String) -> PolicyError;
        let cases: [(&str, Variant); 10] = [
            ("+@nosuch", PolicyError::UnknownCategory),
            ("-@", PolicyError::UnknownCategory),
            ("+gte", PolicyError::UnknownCommand),
            ("-nosuch|x", PolicyError::UnknownCommand),
            ("+config|nosuch", PolicyError::UnknownSubcommand),
            ("+config|", PolicyError::UnknownSubcommand),
            ("+config|get|x", PolicyError::UnknownSubcommand),
            ("+get|x", PolicyError::NoSubcommands),
            ("~*", PolicyError::Syntax),
            ("+", PolicyError::Syntax),
        ];
        for (token, variant) in cases {
            let err = CommandPolicy::parse(&format!("+@read {token} +get")).unwrap_err();
            assert_eq!(err, variant(token.to_owned()));
            assert!(err.to_string().contains(&format!("'{token}'")), "{err}");
        }
        assert_eq!(
            CommandPolicy::parse("+gte").unwrap_err().to_string(),
            "ACL rule '+gte': unknown command (not in the redis 7.0.15 command table)"
        );
    }

    #[test]
    fn noperm_reply_matches_redis() {
        assert_eq!(
            noperm_reply(b"SET", Some(b"k")),
            b"-NOPERM this user has no permissions to run the 'set' command\r\n"
        );
        assert_eq!(
            noperm_reply(b"CoNfIg", Some(b"GeT")),
            b"-NOPERM this user has no permissions to run the 'config|get' command\r\n"
        );
        assert_eq!(
            noperm_reply(b"config", None),
            b"-NOPERM this user has no permissions to run the 'config' command\r\n"
        );
        assert_eq!(
            noperm_reply(b"JSON.GET\r\nx", None),
            b"-NOPERM this user has no permissions to run the 'json.get  x' command\r\n"
        );
        let long = noperm_reply(&[b'A'; 300], None);
        assert_eq!(long.len(), noperm_reply(b"", None).len() + MAX_ECHO);
    }

    #[test]
    fn unknown_command_reply_matches_redis() {
        // Byte strings captured from redis-server 7.0.15.
        assert_eq!(
            unknown_command_reply(b"FOO", [&b"a"[..], b"b"]),
            b"-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n"
        );
        assert_eq!(
            unknown_command_reply(b"FOO", []),
            b"-ERR unknown command 'FOO', with args beginning with: \r\n"
        );
        let c200 = [b'c'; 200];
        let mut want =
            b"-ERR unknown command 'FOO  BAR', with args beginning with: 'a b' '".to_vec();
        want.extend_from_slice(&[b'c'; 122]);
        want.extend_from_slice(b"' \r\n");
        assert_eq!(
            unknown_command_reply(b"FOO\r\nBAR\0zz", [&b"a\nb"[..], &c200]),
            want
        );
        let mut want = b"-ERR unknown command '".to_vec();
        want.extend_from_slice(&[b'F'; 128]);
        want.extend_from_slice(b"', with args beginning with: '");
        want.extend_from_slice(&[b'a'; 100]);
        want.extend_from_slice(b"' '");
        want.extend_from_slice(&[b'b'; 25]);
        want.extend_from_slice(b"' \r\n");
        assert_eq!(
            unknown_command_reply(&[b'F'; 200], [&[b'a'; 100][..], &[b'b'; 100], b"c"]),
            want
        );
    }

    #[test]
    fn unknown_subcommand_reply_matches_redis() {
        assert_eq!(
            unknown_subcommand_reply(b"config", b"nosuch"),
            b"-ERR unknown subcommand 'nosuch'. Try CONFIG HELP.\r\n"
        );
        let mut want = b"-ERR unknown subcommand 'no  such".to_vec();
        want.extend_from_slice(&[b'x'; 120]);
        want.extend_from_slice(b"'. Try CONFIG HELP.\r\n");
        let mut sub = b"no\r\nsuch".to_vec();
        sub.extend_from_slice(&[b'x'; 200]);
        assert_eq!(unknown_subcommand_reply(b"CoNfIg", &sub), want);
    }

    #[test]
    fn deny_reply_dispatches_on_reason() {
        let args: [&[u8]; 2] = [b"get", b"x"];
        assert_eq!(
            deny_reply(DenyReason::NoPermission, b"config", args),
            noperm_reply(b"config", Some(b"get"))
        );
        assert_eq!(
            deny_reply(DenyReason::UnknownCommand, b"foo", args),
            unknown_command_reply(b"foo", args)
        );
        assert_eq!(
            deny_reply(DenyReason::UnknownSubcommand, b"config", args),
            unknown_subcommand_reply(b"config", b"get")
        );
    }
}
