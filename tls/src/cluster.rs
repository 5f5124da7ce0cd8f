//! The mutual TLS every connection between Tollgate processes speaks: TLS
//! 1.3 only, both sides present a certificate from the cluster's CA, and a
//! client only talks to a server whose certificate names a ledger.
//!
//! [`ClusterTls`] holds the rustls configs built from three PEM files and
//! rebuilds them on [`ClusterTls::reload`] (SIGHUP): connections made after
//! a reload use the new files, open ones keep theirs, so certificates and
//! CAs rotate without downtime. A reload that fails keeps the old configs.
//!
//! Why not tonic's `ServerTlsConfig`/`ClientTlsConfig`: they take fixed
//! files (no reload without rebinding the port) and cannot check the
//! server's role. rustls does all the cryptography either way.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::role::{Role, RoleError};

/// The three files: the CA bundle to trust, this process's certificate
/// (chain) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{path}: {source}")]
    Role { path: PathBuf, source: RoleError },
    #[error("{path} is not a certificate the CAs in {ca} vouch for: {source}")]
    Untrusted { path: PathBuf, ca: PathBuf, source: rustls::Error },
    #[error("{path}: {source}")]
    Rustls { path: PathBuf, source: rustls::Error },
    #[error("the new certificate names {new}, but this process runs as {old}; restart it to change identity")]
    RoleChanged { old: Role, new: Role },
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Read { path: path.to_path_buf(), message: e.to_string() }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| read_err(path, e))
}

/// One loading of the three files.
struct Loaded {
    role: Role,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl Loaded {
    fn read(files: &TlsFiles) -> Result<Loaded, TlsError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        for ca in read_certificates(&files.ca)? {
            roots.add(ca).map_err(|source| TlsError::Rustls { path: files.ca.clone(), source })?;
        }
        let roots = Arc::new(roots);
        let chain = read_certificates(&files.cert)?;
        let key = read_key(&files.key)?;
        let role =
            Role::from_certificate(&chain[0]).map_err(|source| TlsError::Role { path: files.cert.clone(), source })?;
        let rustls_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Rustls { path, source }
        };
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| read_err(&files.ca, e))?;
        // Our own certificate must chain to a CA we trust, or every peer would
        // refuse it: say so now rather than at the first handshake.
        client_verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|source| TlsError::Untrusted { path: files.cert.clone(), ca: files.ca.clone(), source })?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| read_err(&files.ca, e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err(&files.cert))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(rustls_err(&files.key))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err(&files.cert))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LedgerServerVerifier { inner: server_verifier }))
            .with_client_auth_cert(chain, key)
            .map_err(rustls_err(&files.key))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Loaded { role, server: Arc::new(server), client: Arc::new(client) })
    }
}

/// This process's cluster identity and the TLS configs built from it.
pub struct ClusterTls {
    files: TlsFiles,
    role: Role,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls").field("files", &self.files).field("role", &self.role).finish()
    }
}

impl ClusterTls {
    /// Reads and checks the files: the certificate names a role and chains
    /// to one of the CAs, and the key matches it.
    pub fn load(files: TlsFiles) -> Result<Arc<ClusterTls>, TlsError> {
        let loaded = Loaded::read(&files)?;
        Ok(Arc::new(ClusterTls { role: loaded.role.clone(), files, loaded: RwLock::new(loaded) }))
    }

    /// Re-reads the files. New connections use them; on an error the
    /// previous configs stay in use. The role may not change.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Loaded::read(&self.files)?;
        if loaded.role != self.role {
            return Err(TlsError::RoleChanged { old: self.role.clone(), new: loaded.role });
        }
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(())
    }

    /// Who this process is, as its certificate says.
    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner()).server.clone()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner()).client.clone()
    }
}

/// WebPKI verification of the server's certificate against the cluster CAs
/// and the address dialled, and then: the certificate must name a ledger
/// (every Tollgate gRPC server is one), so an edge's or admin's certificate
/// cannot stand in for a ledger node.
#[derive(Debug)]
struct LedgerServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for LedgerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        match Role::from_certificate(end_entity) {
            Ok(Role::Ledger(_)) => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
