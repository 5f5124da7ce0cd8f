//! `tollgate cert`: the cluster PKI in two commands. `init` writes a CA;
//! `issue` writes a certificate whose SAN URI names the role
//! (`spiffe://tollgate/<ledger|edge|admin>/<id>`). An operator's own CA can
//! issue the same shape instead (README, "Production").

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tollgate_tls::pki::{self, DEFAULT_CA_DAYS, DEFAULT_CERT_DAYS};
use tollgate_tls::{Role, RoleKind};

#[derive(Debug, Args)]
pub struct CertArgs {
    #[command(subcommand)]
    cmd: CertCmd,
}

#[derive(Debug, Subcommand)]
enum CertCmd {
    /// Writes a new cluster CA: DIR/ca.pem and DIR/ca.key (mode 0600). Never overwrites one.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
        days: u32,
    },
    /// Issues a certificate signed by the CA in DIR: DIR/<role>-<id|name>.pem and .key.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// ledger, edge or admin.
        #[arg(long, value_parser = ["ledger", "edge", "admin"])]
        role: String,
        /// A ledger's node id.
        #[arg(long, required_if_eq("role", "ledger"), conflicts_with = "name")]
        id: Option<u64>,
        /// An edge's or admin's name: 1-64 letters, digits, '-', '_', '.'.
        #[arg(long)]
        name: Option<String>,
        /// Names and addresses the process is reached at, comma separated
        /// (required for a ledger: every address in --peers and --ledger lists).
        #[arg(long, value_delimiter = ',')]
        host: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = DEFAULT_CERT_DAYS)]
        days: u32,
    },
}

fn issue_role(role: &str, id: Option<u64>, name: Option<&str>) -> Result<Role, String> {
    let kind = RoleKind::parse(role).ok_or_else(|| format!("unknown role {role:?}"))?;
    match (kind, id, name) {
        (RoleKind::Ledger, Some(id), None) => Role::new(kind, &id.to_string()),
        (RoleKind::Ledger, _, _) => Err("a ledger certificate takes --id N (the node id), not --name".into()),
        (_, None, Some(name)) => Role::new(kind, name),
        (_, _, _) => Err(format!("an {role} certificate takes --name NAME, not --id")),
    }
}

pub fn run(args: CertArgs) -> ExitCode {
    let result = match args.cmd {
        CertCmd::Init { dir, days } => pki::init_ca(&dir, days).map(|w| {
            println!("wrote the cluster CA: {} and {} (keep the key offline)", w.cert.display(), w.key.display());
        }),
        CertCmd::Issue { dir, role, id, name, host, days } => match issue_role(&role, id, name.as_deref()) {
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(64);
            }
            Ok(role) => pki::issue(&dir, &role, &host, days).map(|w| {
                println!("wrote {} and {} for {} ({})", w.cert.display(), w.key.display(), role, role.uri());
            }),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
