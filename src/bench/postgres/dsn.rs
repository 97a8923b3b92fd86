//! libpq's TLS connection parameters that tokio-postgres does not parse
//! (`sslrootcert`, `sslmode=verify-ca|verify-full`), taken out of a connection
//! string before tokio-postgres sees the rest. Pure string work, no I/O.

use std::path::PathBuf;

use thiserror::Error;

/// A connection string tokio-postgres could not take, before it is handed over.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DsnError {
    /// A quoted value without its closing quote.
    #[error("unterminated quoted value in the connection string")]
    UnterminatedQuote,
    /// A keyword without `= value`.
    #[error("connection string keyword {0:?} has no value")]
    NoValue(String),
    /// A `%` not followed by two hex digits in a URL.
    #[error("invalid percent-encoding in the connection URL")]
    BadPercent,
}

/// The libpq TLS parameters tokio-postgres does not parse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslrootcert`: CA certificates to trust.
    pub root_cert: Option<PathBuf>,
    /// `sslmode=verify-full`: check the server name as well as the chain.
    pub verify_full: bool,
}

/// Takes `sslrootcert` out of a connection string, and turns `sslmode=verify-ca`
/// and `verify-full` into `require` (tokio-postgres knows only disable, prefer
/// and require), returning the rest for tokio-postgres and what was taken out.
pub fn split_tls_params(dsn: &str) -> Result<(String, TlsParams), DsnError> {
    let mut params = TlsParams::default();
    let mut take = |key: &str, value: &str| -> Option<&'static str> {
        match (key, value) {
            ("sslrootcert", v) => {
                params.root_cert = Some(PathBuf::from(v));
                Some("")
            }
            ("sslmode", "verify-ca" | "verify-full") => {
                params.verify_full = value == "verify-full";
                Some("sslmode=require")
            }
            _ => None,
        }
    };
    let rest = match ["postgres://", "postgresql://"]
        .iter()
        .find(|p| dsn.starts_with(*p))
    {
        Some(_) => {
            // The query string starts at the first `?` after the credentials.
            let from = dsn.rfind('@').unwrap_or(0);
            match dsn[from..].find('?') {
                None => dsn.to_string(),
                Some(q) => {
                    let (base, query) = dsn.split_at(from + q);
                    let mut kept = Vec::new();
                    for pair in query[1..].split('&').filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        match take(&percent_decode(k)?, &percent_decode(v)?) {
                            Some("") => {}
                            Some(replacement) => kept.push(replacement.to_string()),
                            None => kept.push(pair.to_string()),
                        }
                    }
                    if kept.is_empty() {
                        base.to_string()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        }
        None => {
            let mut kept = Vec::new();
            for (key, value, text) in key_values(dsn)? {
                match take(key, &value) {
                    Some("") => {}
                    Some(replacement) => kept.push(replacement),
                    None => kept.push(text),
                }
            }
            kept.join(" ")
        }
    };
    Ok((rest, params))
}

/// Splits libpq `key=value` text as tokio-postgres does: each keyword, its
/// unescaped value, and the original text of the pair.
fn key_values(s: &str) -> Result<Vec<(&str, String, &str)>, DsnError> {
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while s[*i..].starts_with(char::is_whitespace) {
            *i += s[*i..].chars().next().map_or(1, char::len_utf8);
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= s.len() {
            return Ok(out);
        }
        let start = i;
        let klen = s[i..]
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(s.len() - i);
        let key = &s[i..i + klen];
        i += klen;
        skip_ws(&mut i);
        if !s[i..].starts_with('=') {
            return Err(DsnError::NoValue(key.to_string()));
        }
        i += 1;
        skip_ws(&mut i);
        let quoted = s[i..].starts_with('\'');
        if quoted {
            i += 1;
        }
        let mut value = String::new();
        let mut chars = s[i..].char_indices();
        let mut closed = false;
        let mut end = s.len();
        while let Some((off, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, c2)) = chars.next() {
                        value.push(c2);
                    }
                }
                '\'' if quoted => {
                    closed = true;
                    end = i + off + 1;
                    break;
                }
                c if c.is_whitespace() && !quoted => {
                    end = i + off;
                    break;
                }
                c => value.push(c),
            }
        }
        if quoted && !closed {
            return Err(DsnError::UnterminatedQuote);
        }
        if !quoted && value.is_empty() {
            return Err(DsnError::NoValue(key.to_string()));
        }
        out.push((key, value, &s[start..end]));
        i = end;
    }
}

fn percent_decode(s: &str) -> Result<String, DsnError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(DsnError::BadPercent)?;
            let hex = std::str::from_utf8(hex).map_err(|_| DsnError::BadPercent)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| DsnError::BadPercent)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DsnError::BadPercent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(dsn: &str) -> (String, TlsParams) {
        split_tls_params(dsn).expect("valid")
    }

    #[test]
    fn key_value_dsn_loses_only_the_tls_params() {
        let (rest, p) = split(
            "host=localhost port=6432 user=app sslmode=require sslrootcert=/tmp/ca.crt dbname=app",
        );
        assert_eq!(
            rest,
            "host=localhost port=6432 user=app sslmode=require dbname=app"
        );
        assert_eq!(p.root_cert, Some(PathBuf::from("/tmp/ca.crt")));
        assert!(!p.verify_full);
        let (rest, p) =
            split("password='it\\'s x' sslmode = verify-full  sslrootcert='/a b/ca.crt'");
        assert_eq!(rest, "password='it\\'s x' sslmode=require");
        assert_eq!(
            (p.root_cert, p.verify_full),
            (Some(PathBuf::from("/a b/ca.crt")), true)
        );
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());
        assert_eq!(split("sslmode=verify-ca").0, "sslmode=require");
    }

    #[test]
    fn url_dsn_loses_only_the_tls_params() {
        let (rest, p) = split(
            "postgres://app:p%3Fw@localhost:6432/app?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.crt&application_name=x",
        );
        assert_eq!(
            rest,
            "postgres://app:p%3Fw@localhost:6432/app?sslmode=require&application_name=x"
        );
        assert_eq!(
            (p.root_cert, p.verify_full),
            (Some(PathBuf::from("/tmp/ca.crt")), true)
        );
        let (rest, p) = split("postgresql://h/db?sslrootcert=ca.pem");
        assert_eq!(
            (rest.as_str(), p.root_cert),
            ("postgresql://h/db", Some("ca.pem".into()))
        );
        let c: tokio_postgres::Config = rest.parse().expect("tokio-postgres parses the rest");
        assert_eq!(c.get_dbname(), Some("db"));
        // A `?` in the (unencoded) password is not the query string.
        assert_eq!(split("postgres://u:a?b@h/db").0, "postgres://u:a?b@h/db");
    }

    #[test]
    fn malformed_dsns_are_errors() {
        assert_eq!(
            split_tls_params("password='abc"),
            Err(DsnError::UnterminatedQuote)
        );
        assert_eq!(
            split_tls_params("host"),
            Err(DsnError::NoValue("host".into()))
        );
        assert_eq!(
            split_tls_params("host= "),
            Err(DsnError::NoValue("host".into()))
        );
        assert_eq!(
            split_tls_params("postgres://h/d?sslrootcert=%zz"),
            Err(DsnError::BadPercent)
        );
    }
}
