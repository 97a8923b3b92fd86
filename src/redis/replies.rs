//! Replies the proxy writes itself, worded as Redis words them.

/// `AUTH` or `HELLO ... AUTH` succeeded.
pub const OK: &[u8] = b"+OK\r\n";
/// Any command before authentication (server.c, `processCommand`).
pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
/// HELLO without AUTH before authentication (networking.c, `helloCommand`).
pub const NOAUTH_HELLO: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
/// A failed AUTH, whatever the reason (acl.c, `addAuthErrReply`).
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
/// HELLO with a protocol version other than 2 or 3.
pub const NOPROTO: &[u8] = b"-NOPROTO unsupported protocol version\r\n";
/// HELLO with a version that is not an integer.
pub const HELLO_BAD_VERSION: &[u8] = b"-ERR Protocol version is not an integer or out of range\r\n";
/// AUTH with the wrong number of arguments.
pub const AUTH_ARITY: &[u8] = b"-ERR wrong number of arguments for 'auth' command\r\n";
/// SETNAME with a name Redis would refuse.
pub const BAD_CLIENT_NAME: &[u8] =
    b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n";
/// EXEC after a command was refused inside MULTI (multi.c, `execCommand`).
pub const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
/// AUTH, HELLO or RESET inside MULTI (Redis's text for `no-multi` commands).
pub const NOT_IN_MULTI: &[u8] = b"-ERR Command not allowed inside a transaction\r\n";
/// The backend could not be reached or refused the proxy's login; no detail on purpose.
pub const BACKEND_UNAVAILABLE: &[u8] = b"-ERR backend unavailable\r\n";
/// HELLO 3 where the backend connection is shared (it speaks RESP2): clients fall back to RESP2.
pub const MUX_NOPROTO: &[u8] =
    b"-NOPROTO unsupported protocol version: this listener's backend connection is shared and speaks RESP2 only\r\n";
/// HELLO SETNAME where the backend connection is shared.
pub const MUX_SETNAME: &[u8] =
    b"-ERR client names are not available: this listener's backend connection is shared\r\n";
/// An AUTH to a user who logs in to the backend as another backend user, where the connection is shared.
pub const MUX_OTHER_USER: &[u8] =
    b"-ERR this user logs in to the backend as another user, which a shared backend connection cannot switch to: reconnect\r\n";

/// `-ERR <message>\r\n` with CR and LF removed from the message.
pub fn error(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 7);
    out.extend_from_slice(b"-ERR ");
    out.extend(message.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
    out.extend_from_slice(b"\r\n");
    out
}

/// HELLO with an unknown option, echoing it without CR/LF and capped.
pub fn hello_syntax_error(option: &[u8]) -> Vec<u8> {
    let mut out = b"-ERR Syntax error in HELLO option '".to_vec();
    out.extend(
        option
            .iter()
            .take(128)
            .filter(|b| **b != b'\r' && **b != b'\n'),
    );
    out.extend_from_slice(b"'\r\n");
    out
}

/// A command portcullis cannot relay, because it breaks reply tracking.
pub fn unsupported(command: &str) -> Vec<u8> {
    error(&format!("{command} is not supported through portcullis"))
}

/// A command that needs a backend connection of its own, where it is shared.
pub fn not_multiplexed(command: &str) -> Vec<u8> {
    error(&format!(
        "'{command}' is not available: this listener's backend connection is shared (multiplex = true)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_text_has_no_line_breaks() {
        assert_eq!(error("a\r\nb"), b"-ERR ab\r\n");
        assert_eq!(
            hello_syntax_error(b"x\r\n+OK"),
            b"-ERR Syntax error in HELLO option 'x+OK'\r\n"
        );
    }
}
