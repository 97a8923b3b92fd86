//! The HAProxy PROXY protocol, versions 1 and 2, inbound only and without I/O.
//!
//! A load balancer in front of portcullis prepends one header to the TCP stream
//! saying who the real client is. [`decode`] reads it from the start of the
//! connection's first bytes; the caller keeps whatever follows (a TLS
//! ClientHello, an SSLRequest, a RESP command). Headers are honoured only from
//! [`TrustedProxies`]; from anyone else the caller refuses a connection that
//! [`starts_like_header`], so a client cannot claim another's address.
//!
//! Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>
//! (2.1 the v1 text line, 2.2 the v2 binary header and its TLVs).
//!
//! Decisions beyond the spec's letter:
//! - v2 UDP (families `0x12`, `0x22`) with the PROXY command is refused with
//!   [`ProxyError::UnsupportedTransport`]: we accept TCP only, so a datagram
//!   header on a stream means a misconfigured proxy, not a client to serve.
//! - The v2 family byte must be one of the seven values the spec defines, for
//!   LOCAL too; it sizes the address block so the TLVs after it can be checked
//!   (and a CRC32C verified) even though LOCAL ignores the addresses. UNSPEC has
//!   an empty address block: everything after the fixed 16 bytes is TLVs, as
//!   HAProxy sends it.
//! - At most one CRC32C TLV: a second one could not be checked against a single
//!   zeroed field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v1 line, CRLF included, is at most this long (spec 2.1: the worst case
/// `"PROXY UNKNOWN <ipv6> <ipv6> 65535 65535\r\n"`).
pub const MAX_V1_LEN: usize = 107;

/// A v2 header's fixed part: signature, version/command, family, length.
pub const V2_FIXED_LEN: usize = 16;

/// Longest address + TLV block accepted after the v2 fixed part (the wire allows
/// 65535). The largest address block is 216 bytes (AF_UNIX) and the TLVs real
/// senders emit (HAProxy's SSL sub-TLVs, ALPN, authority, unique id; the AWS,
/// Azure and GCP endpoint ids) stay well under 1 KiB; 4 KiB leaves headroom while
/// bounding what we buffer for a peer before we know who the client is.
pub const MAX_V2_LEN: usize = 4096;

/// The most bytes a header can occupy: a caller buffering for [`decode`] never
/// needs more than this.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + MAX_V2_LEN;

/// Version 1 starts with "PROXY" and exactly one space.
const V1_PREFIX: &[u8] = b"PROXY ";

/// Version 2 starts with these 12 bytes (spec 2.2).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// PP2_TYPE_CRC32C: the header's CRC32c (RFC 4960 appendix B), big-endian.
const PP2_TYPE_CRC32C: u8 = 0x03;

/// What the header says about the real client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// v2 LOCAL (health checks from the proxy itself): use the peer's own address.
    Local,
    /// v1 UNKNOWN or v2 UNSPEC/unsupported family (e.g. AF_UNIX): use the peer's own address.
    Unknown,
    /// A proxied TCP connection.
    Proxied {
        /// The real client.
        source: SocketAddr,
        /// The address the client connected to, as the proxy saw it.
        destination: SocketAddr,
    },
}

impl ProxyHeader {
    /// The client's address: the header's source if it names one, else `peer`,
    /// the address of the TCP connection itself.
    pub fn client_addr(&self, peer: SocketAddr) -> SocketAddr {
        match self {
            ProxyHeader::Proxied { source, .. } => *source,
            ProxyHeader::Local | ProxyHeader::Unknown => peer,
        }
    }
}

