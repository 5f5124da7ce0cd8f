//! TLS for the edge's HTTP listener, where AI tools connect: a certificate
//! and key from the operator (usually from a public or corporate CA, not
//! the cluster CA), no client certificates, TLS 1.2 and 1.3, HTTP/1.1.
//! Re-read on [`HttpTls::reload`] (SIGHUP) like [`crate::ClusterTls`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;

use crate::cluster::{provider, read_certificates, read_key, TlsError};

pub struct HttpTls {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
}

impl HttpTls {
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Arc<HttpTls>, TlsError> {
        let config = RwLock::new(Self::read(&cert, &key)?);
        Ok(Arc::new(HttpTls { cert, key, config }))
    }

    fn read(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = read_certificates(cert)?;
        let key_der = read_key(key)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls { path: cert.to_path_buf(), source })?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|source| TlsError::Rustls { path: key.to_path_buf(), source })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Re-reads the files; on an error the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Self::read(&self.cert, &self.key)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}
