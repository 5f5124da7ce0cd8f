//! `tollgate cert`: a cluster CA and the certificates it issues, written as
//! PEM files. Generation is rcgen's; this module only decides the shape:
//! ECDSA P-256 keys, one SAN URI naming the role (see [`crate::role`]), the
//! hosts a ledger is reached at as DNS or IP SANs, and the key usages each
//! role needs (a ledger is both server and client; edges and admins are
//! clients). Private keys are written with mode 0600.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::role::Role;

/// Validity of a new CA unless told otherwise: ten years.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Validity of a new leaf certificate unless told otherwise: one year.
pub const DEFAULT_CERT_DAYS: u32 = 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} already exists; a CA is never overwritten (use another --dir for a new CA)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

/// The files one certificate was written to.
#[derive(Debug, Clone)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), PkiError> {
    if days == 0 {
        return Err(PkiError::Invalid("--days must be at least 1".into()));
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that run a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// node re-reading its files (SIGHUP) never sees half of one.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// `tollgate cert init`: a new cluster CA in `dir` (`ca.pem`, `ca.key`).
pub fn init_ca(dir: &Path, days: u32) -> Result<Written, PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tollgate");
    dn.push(DnType::CommonName, "Tollgate cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days)?;
    let cert = params.self_signed(&key)?;
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Written { cert: cert_path, key: key_path })
}

/// `tollgate cert issue`: a certificate for `role`, signed by the CA in
/// `dir`, written to `dir/<role>-<id>.pem` and `.key` (replacing earlier
/// ones atomically, so a node can be re-issued and told to reload).
pub fn issue(dir: &Path, role: &Role, hosts: &[String], days: u32) -> Result<Written, PkiError> {
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca_pem = std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
    let signing = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, signing)?;
    if matches!(role, Role::Ledger(_)) && hosts.is_empty() {
        return Err(PkiError::Invalid(
            "a ledger certificate needs --host with every name or address other nodes, edges and admins use to \
             reach it (e.g. --host 10.0.0.1,ledger-1.internal)"
                .into(),
        ));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tollgate");
    dn.push(DnType::CommonName, role.to_string());
    params.distinguished_name = dn;
    params.subject_alt_names.push(SanType::URI(role.uri().try_into()?));
    for host in hosts {
        let host = host.trim();
        let san = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if !host.is_empty() => SanType::DnsName(host.to_string().try_into()?),
            Err(_) => return Err(PkiError::Invalid("--host has an empty entry".into())),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Ledger(_) => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Edge(_) if !hosts.is_empty() => {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        }
        Role::Edge(_) | Role::Admin(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let base = format!("{}-{}", role.kind().as_str(), role.id());
    let (cert_path, key_path) = (dir.join(format!("{base}.pem")), dir.join(format!("{base}.key")));
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Written { cert: cert_path, key: key_path })
}
