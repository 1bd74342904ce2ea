//! The endpoint's TLS listener configuration: rustls (ring provider, TLS 1.2 and 1.3),
//! a certificate chain and key from PEM files, no client certificates (meters
//! authenticate in CONNECT). The handshake runs inside the connection's task under the
//! CONNECT deadline, so a client that stalls it holds one connection slot, nothing more.

use std::sync::Arc;

use anyhow::{Context, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;

use crate::config::TlsConfig;

/// Builds the acceptor from the configured PEM files; errors say which file is wrong.
pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .with_context(|| format!("mqtt.tls.cert_file {}", config.cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "mqtt.tls.cert_file {}: not PEM certificates",
                config.cert_file.display()
            )
        })?;
    if certs.is_empty() {
        bail!(
            "mqtt.tls.cert_file {}: no certificate in it",
            config.cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file).with_context(|| {
        format!(
            "mqtt.tls.key_file {}: no PEM private key in it",
            config.key_file.display()
        )
    })?;
    let server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("mqtt.tls: the key does not match the certificate")?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