/// Why a PROXY header was refused. The sending proxy is always at fault; the
/// texts carry no peer bytes, so they are safe to log and to send back.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ProxyError {
    /// The bytes start with neither "PROXY " nor the v2 signature.
    #[error("not a PROXY protocol header")]
    NotAHeader,
    /// A v1 line that does not follow the grammar (fields, single spaces, CRLF).
    #[error("malformed PROXY v1 header line")]
    V1Syntax,
    /// No CRLF within the first 107 bytes.
    #[error("PROXY v1 header line longer than {MAX_V1_LEN} bytes")]
    V1TooLong,
    /// A v1 address that is not a canonical address of the announced family.
    #[error("invalid address in PROXY v1 header")]
    BadAddress,
    /// A v1 port that is not a decimal 0..=65535 without leading zeroes.
    #[error("invalid port in PROXY v1 header")]
    BadPort,
    /// A v2 version nibble other than 2.
    #[error("unsupported PROXY v2 version")]
    UnsupportedVersion,
    /// A v2 command other than LOCAL (0) or PROXY (1).
    #[error("unsupported PROXY v2 command")]
    UnsupportedCommand,
    /// A v2 family/transport byte the spec does not define.
    #[error("undefined PROXY v2 address family")]
    UndefinedFamily,
    /// A v2 PROXY header for a UDP flow: this listener proxies TCP only.
    #[error("PROXY v2 header announces UDP; only TCP is proxied")]
    UnsupportedTransport,
    /// A v2 length shorter than the family's address block or above [`MAX_V2_LEN`].
    #[error("PROXY v2 header length out of bounds")]
    BadLength,
    /// A TLV that overruns the header, a leftover partial TLV, or a bad CRC32C TLV.
    #[error("malformed TLV in PROXY v2 header")]
    MalformedTlv,
    /// The CRC32C TLV does not match the header.
    #[error("PROXY v2 header fails its CRC32C check")]
    ChecksumMismatch,
}

/// How far `buf` matches a signature.
#[derive(PartialEq, Eq)]
enum Match {
    /// `buf` starts with the whole signature.
    Full,
    /// `buf` is a strict prefix of the signature (possibly empty).
    Partial,
    /// `buf` differs from the signature somewhere.
    No,
}

fn match_signature(buf: &[u8], signature: &[u8]) -> Match {
    let n = buf.len().min(signature.len());
    if buf.get(..n) != signature.get(..n) {
        Match::No
    } else if n == signature.len() {
        Match::Full
    } else {
        Match::Partial
    }
}

/// Whether `buf` starts (or could start, if short) with a PROXY header signature (v1 "PROXY " or the v2 12-byte signature):
/// `Some(true)` / `Some(false)` / `None` (too short to tell). Used to refuse headers from untrusted peers.
pub fn starts_like_header(buf: &[u8]) -> Option<bool> {
    match (
        match_signature(buf, V1_PREFIX),
        match_signature(buf, &V2_SIGNATURE),
    ) {
        (Match::Full, _) | (_, Match::Full) => Some(true),
        (Match::No, Match::No) => Some(false),
        _ => None,
    }
}

/// Decodes a header at the start of `buf`. `Ok(None)`: need more bytes (nothing consumed).
/// `Ok(Some((header, n)))`: the header is the first `n` bytes; bytes after it (a TLS ClientHello,
/// an SSLRequest, a RESP command) belong to the application and must be kept by the caller.
///
/// Every answer depends only on the bytes it looked at, and a fault is reported
/// as soon as the bytes showing it are present (a v2 length past [`MAX_V2_LEN`]
/// fails on the 16th byte, not after the declared bytes arrive). So feeding a
/// stream in any chunking gives the same result, and `n <= MAX_HEADER_LEN`.
pub fn decode(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    match (
        match_signature(buf, V1_PREFIX),
        match_signature(buf, &V2_SIGNATURE),
    ) {
        (Match::Full, _) => decode_v1(buf),
        (_, Match::Full) => decode_v2(buf),
        (Match::No, Match::No) => Err(ProxyError::NotAHeader),
        _ => Ok(None),
    }
}

/// Spec 2.1: one line, at most [`MAX_V1_LEN`] bytes with its CRLF.
fn decode_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = buf.get(..MAX_V1_LEN).unwrap_or(buf);
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= MAX_V1_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    if window.get(end) == Some(&b'\n') {
        // A bare LF: the line must end with CRLF.
        return Err(ProxyError::V1Syntax);
    }
    let n = end + 2;
    if n > MAX_V1_LEN {
        return Err(ProxyError::V1TooLong);
    }
    match buf.get(end + 1) {
        None => Ok(None),
        Some(b'\n') => {
            let line = buf.get(..end).ok_or(ProxyError::V1Syntax)?;
            parse_v1_line(line).map(|header| Some((header, n)))
        }
        Some(_) => Err(ProxyError::V1Syntax),
    }
}

