//! Certificates for test and chaos clusters: a CA per run and a certificate
//! per process, made with the same library `tollgate cert` uses, so every
//! harness can run its cluster over mutual TLS as production does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tollgate_tls::{ClusterTls, Role, TlsFiles};

/// A run's CA directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A new CA in `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Pki> {
        tollgate_tls::pki::init_ca(dir, 30)?;
        Ok(Pki { dir: dir.to_path_buf() })
    }

    /// Issues (or re-issues) the certificate of `role`, valid for `hosts`.
    pub fn issue(&self, role: &Role, hosts: &[String]) -> anyhow::Result<TlsFiles> {
        let w = tollgate_tls::pki::issue(&self.dir, role, hosts, 30)?;
        Ok(TlsFiles { ca: self.dir.join("ca.pem"), cert: w.cert, key: w.key })
    }

    /// The files of `role`, issuing them first if they do not exist yet.
    pub fn files(&self, role: &Role, hosts: &[String]) -> anyhow::Result<TlsFiles> {
        let base = format!("{}-{}", role.kind().as_str(), role.id());
        let cert = self.dir.join(format!("{base}.pem"));
        if cert.exists() {
            return Ok(TlsFiles { ca: self.dir.join("ca.pem"), cert, key: self.dir.join(format!("{base}.key")) });
        }
        self.issue(role, hosts)
    }

    /// A loaded identity for an in-process client (an admin or an edge).
    pub fn client(&self, role: &Role) -> anyhow::Result<Arc<ClusterTls>> {
        Ok(ClusterTls::load(self.files(role, &[])?)?)
    }

    /// `--tls-ca … --tls-cert … --tls-key …` for a child process.
    pub fn flags(files: &TlsFiles) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            files.ca.display().to_string(),
            "--tls-cert".into(),
            files.cert.display().to_string(),
            "--tls-key".into(),
            files.key.display().to_string(),
        ]
    }
}

/// The host part of `host:port`, for a certificate's SAN.
pub fn host_of(addr: &str) -> String {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']').to_string()
}
