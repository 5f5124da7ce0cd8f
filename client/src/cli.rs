//! `tollgate admin …`: teams, users, keys, budgets, usage and cluster status.
//! Every read takes `--json`; errors print the server's message and exit 1.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tollgate_proto::v1 as pb;
use tollgate_types::money::NanoUsd;
use tonic::Status;

use crate::table::{self, Col};
use crate::AdminClient;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Ledger node gRPC address(es), comma separated; any member will do.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7070", env = "TOLLGATE_SERVER")]
    pub server: Vec<String>,
    /// File holding the admin token (default: $TOLLGATE_ADMIN_TOKEN, else ./tollgate-data/admin.token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: crate::tls_args::TlsArgs,
    #[command(subcommand)]
    pub cmd: AdminCmd,
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// The cluster as each member sees it.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Teams: the second link of the chain org → team → user → key.
    Team {
        #[command(subcommand)]
        cmd: TeamCmd,
    },
    /// Users, each in one team.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Virtual keys that clients send instead of a provider key.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Spend caps on the org, a team, a user or a key.
    Budget {
        #[command(subcommand)]
        cmd: BudgetCmd,
    },
    /// Which models a scope may use.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Bounds on what one request may do.
    Limits {
        #[command(subcommand)]
        cmd: LimitsCmd,
    },
    /// Prices edges meter with: overrides of the shipped book, imports, the discount.
    Price {
        #[command(subcommand)]
        cmd: crate::price_cli::PriceCmd,
    },
    /// The most recent config changes with who made them and when.
    Audit {
        #[arg(long)]
        json: bool,
    },
    /// Spend per budget, or per team, user, key, model, or Claude Code's
    /// session, agent, request class or prompt.
    Usage {
        /// Group by team, user, key, model, session, agent, request-class or
        /// prompt instead of one row per budget.
        #[arg(long)]
        by: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Each member's own view: role, term, applied index, state digest.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TeamCmd {
    /// Creates a team.
    Create { name: String },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Creates a user in a team.
    Create {
        email: String,
        #[arg(long)]
        team: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Creates a virtual key and prints its secret once; only a hash is stored.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BudgetCmd {
    /// Sets (or replaces) the budget of a scope: org, team:NAME, user:EMAIL, key:ID.
    Set {
        scope: String,
        /// Limit in dollars, e.g. 250 or 12.50.
        #[arg(long, allow_hyphen_values = true)]
        limit_usd: String,
        /// daily, weekly (ISO, Monday), monthly or total; UTC boundaries.
        #[arg(long)]
        period: String,
        #[arg(long, default_value = "hard")]
        mode: String,
        /// Narrow the budget to one model.
        #[arg(long)]
        model: Option<String>,
    },
    /// Lists every budget.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LimitsCmd {
    /// Sets the largest amount one request may reserve, settle or charge.
    Set {
        /// Dollars, e.g. 1100.
        #[arg(long, allow_hyphen_values = true)]
        max_request_usd: String,
    },
    /// Shows the limits in force.
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Restricts a scope to the listed models (an empty list removes the policy).
    Set {
        scope: String,
        #[arg(long, value_delimiter = ',')]
        allow_models: Vec<String>,
    },
}

fn read_token(args: &AdminArgs) -> anyhow::Result<Option<String>> {
    let from_file = |p: &PathBuf| -> anyhow::Result<String> {
        let t = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading token file {}: {e}", p.display()))?;
        Ok(t.trim().to_string())
    };
    if let Some(p) = &args.token_file {
        return Ok(Some(from_file(p)?));
    }
    if let Ok(t) = std::env::var("TOLLGATE_ADMIN_TOKEN") {
        return Ok(Some(t.trim().to_string()));
    }
    let default = PathBuf::from("tollgate-data/admin.token");
    if default.exists() {
        return Ok(Some(from_file(&default)?));
    }
    Ok(None)
}

fn usd(n: u64) -> String {
    NanoUsd(n).to_string()
}

pub(crate) fn fail(s: Status) -> anyhow::Error {
    // A status with a source came from this side's transport (no server
    // answered it): most often a TLS mismatch with the cluster.
    let hint = if std::error::Error::source(&s).is_some() {
        "; the connection failed: if the cluster runs mutual TLS, give --tls-ca, --tls-cert and --tls-key (an \
         admin certificate of its CA)"
    } else {
        ""
    };
    anyhow::anyhow!("{} ({:?}){hint}", s.message(), s.code())
}

/// Runs one admin command; `lister` prices the book as the edges do.
pub async fn run(args: AdminArgs, lister: crate::price_cli::PriceLister) -> anyhow::Result<()> {
    let token = read_token(&args)?;
    let tls = args.tls.load().map_err(|e| anyhow::anyhow!(e))?;
    let client = AdminClient::new(&args.server, token, tls).map_err(fail)?;
    match args.cmd {
        AdminCmd::Cluster { cmd: ClusterCmd::Status { json } } => cluster_status(&client, json).await,
        AdminCmd::Team { cmd: TeamCmd::Create { name } } => {
            let r = client
                .call(pb::CreateTeamRequest { name: name.clone() }, |mut c, r| async move { c.create_team(r).await })
                .await
                .map_err(fail)?;
            println!("created team {name} (index {})", r.index);
            Ok(())
        }
        AdminCmd::User { cmd: UserCmd::Create { email, team } } => {
            let msg = pb::CreateUserRequest { email: email.clone(), team: team.clone() };
            let r = client.call(msg, |mut c, r| async move { c.create_user(r).await }).await.map_err(fail)?;
            println!("created user {email} in team {team} (index {})", r.index);
            Ok(())
        }
        AdminCmd::Key { cmd: KeyCmd::Create { user, name, json } } => {
            let msg = pb::CreateKeyRequest { user: user.clone(), name };
            let r = client.call(msg, |mut c, r| async move { c.create_key(r).await }).await.map_err(fail)?;
            if json {
                println!("{}", json!({"id": r.id, "secret": r.secret, "user": user, "index": r.index}));
            } else {
                println!("created key {} for {user}", r.id);
                println!("secret (shown once, store it now): {}", r.secret);
            }
            Ok(())
        }
        AdminCmd::Key { cmd: KeyCmd::Revoke { id } } => {
            let r = client
                .call(pb::RevokeKeyRequest { id: id.clone() }, |mut c, r| async move { c.revoke_key(r).await })
                .await
                .map_err(fail)?;
            println!("revoked key {id} (index {})", r.index);
            Ok(())
        }
        AdminCmd::Budget { cmd: BudgetCmd::Set { scope, limit_usd, period, mode, model } } => {
            let msg = pb::SetBudgetRequest { scope, model: model.unwrap_or_default(), limit_usd, period, mode };
            let r = client.call(msg, |mut c, r| async move { c.set_budget(r).await }).await.map_err(fail)?;
            let b = r.budget.unwrap_or_default();
            let model = if b.model.is_empty() { String::new() } else { format!(" for model {}", b.model) };
            println!(
                "budget {}{model}: {} {} ({}) (index {})",
                b.scope,
                usd(b.limit_nano_usd),
                b.period,
                b.mode,
                r.index
            );
            Ok(())
        }
        AdminCmd::Budget { cmd: BudgetCmd::List { json } } => budget_list(&client, json).await,
        AdminCmd::Policy { cmd: PolicyCmd::Set { scope, allow_models } } => {
            let msg = pb::SetPolicyRequest { scope: scope.clone(), allowed_models: allow_models };
            let r = client.call(msg, |mut c, r| async move { c.set_policy(r).await }).await.map_err(fail)?;
            println!("policy for {scope} set (index {})", r.index);
            Ok(())
        }
        AdminCmd::Limits { cmd: LimitsCmd::Set { max_request_usd } } => {
            let msg = pb::SetLimitsRequest { max_request_usd };
            let r = client.call(msg, |mut c, r| async move { c.set_limits(r).await }).await.map_err(fail)?;
            println!("per-request maximum: {} (index {})", usd(r.max_request_nano_usd), r.index);
            Ok(())
        }
        AdminCmd::Limits { cmd: LimitsCmd::Show { json } } => {
            let r = client
                .call(pb::GetConfigRequest {}, |mut c, r| async move { c.get_config(r).await })
                .await
                .map_err(fail)?;
            if json {
                println!("{}", json!({"index": r.index, "max_request_nano_usd": r.max_request_nano_usd}));
            } else {
                println!("per-request maximum: {}", usd(r.max_request_nano_usd));
            }
            Ok(())
        }
        AdminCmd::Price { cmd } => crate::price_cli::run(&client, cmd, lister).await,
        AdminCmd::Audit { json } => audit(&client, json).await,
        AdminCmd::Usage { by, json } => usage(&client, by, json).await,
    }
}

/// `budget list`.
async fn budget_list(client: &AdminClient, json: bool) -> anyhow::Result<()> {
    let r = client
        .call(pb::ListBudgetsRequest {}, |mut c, r| async move { c.list_budgets(r).await })
        .await
        .map_err(fail)?;
    if json {
        let budgets: Vec<Value> = r
            .budgets
            .iter()
            .map(|b| {
                json!({
                    "scope": b.scope,
                    "model": if b.model.is_empty() { Value::Null } else { json!(b.model) },
                    "limit_nano_usd": b.limit_nano_usd,
                    "period": b.period,
                    "mode": b.mode,
                })
            })
            .collect();
        println!("{}", json!({ "budgets": budgets }));
    } else {
        let cols =
            [Col("SCOPE", false), Col("MODEL", false), Col("LIMIT", true), Col("PERIOD", false), Col("MODE", false)];
        table::print(
            &cols,
            r.budgets.iter().map(|b| {
                let model = if b.model.is_empty() { "*" } else { &b.model };
                vec![b.scope.clone(), model.to_string(), usd(b.limit_nano_usd), b.period.clone(), b.mode.clone()]
            }),
        );
    }
    Ok(())
}

/// `audit`.
async fn audit(client: &AdminClient, json: bool) -> anyhow::Result<()> {
    let r = client.call(pb::AuditRequest {}, |mut c, r| async move { c.audit(r).await }).await.map_err(fail)?;
    if json {
        let entries: Vec<Value> = r
            .entries
            .iter()
            .map(|e| json!({"index": e.index, "time_ms": e.time_ms, "actor": e.actor, "what": e.what}))
            .collect();
        println!("{}", json!({ "entries": entries }));
    } else {
        let cols = [Col("INDEX", true), Col("TIME_MS", true), Col("ACTOR", false), Col("WHAT", false)];
        table::print(
            &cols,
            r.entries.iter().map(|e| vec![e.index.to_string(), e.time_ms.to_string(), e.actor.clone(), e.what.clone()]),
        );
    }
    Ok(())
}

/// One row of `usage --json` (empty fields as null).
fn usage_json(u: &pb::UsageRow) -> Value {
    json!({
        "scope": u.scope,
        "model": if u.model.is_empty() { Value::Null } else { json!(u.model) },
        "period": u.period,
        "spent_nano_usd": u.spent_nano_usd,
        "held_nano_usd": u.held_nano_usd,
        "unsettled_nano_usd": u.unsettled_nano_usd,
        "limit_nano_usd": u.limit_nano_usd,
        "requests": u.requests,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "excess_nano_usd": u.excess_nano_usd,
        "leased_nano_usd": u.leased_nano_usd,
        "user": if u.user.is_empty() { Value::Null } else { json!(u.user) },
        "parent_agent": if u.parent_agent.is_empty() { Value::Null } else { json!(u.parent_agent) },
        "first_ms": if u.last_ms == 0 { Value::Null } else { json!(u.first_ms) },
        "last_ms": if u.last_ms == 0 { Value::Null } else { json!(u.last_ms) },
    })
}

/// `usage [--by …]`.
async fn usage(client: &AdminClient, by: Option<String>, json: bool) -> anyhow::Result<()> {
    let msg = pb::UsageRequest { by: by.unwrap_or_default() };
    let r = client.call(msg, |mut c, r| async move { c.usage(r).await }).await.map_err(fail)?;
    if json {
        let rows: Vec<Value> = r.rows.iter().map(usage_json).collect();
        println!("{}", json!({ "rows": rows, "index": r.index }));
    } else {
        if r.rows.iter().any(|u| u.last_ms != 0) {
            // By session, agent, request class or prompt.
            let cols = [
                Col("SCOPE", false),
                Col("USER", false),
                Col("SPENT", true),
                Col("EXCESS", true),
                Col("REQUESTS", true),
                Col("INPUT", true),
                Col("OUTPUT", true),
                Col("PARENT", false),
            ];
            table::print(
                &cols,
                r.rows.iter().map(|u| {
                    vec![
                        u.scope.clone(),
                        u.user.clone(),
                        usd(u.spent_nano_usd),
                        usd(u.excess_nano_usd),
                        u.requests.to_string(),
                        u.input_tokens.to_string(),
                        u.output_tokens.to_string(),
                        if u.parent_agent.is_empty() { "-".to_string() } else { u.parent_agent.clone() },
                    ]
                }),
            );
            return Ok(());
        }
        let cols = [
            Col("SCOPE", false),
            Col("PERIOD", false),
            Col("SPENT", true),
            Col("HELD", true),
            Col("UNSETTLED", true),
            Col("LIMIT", true),
            Col("REQUESTS", true),
            Col("EXCESS", true),
        ];
        table::print(
            &cols,
            r.rows.iter().map(|u| {
                let scope = if u.model.is_empty() || u.scope.starts_with("model:") {
                    u.scope.clone()
                } else {
                    format!("{} [{}]", u.scope, u.model)
                };
                vec![
                    scope,
                    u.period.clone(),
                    usd(u.spent_nano_usd),
                    usd(u.held_nano_usd),
                    usd(u.unsettled_nano_usd),
                    u.limit_nano_usd.map(usd).unwrap_or_else(|| "-".to_string()),
                    u.requests.to_string(),
                    usd(u.excess_nano_usd),
                ]
            }),
        );
    }
    Ok(())
}

/// Asks the given servers for the membership, then asks every member for its own view.
async fn cluster_status(client: &AdminClient, json_out: bool) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(2);
    let mut first: Option<pb::NodeStatusResponse> = None;
    let mut errors = Vec::new();
    for addr in client.servers() {
        match AdminClient::node_status_at(addr, timeout, client.tls()).await {
            Ok(s) if s.initialized => {
                first = Some(s);
                break;
            }
            Ok(s) => errors.push(format!("{addr}: node {} is not part of an initialized cluster", s.id)),
            Err(e) => errors.push(format!("{addr}: {}", e.message())),
        }
    }
    let Some(first) = first else {
        anyhow::bail!("no member answered: {}", errors.join("; "));
    };
    let mut members = Vec::new();
    // The leader is the member that says it leads in the highest term (a
    // deposed leader may not know yet).
    let mut leader: Option<(u64, u64)> = None;
    for m in &first.members {
        let status = if m.id == first.id {
            Ok(first.clone())
        } else {
            AdminClient::node_status_at(&m.addr, timeout, client.tls()).await
        };
        match status {
            Ok(s) => {
                if s.role == "leader" && leader.is_none_or(|(term, _)| s.term > term) {
                    leader = Some((s.term, s.id));
                }
                members.push(json!({
                    "id": m.id, "addr": m.addr, "reachable": true, "role": s.role, "term": s.term,
                    "region": if s.region.is_empty() { Value::Null } else { json!(s.region) },
                    "applied_index": s.applied_index, "state_digest": s.state_digest,
                    "leader_id": if s.has_leader { json!(s.leader_id) } else { Value::Null },
                }));
            }
            Err(e) => members.push(json!({
                "id": m.id, "addr": m.addr, "reachable": false, "role": Value::Null, "term": Value::Null,
                "region": Value::Null,
                "applied_index": Value::Null, "state_digest": Value::Null, "error": e.message(),
            })),
        }
    }
    let leader = leader.map(|(_, id)| id).or(first.has_leader.then_some(first.leader_id));
    if json_out {
        println!("{}", json!({ "leader": leader, "members": members }));
        return Ok(());
    }
    println!("leader: {}", leader.map(|l| l.to_string()).unwrap_or_else(|| "none".to_string()));
    let cols = [
        Col("ID", false),
        Col("ADDR", false),
        Col("REGION", false),
        Col("ROLE", false),
        Col("TERM", false),
        Col("APPLIED", true),
        Col("DIGEST", false),
    ];
    table::print(
        &cols,
        members.iter().map(|m| {
            let s = |k: &str| match &m[k] {
                Value::Null => "-".to_string(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let role = if m["reachable"] == json!(true) { s("role") } else { "unreachable".to_string() };
            let mut digest = s("state_digest");
            digest.truncate(16);
            vec![s("id"), s("addr"), s("region"), role, s("term"), s("applied_index"), digest]
        }),
    );
    Ok(())
}