/// Parses the line without its CRLF: `PROXY TCP4|TCP6 src dst sport dport` or
/// `PROXY UNKNOWN[ anything]`.
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let rest = line.strip_prefix(V1_PREFIX).ok_or(ProxyError::V1Syntax)?;
    let mut fields = rest.split(|&b| b == b' ');
    let ipv6 = match fields.next() {
        // "the receiver must ignore anything presented before the CRLF is found"
        Some(b"UNKNOWN") => return Ok(ProxyHeader::Unknown),
        Some(b"TCP4") => false,
        Some(b"TCP6") => true,
        _ => return Err(ProxyError::V1Syntax),
    };
    // Exactly four more fields, each non-empty: two spaces in a row or a
    // trailing space would show up as an empty field.
    let mut next = || {
        fields
            .next()
            .filter(|f| !f.is_empty())
            .ok_or(ProxyError::V1Syntax)
    };
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(ProxyError::V1Syntax);
    }
    let (src, dst) = (parse_v1_ip(src, ipv6)?, parse_v1_ip(dst, ipv6)?);
    let (sport, dport) = (parse_v1_port(sport)?, parse_v1_port(dport)?);
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(src, sport),
        destination: SocketAddr::new(dst, dport),
    })
}

/// An address of the announced family. std's parsers implement the spec's
/// canonical forms: IPv4 dotted quads without leading zeroes, IPv6 text
/// without zone or brackets.
fn parse_v1_ip(field: &[u8], ipv6: bool) -> Result<IpAddr, ProxyError> {
    let text = std::str::from_utf8(field).map_err(|_| ProxyError::BadAddress)?;
    let ip = if ipv6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map_err(|_| ProxyError::BadAddress)
}

/// Decimal 0..=65535; "Heading zeroes are not permitted". Digits only (no sign,
/// unlike `u16::from_str`).
fn parse_v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    let canonical = field.len() <= 5
        && field.iter().all(u8::is_ascii_digit)
        && (field == b"0" || !field.starts_with(b"0"));
    if !canonical {
        return Err(ProxyError::BadPort);
    }
    let value = field
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| ProxyError::BadPort)
}

/// The v2 command (low nibble of byte 13).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    Local,
    Proxy,
}

/// The v2 family/transport byte (byte 14): the seven values spec 2.2 defines.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Unspec,
    Tcp4,
    Udp4,
    Tcp6,
    Udp6,
    UnixStream,
    UnixDatagram,
}

impl Family {
    fn from_byte(byte: u8) -> Result<Family, ProxyError> {
        Ok(match byte {
            0x00 => Family::Unspec,
            0x11 => Family::Tcp4,
            0x12 => Family::Udp4,
            0x21 => Family::Tcp6,
            0x22 => Family::Udp6,
            0x31 => Family::UnixStream,
            0x32 => Family::UnixDatagram,
            // "must be rejected as invalid by receivers"
            _ => return Err(ProxyError::UndefinedFamily),
        })
    }

    /// Size of the address block that starts the variable part.
    fn address_len(self) -> usize {
        match self {
            Family::Unspec => 0,
            Family::Tcp4 | Family::Udp4 => 12,
            Family::Tcp6 | Family::Udp6 => 36,
            // Two 108-byte sun_path fields.
            Family::UnixStream | Family::UnixDatagram => 216,
        }
    }
}

/// Spec 2.2: the fixed 16 bytes are judged byte by byte as they arrive; then
/// the whole declared block is needed.
fn decode_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let Some(&version_command) = buf.get(12) else {
        return Ok(None);
    };
    if version_command >> 4 != 2 {
        return Err(ProxyError::UnsupportedVersion);
    }
    let command = match version_command & 0x0f {
        0 => Command::Local,
        1 => Command::Proxy,
        _ => return Err(ProxyError::UnsupportedCommand),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(None);
    };
    let family = Family::from_byte(family)?;
    if command == Command::Proxy && matches!(family, Family::Udp4 | Family::Udp6) {
        return Err(ProxyError::UnsupportedTransport);
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_V2_LEN || len < family.address_len() {
        return Err(ProxyError::BadLength);
    }
    let total = V2_FIXED_LEN + len;
    let Some(header) = buf.get(..total) else {
        return Ok(None);
    };
    let tlv_start = V2_FIXED_LEN + family.address_len();
    let addresses = header
        .get(V2_FIXED_LEN..tlv_start)
        .ok_or(ProxyError::BadLength)?;
    check_tlvs(header, tlv_start)?;

    let decoded = match (command, family) {
        // "must use the real connection endpoints and discard the protocol block"
        (Command::Local, _) => ProxyHeader::Local,
        (Command::Proxy, Family::Tcp4) => {
            let mut r = addresses;
            let (src, dst) = (take::<4>(&mut r)?, take::<4>(&mut r)?);
            let (sport, dport) = (take::<2>(&mut r)?, take::<2>(&mut r)?);
            ProxyHeader::Proxied {
                source: SocketAddr::new(Ipv4Addr::from(src).into(), u16::from_be_bytes(sport)),
                destination: SocketAddr::new(Ipv4Addr::from(dst).into(), u16::from_be_bytes(dport)),
            }
        }
        (Command::Proxy, Family::Tcp6) => {
            let mut r = addresses;
            let (src, dst) = (take::<16>(&mut r)?, take::<16>(&mut r)?);
            let (sport, dport) = (take::<2>(&mut r)?, take::<2>(&mut r)?);
            ProxyHeader::Proxied {
                source: SocketAddr::new(Ipv6Addr::from(src).into(), u16::from_be_bytes(sport)),
                destination: SocketAddr::new(Ipv6Addr::from(dst).into(), u16::from_be_bytes(dport)),
            }
        }
        (Command::Proxy, Family::Udp4 | Family::Udp6) => {
            return Err(ProxyError::UnsupportedTransport)
        }
        (Command::Proxy, Family::Unspec | Family::UnixStream | Family::UnixDatagram) => {
            ProxyHeader::Unknown
        }
    };
    Ok(Some((decoded, total)))
}

