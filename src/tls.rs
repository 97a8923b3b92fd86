//! rustls configurations: server side for listeners, client side for backends,
//! development certificates, and what a verified client certificate says.
//! No protocol code lives here.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use thiserror::Error;

/// TLS material could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the combination.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client CA: {0}")]
    Verifier(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing generated files failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Whether a listener asks for client certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// Not requested.
    #[default]
    None,
    /// Requested and verified when sent; not an identity on its own.
    Optional,
    /// Required and verified; may identify the user without a password.
    Required,
}

fn pem_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Loads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificates found"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(path, e))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in load_certs(path)? {
        store.add(c).map_err(|e| pem_err(path, e))?;
    }
    Ok(store)
}

/// A listener's rustls config: TLS 1.2 and 1.3 only, with the given ALPN protocols.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    mode: ClientCertMode,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match (client_ca, mode) {
        (Some(ca), ClientCertMode::Optional | ClientCertMode::Required) => {
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider);
            if mode == ClientCertMode::Optional {
                v = v.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(
                v.build().map_err(|e| TlsError::Verifier(e.to_string()))?,
            )
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A backend's rustls config. Without `verify`, the certificate chain is still
/// checked against `ca` (or the web PKI roots) but the name is not.
pub fn client_config(ca: Option<&Path>, verify: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(provider::default_provider());
    let roots = match ca {
        Some(ca) => roots(ca)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = if verify {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoNameCheck(inner)))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Verifies the chain but accepts any name (`mode = "required"` for backends
/// addressed by IP inside a private network).
#[derive(Debug)]
struct NoNameCheck(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for NoNameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Names a verified client certificate carries: the subject CNs, then DNS, email and URI SANs.
pub fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    names.push(s.to_string())
                }
                _ => {}
            }
        }
    }
    names
}

/// `tls-server-end-point` channel binding data (RFC 5929 §4.1) for the first
/// certificate in a PEM file: its hash under the certificate signature's hash
/// algorithm, with SHA-256 standing in for MD5 and SHA-1.
pub fn end_point_hash(cert_file: &Path) -> Result<Vec<u8>, TlsError> {
    let cert = load_certs(cert_file)?.remove(0);
    Ok(certificate_end_point_hash(&cert))
}

/// When the first certificate in a PEM file expires, in Unix seconds.
pub fn not_after(cert_file: &Path) -> Result<i64, TlsError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let cert = load_certs(cert_file)?.remove(0);
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| pem_err(cert_file, e))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// [`end_point_hash`] for a certificate in DER.
pub fn certificate_end_point_hash(cert: &CertificateDer<'_>) -> Vec<u8> {
    use sha2::Digest;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let oid = X509Certificate::from_der(cert.as_ref())
        .map(|(_, c)| c.signature_algorithm.algorithm.to_id_string())
        .unwrap_or_default();
    match oid.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => {
            sha2::Sha384::digest(cert.as_ref()).to_vec()
        }
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => {
            sha2::Sha512::digest(cert.as_ref()).to_vec()
        }
        _ => sha2::Sha256::digest(cert.as_ref()).to_vec(),
    }
}

/// Bounded label for a failed TLS handshake.
pub fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match inner {
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                "client_certificate"
            }
            rustls::Error::PeerIncompatible(_) => "incompatible",
            rustls::Error::AlertReceived(_) => "alert_received",
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                "protocol"
            }
            rustls::Error::NoApplicationProtocol => "alpn",
            _ => "other",
        };
    }
    match e.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => "eof",
        ErrorKind::InvalidData => "protocol",
        _ => "io",
    }
}

/// Development certificates written by [`generate_dev_certs`].
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// CA certificate (trust this in clients).
    pub ca_cert: std::path::PathBuf,
    /// Server certificate and key (for listeners and test backends).
    pub server_cert: std::path::PathBuf,
    /// Server key.
    pub server_key: std::path::PathBuf,
    /// Client certificate (CN = the given client name).
    pub client_cert: std::path::PathBuf,
    /// Client key.
    pub client_key: std::path::PathBuf,
}

/// Writes a development CA plus server and client certificates into `dir`.
///
/// The server certificate covers `localhost`, 127.0.0.1 and ::1 plus `extra_hosts`;
/// the client certificate has `client_name` as CN and DNS SAN. Keys are mode 0600.
pub fn generate_dev_certs(
    dir: &Path,
    client_name: &str,
    extra_hosts: &[String],
) -> Result<DevCerts, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir)?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "portcullis development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    hosts.extend(extra_hosts.iter().cloned());
    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(hosts)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(vec![client_name.to_string()])?;
    client
        .distinguished_name
        .push(DnType::CommonName, client_name);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key)?;

    let out = DevCerts {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    };
    write_file(&out.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(
        &dir.join("ca.key"),
        ca_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(&out.server_cert, server_cert.pem().as_bytes(), 0o644)?;
    write_file(
        &out.server_key,
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(&out.client_cert, client_cert.pem().as_bytes(), 0o644)?;
    write_file(
        &out.client_key,
        client_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    Ok(out)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_load_and_name_the_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = generate_dev_certs(dir.path(), "app.client", &[]).expect("generate");
        server_config(
            &c.server_cert,
            &c.server_key,
            Some(&c.ca_cert),
            ClientCertMode::Required,
            &[],
        )
        .expect("server");
        client_config(Some(&c.ca_cert), true).expect("client");
        let cert = &load_certs(&c.client_cert).expect("load")[0];
        assert_eq!(
            certificate_names(cert),
            vec!["app.client".to_string(), "app.client".to_string()]
        );
    }
}
