//! The three flags every Tollgate process takes for the cluster's mutual
//! TLS (`tollgate ledger`, `edge`, `up` and `admin` alike), with their
//! `TOLLGATE_TLS_*` variables.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tollgate_tls::{ClusterTls, TlsFiles};

#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// The cluster CA bundle (PEM) to trust: `tollgate cert init` writes
    /// ca.pem; during a CA rotation, the old and new CAs concatenated.
    #[arg(long, env = "TOLLGATE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), from `tollgate cert issue`.
    #[arg(long, env = "TOLLGATE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TOLLGATE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files, if all three are given; an error if only some are.
    pub fn files(&self) -> Result<Option<TlsFiles>, String> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => {
                Ok(Some(TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() }))
            }
            _ => Err(
                "mutual TLS needs all three of --tls-ca, --tls-cert and --tls-key (or TOLLGATE_TLS_CA, _CERT, _KEY)"
                    .into(),
            ),
        }
    }

    /// Loads and checks the files, if given.
    pub fn load(&self) -> Result<Option<Arc<ClusterTls>>, String> {
        match self.files()? {
            None => Ok(None),
            Some(files) => ClusterTls::load(files).map(Some).map_err(|e| format!("TLS: {e}")),
        }
    }
}