/// Takes `N` bytes off the front of `r`. The callers' lengths were checked
/// against the header length, so a short read means a bug, reported as a bad length.
fn take<const N: usize>(r: &mut &[u8]) -> Result<[u8; N], ProxyError> {
    let (head, tail) = r.split_first_chunk::<N>().ok_or(ProxyError::BadLength)?;
    *r = tail;
    Ok(*head)
}

/// Walks the TLVs from `start` to the end of `header` (the whole v2 header):
/// each is type (u8), length (u16 BE), value, and together they must fill the
/// block exactly. A CRC32C TLV is verified over the whole header with its
/// value zeroed. Values, SSL sub-TLVs included, are not interpreted.
fn check_tlvs(header: &[u8], start: usize) -> Result<(), ProxyError> {
    let mut rest = header.get(start..).ok_or(ProxyError::BadLength)?;
    let mut offset = start;
    let mut checksum: Option<(usize, u32)> = None;
    while !rest.is_empty() {
        let [kind, hi, lo] = take::<3>(&mut rest).map_err(|_| ProxyError::MalformedTlv)?;
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let (value, tail) = rest.split_at_checked(len).ok_or(ProxyError::MalformedTlv)?;
        if kind == PP2_TYPE_CRC32C {
            let expected = <[u8; 4]>::try_from(value).map_err(|_| ProxyError::MalformedTlv)?;
            if checksum.is_some() {
                return Err(ProxyError::MalformedTlv);
            }
            checksum = Some((offset + 3, u32::from_be_bytes(expected)));
        }
        offset += 3 + len;
        rest = tail;
    }
    if let Some((at, expected)) = checksum {
        let before = header.get(..at).ok_or(ProxyError::MalformedTlv)?;
        let after = header.get(at + 4..).ok_or(ProxyError::MalformedTlv)?;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c_append(crc32c::crc32c(before), &[0; 4]),
            after,
        );
        if crc != expected {
            return Err(ProxyError::ChecksumMismatch);
        }
    }
    Ok(())
}

