//! `[server] tls_*`, `https_*`, `quic_listen` and `h3_listen`: the encrypted listeners' addresses and the certificate they
//! present. The certificate and key are read and checked with the rest of the config, so a bad
//! pair fails the reload like a bad list and the running one stays.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;

use super::Checks;
use super::file::ServerSection;
use crate::protocol::Transport;

/// The DoH path when `https_path` is not set.
pub const DEFAULT_HTTPS_PATH: &str = "/dns-query";

/// The encrypted listeners (read when they are bound; a reload does not move them) and the
/// certificate they present (taken afresh from the running config at every handshake).
#[derive(Debug, Clone, Default)]
pub struct EncryptedSettings {
    /// Each encrypted listener with its transport, in config order per transport.
    pub listen: Vec<(Transport, SocketAddr)>,
    pub https_path: String,
    /// The name the certificate is for (text), DDR's target.
    pub name: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Present when an encrypted listener is configured and its certificate is good.
    pub certificate: Option<Certificate>,
}

/// The certificate and key as the TLS servers use them: one server config per encrypted
/// transport, with its ALPN ([`Transport::server_alpn`]).
#[derive(Clone)]
pub struct Certificate {
    servers: Vec<(Transport, Arc<rustls::ServerConfig>)>,
    /// The leaf certificate's notAfter, Unix seconds (`None`: not readable as X.509).
    pub not_after_unix: Option<i64>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Certificate")
    }
}

impl Certificate {
    /// The TLS server config of `transport` (an encrypted one).
    pub fn server(&self, transport: Transport) -> Arc<rustls::ServerConfig> {
        let found = self.servers.iter().find(|(t, _)| *t == transport);
        found.expect("a config per encrypted transport").1.clone()
    }
}

impl EncryptedSettings {
    /// Whether any encrypted listener is configured.
    pub fn any(&self) -> bool {
        !self.listen.is_empty()
    }

    /// The listeners of `transport`.
    pub fn listen_of(&self, transport: Transport) -> impl Iterator<Item = SocketAddr> + '_ {
        (self.listen.iter()).filter_map(move |&(t, addr)| (t == transport).then_some(addr))
    }
}

impl Checks<'_> {
    /// Checks the encrypted listeners' keys and reads their certificate and key.
    pub(super) fn encrypted(&mut self, server: &ServerSection) -> EncryptedSettings {
        let path = match &server.https_path {
            Some(path) if !path.get_ref().starts_with('/') => {
                let message = format!("https_path \"{}\" must start with /", path.get_ref());
                self.report(path, message);
                path.get_ref().clone()
            }
            Some(path) => path.get_ref().clone(),
            None => DEFAULT_HTTPS_PATH.to_owned(),
        };
        if let Some(name) = &server.tls_name
            && crate::name::from_text(name.get_ref()).is_err()
        {
            let message = format!("tls_name \"{}\" is not a domain name", name.get_ref());
            self.report(name, message);
        }
        let listen = Transport::encrypted()
            .flat_map(|t| server.listen_of(t).iter().map(move |a| (t, a.get_ref().0)))
            .collect();
        let mut settings = EncryptedSettings {
            listen,
            https_path: path,
            name: server.tls_name.as_ref().map(|n| n.get_ref().clone()),
            cert_file: server.tls_cert_file.as_ref().map(|f| f.get_ref().clone()),
            key_file: server.tls_key_file.as_ref().map(|f| f.get_ref().clone()),
            certificate: None,
        };
        let first = Transport::encrypted().find_map(|t| server.listen_of(t).first());
        match (first, &server.tls_cert_file, &server.tls_key_file) {
            (None, _, _) => {}
            (Some(_), Some(cert), Some(key)) => settings.certificate = self.certificate(cert, key),
            (Some(at), _, _) => self.report(
                at,
                "tls_listen, https_listen, quic_listen and h3_listen need tls_cert_file and tls_key_file",
            ),
        }
        settings
    }

    /// Reads a certificate chain and its key (PEM) into the DoT and DoH server configs.
    fn certificate(
        &mut self,
        cert: &Spanned<PathBuf>,
        key: &Spanned<PathBuf>,
    ) -> Option<Certificate> {
        let shown = cert.get_ref().display();
        let chain = match CertificateDer::pem_file_iter(cert.get_ref()) {
            Ok(certs) => certs.collect::<Result<Vec<_>, _>>(),
            Err(err) => Err(err),
        };
        let chain = match chain {
            Ok(chain) if !chain.is_empty() => chain,
            Ok(_) => {
                self.report(cert, format!("tls_cert_file {shown} holds no certificate"));
                return None;
            }
            Err(err) => {
                self.report(cert, format!("cannot read tls_cert_file {shown}: {err}"));
                return None;
            }
        };
        let private = match PrivateKeyDer::from_pem_file(key.get_ref()) {
            Ok(private) => private,
            Err(err) => {
                let shown = key.get_ref().display();
                self.report(key, format!("cannot read tls_key_file {shown}: {err}"));
                return None;
            }
        };
        let build = |transport: Transport| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let versions: &[&rustls::SupportedProtocolVersion] = match transport.tls13_only() {
                true => &[&rustls::version::TLS13],
                false => rustls::DEFAULT_VERSIONS,
            };
            let mut config = rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .expect("the provider supports TLS 1.2 and 1.3")
                .with_no_client_auth()
                .with_single_cert(chain.clone(), private.clone_key())?;
            let alpn = transport.server_alpn().unwrap_or_default();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok::<_, rustls::Error>((transport, Arc::new(config)))
        };
        match Transport::encrypted().map(build).collect() {
            Ok(servers) => Some(Certificate {
                servers,
                not_after_unix: not_after(&chain[0]),
            }),
            Err(err) => {
                let message = format!("tls_cert_file {shown} with its tls_key_file: {err}");
                self.report(cert, message);
                None
            }
        }
    }
}

/// The notAfter of a DER certificate, Unix seconds.
fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}
