//! Log setup and the escaping every client-supplied string goes through.

use crate::config::LogFormat;

/// Longest client-supplied string written to a log line.
pub const MAX_LOGGED: usize = 64;

/// Escapes `bytes` for a log line: printable ASCII stays, everything else is
/// `\xHH`, and the result is cut at [`MAX_LOGGED`] input bytes with a marker.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().min(MAX_LOGGED) + 8);
    for &b in bytes.iter().take(MAX_LOGGED) {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > MAX_LOGGED {
        out.push_str("...");
    }
    out
}

/// Installs the global tracing subscriber (from `main` only). `RUST_LOG` overrides the level.
pub fn init(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never into files or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_and_truncates() {
        assert_eq!(escape(b"ab\r\n\"\\\xff"), "ab\\x0d\\x0a\\\"\\\\\\xff");
        let long = vec![b'a'; 100];
        assert_eq!(escape(&long), format!("{}...", "a".repeat(64)));
    }
}