/// Peers allowed to send PROXY headers (an empty list trusts no one).
///
/// An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, how a dual-stack `[::]`
/// listener reports IPv4 clients) is the IPv4 peer it stands for: it matches
/// `10.0.0.0/8`, and `10.0.0.1` likewise matches `::ffff:10.0.0.0/104`. Other
/// embeddings (IPv4-compatible `::10.0.0.1`, NAT64) are plain IPv6 addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Trusts the peers inside any of `nets`.
    pub fn new(nets: Vec<ipnet::IpNet>) -> Self {
        TrustedProxies(nets)
    }

    /// Whether a connection from `ip` may carry a PROXY header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let mapped = match ip {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        };
        self.0
            .iter()
            .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
    }

    /// Whether the list is empty, so no peer may send a header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Decoded = Result<Option<(ProxyHeader, usize)>, ProxyError>;

    /// Decodes `bytes` whole and as every prefix in turn: each prefix must
    /// answer `Ok(None)` until one answers exactly what the whole input does.
    fn decode_both(bytes: &[u8]) -> Decoded {
        let whole = decode(bytes);
        let mut bytewise = Ok(None);
        for end in 0..=bytes.len() {
            bytewise = decode(&bytes[..end]);
            if bytewise != Ok(None) {
                break;
            }
        }
        assert_eq!(whole, bytewise, "whole vs byte at a time for {bytes:?}");
        whole
    }

    /// `bytes` holds exactly one header: every shorter prefix needs more, and
    /// the header is found again, with the same length, when bytes follow it.
    fn expect_header(bytes: &[u8]) -> ProxyHeader {
        for end in 0..bytes.len() {
            assert_eq!(decode(&bytes[..end]), Ok(None), "prefix of {end} bytes");
        }
        let (header, n) = decode_both(bytes).expect("valid").expect("complete");
        assert_eq!(n, bytes.len());
        let mut followed = bytes.to_vec();
        followed.extend_from_slice(b"\x16\x03\x01\x00\x05hello");
        assert_eq!(decode_both(&followed), Ok(Some((header, n))));
        header
    }

    fn expect_error(bytes: &[u8], error: ProxyError) {
        assert_eq!(
            decode_both(bytes),
            Err(error),
            "for {:?}",
            String::from_utf8_lossy(bytes)
        );
    }

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: source.parse().expect("test address"),
            destination: destination.parse().expect("test address"),
        }
    }

    fn v2(version_command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let len = u16::try_from(body.len()).expect("test body fits");
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[version_command, family]);
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    const IPV4_BLOCK: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0x01, 0xbb];

    fn ipv6_block() -> Vec<u8> {
        let mut b = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        b.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&[0xff, 0xff, 0x18, 0xeb]);
        b
    }

    /// Appends a CRC32C TLV to a v2 header, fixes its length, fills the checksum.
    fn with_crc(mut header: Vec<u8>) -> Vec<u8> {
        header.extend_from_slice(&[PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0]);
        let len = u16::try_from(header.len() - V2_FIXED_LEN).unwrap();
        header[14..16].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&header);
        let at = header.len() - 4;
        header[at..].copy_from_slice(&crc.to_be_bytes());
        header
    }

    #[test]
    fn v1_tcp4() {
        let h = expect_header(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        assert_eq!(h, proxied("192.168.0.1:56324", "192.168.0.11:443"));
        let h = expect_header(b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n");
        assert_eq!(h, proxied("255.255.255.255:65535", "0.0.0.0:0"));
    }

    #[test]
    fn v1_tcp6() {
        let h = expect_header(b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n");
        assert_eq!(h, proxied("[2001:db8::1]:65535", "[::1]:0"));
        let h = expect_header(b"PROXY TCP6 ::ffff:10.0.0.1 FE80::1 1 2\r\n");
        assert_eq!(h, proxied("[::ffff:10.0.0.1]:1", "[fe80::1]:2"));
        // The longest TCP6 line, 104 bytes.
        let longest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), 104);
        expect_header(longest);
    }

    #[test]
    fn v1_unknown_ignores_the_rest_of_the_line() {
        assert_eq!(expect_header(b"PROXY UNKNOWN\r\n"), ProxyHeader::Unknown);
        assert_eq!(
            expect_header(b"PROXY UNKNOWN whatever \xff\x00 here\r\n"),
            ProxyHeader::Unknown
        );
        let worst = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(worst.len(), MAX_V1_LEN);
        assert_eq!(expect_header(worst), ProxyHeader::Unknown);
    }

    #[test]
    fn v1_line_length_limit() {
        // 108 bytes with the CRLF.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(MAX_V1_LEN - 1, b'x');
        long.extend_from_slice(b"\r\n");
        assert_eq!(long.len(), MAX_V1_LEN + 1);
        expect_error(&long, ProxyError::V1TooLong);
        // No CRLF at all: refused at byte 107, without waiting for more.
        let mut endless = b"PROXY TCP4 ".to_vec();
        endless.resize(MAX_V1_LEN, b'1');
        assert_eq!(decode(&endless[..MAX_V1_LEN - 1]), Ok(None));
        expect_error(&endless, ProxyError::V1TooLong);
        endless.resize(500, b'1');
        expect_error(&endless, ProxyError::V1TooLong);
    }

    #[test]
    fn v1_syntax_errors() {
        use ProxyError::V1Syntax;
        expect_error(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", V1Syntax);
        expect_error(b"PROXY UNKNOWNX\r\n", V1Syntax);
        expect_error(b"PROXY \r\n", V1Syntax);
        expect_error(b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", V1Syntax);
        expect_error(b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", V1Syntax);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", V1Syntax);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", V1Syntax);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", V1Syntax);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", V1Syntax);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", V1Syntax);
        expect_error(b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", V1Syntax);
        expect_error(b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", V1Syntax);
    }

    #[test]
    fn v1_bad_addresses_and_ports() {
        use ProxyError::{BadAddress, BadPort};
        expect_error(b"PROXY TCP4 ::1 ::1 1 2\r\n", BadAddress);
        expect_error(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", BadAddress);
        expect_error(b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", BadAddress);
        expect_error(b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", BadAddress);
        expect_error(b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", BadAddress);
        expect_error(b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", BadAddress);
        expect_error(b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n", BadAddress);
        expect_error(b"PROXY TCP6 [::1] ::1 1 2\r\n", BadAddress);
        expect_error(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", BadAddress);
        expect_error(b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", BadAddress);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", BadPort);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", BadPort);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n", BadPort);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", BadPort);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n", BadPort);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", BadPort);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", BadPort);
        expect_error(b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n", BadPort);
    }

    #[test]
    fn not_a_header() {
        expect_error(b"\x16\x03\x01\x02\x00\x01", ProxyError::NotAHeader);
        expect_error(b"*1\r\n$4\r\nPING\r\n", ProxyError::NotAHeader);
        expect_error(b"\x00\x00\x00\x08\x04\xd2\x16\x2f", ProxyError::NotAHeader);
        expect_error(b"PROXYTCP4", ProxyError::NotAHeader);
        expect_error(
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            ProxyError::NotAHeader,
        );
        // One bit off in the v2 signature.
        let mut h = v2(0x21, 0x11, &IPV4_BLOCK);
        h[7] = b'P';
        expect_error(&h, ProxyError::NotAHeader);
        assert_eq!(decode(b""), Ok(None));
        assert_eq!(decode(b"PROX"), Ok(None));
        assert_eq!(decode(b"\r\n\r\n\0"), Ok(None));
    }

    #[test]
    fn signature_sniffing() {
        assert_eq!(starts_like_header(b""), None);
        assert_eq!(starts_like_header(b"PROX"), None);
        assert_eq!(starts_like_header(b"PROXY"), None);
        assert_eq!(starts_like_header(b"PROXY "), Some(true));
        assert_eq!(starts_like_header(b"PROXY garbage"), Some(true));
        assert_eq!(starts_like_header(b"PROXYX"), Some(false));
        assert_eq!(starts_like_header(b"\r\n\r\n\0\r\nQUI"), None);
        assert_eq!(starts_like_header(&V2_SIGNATURE), Some(true));
        assert_eq!(starts_like_header(b"\r\n\r\n\0\r\nQUIX"), Some(false));
        assert_eq!(starts_like_header(b"\x16\x03"), Some(false));
        assert_eq!(starts_like_header(b"PING\r\n"), Some(false));
        assert_eq!(starts_like_header(b"\x00\x00\x00\x08"), Some(false));
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6() {
        let h = expect_header(&v2(0x21, 0x11, &IPV4_BLOCK));
        assert_eq!(h, proxied("192.0.2.1:56324", "198.51.100.7:443"));
        let h = expect_header(&v2(0x21, 0x21, &ipv6_block()));
        assert_eq!(h, proxied("[2001:db8::1]:65535", "[2001:db8::2]:6379"));
    }

    #[test]
    fn v2_with_tlvs() {
        let mut body = IPV4_BLOCK.to_vec();
        body.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]); // NOOP
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // ALPN
        body.extend_from_slice(&[0x04, 0x00, 0x00]); // empty NOOP
                                                     // SSL: client, verify, then sub-TLVs (VERSION "TLSv1.3", CN "a").
        body.extend_from_slice(&[0x20, 0x00, 0x13, 0x07, 0, 0, 0, 0]);
        body.extend_from_slice(&[0x21, 0x00, 0x07]);
        body.extend_from_slice(b"TLSv1.3");
        body.extend_from_slice(&[0x22, 0x00, 0x01, b'a']);
        body.extend_from_slice(&[0xea, 0x00, 0x04, 1, 2, 3, 4]); // AWS custom
        let h = expect_header(&v2(0x21, 0x11, &body));
        assert_eq!(h, proxied("192.0.2.1:56324", "198.51.100.7:443"));

        let mut body = ipv6_block();
        body.extend_from_slice(&[0x02, 0x00, 0x09]);
        body.extend_from_slice(b"redis.dev");
        let h = expect_header(&v2(0x21, 0x21, &body));
        assert_eq!(h, proxied("[2001:db8::1]:65535", "[2001:db8::2]:6379"));
    }

    #[test]
    fn v2_local_unspec_and_unix() {
        // HAProxy's health checks: LOCAL, UNSPEC, no addresses.
        assert_eq!(expect_header(&v2(0x20, 0x00, &[])), ProxyHeader::Local);
        // LOCAL still walks the addresses and TLVs of the family it names.
        let mut body = IPV4_BLOCK.to_vec();
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0]);
        assert_eq!(expect_header(&v2(0x20, 0x11, &body)), ProxyHeader::Local);
        assert_eq!(
            expect_header(&v2(0x20, 0x12, &IPV4_BLOCK)),
            ProxyHeader::Local
        );
        assert_eq!(
            expect_header(&v2(0x20, 0x00, &[0x04, 0x00, 0x00])),
            ProxyHeader::Local
        );
        expect_error(&v2(0x20, 0x11, &[0; 11]), ProxyError::BadLength);
        expect_error(
            &v2(0x20, 0x00, &[0x04, 0x00, 0x05, 0]),
            ProxyError::MalformedTlv,
        );

        assert_eq!(expect_header(&v2(0x21, 0x00, &[])), ProxyHeader::Unknown);
        assert_eq!(
            expect_header(&v2(0x21, 0x31, &[b'/'; 216])),
            ProxyHeader::Unknown
        );
        assert_eq!(
            expect_header(&v2(0x21, 0x32, &[0; 216])),
            ProxyHeader::Unknown
        );
        expect_error(&v2(0x21, 0x31, &[0; 108]), ProxyError::BadLength);
    }

    #[test]
    fn v2_crc32c() {
        // The CRC-32C (Castagnoli) check value, pinning the algorithm.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // Computed independently (bitwise CRC-32C, checksum stored big-endian
        // as HAProxy's make_proxy_line_v2 writes it).
        let fixed: [u8; 35] = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11,
            0x00, 0x13, 0x7f, 0x00, 0x00, 0x01, 0x7f, 0x00, 0x00, 0x02, 0x30, 0x39, 0x01, 0xbb,
            0x03, 0x00, 0x04, 0xcb, 0x93, 0x64, 0xcb,
        ];
        assert_eq!(
            expect_header(&fixed),
            proxied("127.0.0.1:12345", "127.0.0.2:443")
        );
        let mut flipped = fixed;
        flipped[34] ^= 1;
        expect_error(&flipped, ProxyError::ChecksumMismatch);
        let mut moved = fixed;
        moved[19] = 2; // source 127.0.0.2: the covered bytes changed
        expect_error(&moved, ProxyError::ChecksumMismatch);

        let mut body = ipv6_block();
        body.extend_from_slice(&[0x04, 0x00, 0x02, 9, 9]);
        let good = with_crc(v2(0x21, 0x21, &body));
        assert_eq!(
            expect_header(&good),
            proxied("[2001:db8::1]:65535", "[2001:db8::2]:6379")
        );
        assert_eq!(
            expect_header(&with_crc(v2(0x20, 0x00, &[]))),
            ProxyHeader::Local
        );

        // A CRC TLV whose value is not 4 bytes, and two CRC TLVs.
        let mut body = IPV4_BLOCK.to_vec();
        body.extend_from_slice(&[0x03, 0x00, 0x03, 0, 0, 0]);
        expect_error(&v2(0x21, 0x11, &body), ProxyError::MalformedTlv);
        let mut twice = IPV4_BLOCK.to_vec();
        twice.extend_from_slice(&[0x03, 0x00, 0x04, 0, 0, 0, 0]);
        expect_error(&with_crc(v2(0x21, 0x11, &twice)), ProxyError::MalformedTlv);
    }

    #[test]
    fn v2_malformed() {
        // Version 1 and 3 in the version nibble; commands 2 and 0xf.
        expect_error(&v2(0x11, 0x11, &IPV4_BLOCK), ProxyError::UnsupportedVersion);
        expect_error(&v2(0x31, 0x11, &IPV4_BLOCK), ProxyError::UnsupportedVersion);
        expect_error(&v2(0x22, 0x11, &IPV4_BLOCK), ProxyError::UnsupportedCommand);
        expect_error(&v2(0x2f, 0x11, &IPV4_BLOCK), ProxyError::UnsupportedCommand);
        // Families the spec does not define, and UDP.
        for family in [0x01, 0x10, 0x13, 0x20, 0x41, 0xff] {
            expect_error(&v2(0x21, family, &IPV4_BLOCK), ProxyError::UndefinedFamily);
        }
        expect_error(
            &v2(0x21, 0x12, &IPV4_BLOCK),
            ProxyError::UnsupportedTransport,
        );
        expect_error(
            &v2(0x21, 0x22, &ipv6_block()),
            ProxyError::UnsupportedTransport,
        );
        // Lengths: too short for the addresses, over the cap.
        expect_error(&v2(0x21, 0x11, &IPV4_BLOCK[..11]), ProxyError::BadLength);
        expect_error(&v2(0x21, 0x21, &IPV4_BLOCK), ProxyError::BadLength);
        expect_error(
            &v2(0x21, 0x11, &vec![0x04; MAX_V2_LEN + 1]),
            ProxyError::BadLength,
        );
        // A declared 65535 is refused on the 16th byte, before the bytes arrive.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        expect_error(&huge, ProxyError::BadLength);
        // The cap itself is accepted.
        let mut body = IPV4_BLOCK.to_vec();
        let fill = MAX_V2_LEN - body.len() - 3;
        body.extend_from_slice(&[0x04]);
        body.extend_from_slice(&u16::try_from(fill).unwrap().to_be_bytes());
        body.resize(MAX_V2_LEN, 0);
        let (_, n) = decode_both(&v2(0x21, 0x11, &body)).unwrap().unwrap();
        assert_eq!(n, MAX_HEADER_LEN);
    }

    #[test]
    fn v2_truncated_tlvs() {
        for tail in [
            &[0x04][..],
            &[0x04, 0x00],
            &[0x04, 0x00, 0x02, 1],
            &[0x04, 0xff, 0xff],
        ] {
            let mut body = IPV4_BLOCK.to_vec();
            body.extend_from_slice(tail);
            expect_error(&v2(0x21, 0x11, &body), ProxyError::MalformedTlv);
        }
        // A TLV that would run past the header into the application's bytes.
        let mut body = IPV4_BLOCK.to_vec();
        body.extend_from_slice(&[0x04, 0x00, 0x05, 1, 2]);
        let mut h = v2(0x21, 0x11, &body);
        h.extend_from_slice(b"345\x16\x03");
        expect_error(&h, ProxyError::MalformedTlv);
    }

    #[test]
    fn client_addr_falls_back_to_the_peer() {
        let peer: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        assert_eq!(ProxyHeader::Local.client_addr(peer), peer);
        assert_eq!(ProxyHeader::Unknown.client_addr(peer), peer);
        let h = proxied("192.0.2.1:1", "192.0.2.2:2");
        assert_eq!(h.client_addr(peer), "192.0.2.1:1".parse().unwrap());
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().expect("test net")).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn trusted_proxies() {
        let none = TrustedProxies::default();
        assert!(none.is_empty());
        assert!(!none.trusts(ip("127.0.0.1")));
        assert!(!none.trusts(ip("::1")));

        let t = trusted(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8:1::/48"]);
        assert!(!t.is_empty());
        assert!(t.trusts(ip("10.255.0.1")));
        assert!(t.trusts(ip("192.0.2.7")));
        assert!(!t.trusts(ip("192.0.2.8")));
        assert!(!t.trusts(ip("11.0.0.1")));
        assert!(t.trusts(ip("2001:db8:1:ffff::1")));
        assert!(!t.trusts(ip("2001:db8:2::1")));
        // A dual-stack listener reports IPv4 peers as mapped addresses.
        assert!(t.trusts(ip("::ffff:10.0.0.1")));
        assert!(t.trusts(ip("::ffff:192.0.2.7")));
        assert!(!t.trusts(ip("::ffff:11.0.0.1")));
        // IPv4-compatible and NAT64 forms are not the IPv4 host.
        assert!(!t.trusts(ip("::10.0.0.1")));
        assert!(!t.trusts(ip("64:ff9b::10.0.0.1")));

        // A net written in mapped form matches both spellings of the peer.
        let mapped = trusted(&["::ffff:10.0.0.0/104"]);
        assert!(mapped.trusts(ip("::ffff:10.1.2.3")));
        assert!(mapped.trusts(ip("10.1.2.3")));
        assert!(!mapped.trusts(ip("11.1.2.3")));
        // Host bits set in the configured net do not matter.
        assert!(trusted(&["10.1.2.3/8"]).trusts(ip("10.9.9.9")));
    }
}
