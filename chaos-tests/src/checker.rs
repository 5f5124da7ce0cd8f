//! The invariant checker: a pure function from what a chaos run recorded
//! (the mock's ground truth, what each client saw, the ledger's final
//! figures, every member's digest, the faults) to a verdict. It never talks
//! to a process, so it can be fed a fabricated history in a test.
//!
//! Charges are checked per key (every simulated user has one key and tags
//! its requests with it, and the mock logs the tag):
//! - lower bound: every response the upstream produced (status 200) costs
//!   at least its reported usage, so `spent ≥ Σ actual`; less is a **lost
//!   charge**;
//! - upper bound: a request the client saw complete, on an edge that was not
//!   killed around it, is charged exactly its actual cost; any other request
//!   (failed, cut, or in flight on a killed edge) at most its worst-case
//!   reservation; more than the sum is a **double charge**.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::mock::TruthRecord;

/// Nano-USD per token: input, output, cache write 5m, cache write 1h, cache read.
/// Written out here, independently of the edge's table, for the models the
/// load generator uses.
pub fn rates(model: &str) -> Option<[u64; 5]> {
    Some(match model {
        "claude-sonnet-4-5" => [3_000, 15_000, 3_750, 6_000, 300],
        // Claude Code's default model: $4 / $20, writes $5 / $8, reads $0.20 per MTok.
        "claude-opus-5-5" => [4_000, 20_000, 5_000, 8_000, 200],
        "claude-haiku-4-5" => [1_000, 5_000, 1_250, 2_000, 100],
        "gpt-4o" => [2_500, 10_000, 2_500, 2_500, 1_250],
        // Codex's default model: $2 in, $10 out, writes $2.50, reads $0.10 per MTok
        // (below 272K prompt tokens).
        "gpt-6.2-sol" => [2_000, 10_000, 2_500, 5_000, 100],
        _ => return None,
    })
}

/// The cost of a ground-truth response, from its reported usage.
pub fn truth_cost(r: &TruthRecord) -> u64 {
    let [i, o, w5, w1, cr] = rates(&r.model).unwrap_or([15_000, 75_000, 18_750, 30_000, 1_500]);
    let u = &r.usage;
    u.input_tokens * i
        + u.output_tokens * o
        + u.cache_write_5m_tokens * w5
        + u.cache_write_1h_tokens * w1
        + u.cache_read_tokens * cr
}

/// What one simulated client saw for one request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientRecord {
    pub key_id: String,
    pub team: String,
    /// Which edge (index) it was sent to.
    pub edge: usize,
    pub model: String,
    pub stream: bool,
    pub body_bytes: u64,
    pub max_tokens: u64,
    /// Milliseconds since the run started.
    pub start_ms: u64,
    pub end_ms: u64,
    /// HTTP status; 0 when no response head arrived.
    pub status: u16,
    /// `ok` (whole response read), `denied` (402) or `failed`.
    pub outcome: String,
    /// The provider's response id, when the client saw one.
    pub response_id: String,
    /// What the edge reserved for it (its `x-tollgate-reserved-nano-usd`).
    #[serde(default)]
    pub reserved_nano_usd: Option<u64>,
}

impl ClientRecord {
    /// The most a request could have reserved (strict mode's worst case:
    /// a token per body byte at the dearest input rate, plus `max_tokens`).
    pub fn worst_case(&self) -> u64 {
        let [i, o, w5, w1, cr] = rates(&self.model).unwrap_or([15_000, 75_000, 18_750, 30_000, 1_500]);
        self.body_bytes * i.max(w5).max(w1).max(cr) + self.max_tokens * o
    }

    /// What `estimate` mode reserved: as the edge reported it, else (an
    /// edge that does not say) characters / 3.5 at the input rate plus
    /// `max_tokens`.
    pub fn estimate(&self) -> u64 {
        if let Some(r) = self.reserved_nano_usd {
            return r;
        }
        let [i, o, ..] = rates(&self.model).unwrap_or([15_000, 75_000, 0, 0, 0]);
        (self.body_bytes * 2).div_ceil(7) * i + self.max_tokens * o
    }
}

/// A budget's final figures (its current period).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BudgetFigures {
    pub scope: String,
    pub hard: bool,
    pub limit: u64,
    pub spent: u64,
    pub held: u64,
    pub unsettled: u64,
    /// Room leased to edges.
    #[serde(default)]
    pub leased: u64,
}

/// One ledger member's final state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberState {
    pub id: u64,
    pub reachable: bool,
    pub applied_index: u64,
    pub digest: String,
}

/// One injected fault.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fault {
    pub kind: String,
    pub target: String,
    pub at_ms: u64,
    pub healed_ms: u64,
    /// For a killed edge: its index (requests in flight on it are disrupted).
    pub edge: Option<usize>,
    /// For a killed region: every edge killed with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<usize>,
}

/// Everything a run recorded.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub strict: bool,
    /// The edges admitted from budget leases.
    pub leases: bool,
    /// Each key's team (its hard budget's scope is `team:NAME`).
    pub key_teams: BTreeMap<String, String>,
    /// `fail_mode = open` with this allowance per edge (nano-USD).
    pub fail_open_allowance: Option<u64>,
    pub edges: usize,
    /// Each edge's region (`--topology regions`; empty on one LAN).
    pub edge_regions: Vec<String>,
    pub election_timeout_ms: u64,
    pub truth: Vec<TruthRecord>,
    pub clients: Vec<ClientRecord>,
    pub budgets: Vec<BudgetFigures>,
    /// Final (spent, held) per key id.
    pub key_spend: BTreeMap<String, (u64, u64)>,
    pub members: Vec<MemberState>,
    pub faults: Vec<Fault>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestCounts {
    pub ok: u64,
    pub denied: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verdict {
    pub requests: RequestCounts,
    /// Strict mode: Σ over hard budgets of max(0, spent + held − limit).
    pub overspend_nano_usd: u64,
    /// Estimate mode: the same sum, reported, and the bound it is held to.
    pub estimate_overshoot_nano_usd: u64,
    pub estimate_overshoot_bound_nano_usd: u64,
    /// Fail-open runs: the same sum, and its bound (each edge's allowance
    /// once per fault, plus the estimate bound in estimate mode).
    pub fail_open_overshoot_nano_usd: u64,
    pub fail_open_overshoot_bound_nano_usd: u64,
    /// Keys charged less than the upstream's responses cost.
    pub lost_charges: u64,
    pub lost_nano_usd: u64,
    /// Keys charged more than their requests could have cost.
    pub double_charges: u64,
    pub double_nano_usd: u64,
    /// Keys or budgets still holding after the run (every hold must end).
    pub holds_left: u64,
    /// Budgets still leasing room after every lease's ttl.
    pub leases_left: u64,
    pub digests_agree: bool,
    pub longest_unavailability_ms: u64,
    /// Per fault: the longest window, overlapping it, with admissions failing.
    pub unavailability_by_fault: Vec<(String, u64)>,
    /// Per region: the longest window with admissions failing on its edges.
    pub unavailability_by_region: Vec<(String, u64)>,
    pub violations: Vec<String>,
}

fn disrupted(c: &ClientRecord, faults: &[Fault]) -> bool {
    if c.outcome != "ok" {
        return true;
    }
    // A request in flight on an edge when it was killed may have lost its
    // settle between the response and the outbox write.
    faults.iter().any(|f| {
        (f.edge == Some(c.edge) || f.edges.contains(&c.edge)) && c.start_ms <= f.at_ms + 50 && c.end_ms + 50 >= f.at_ms
    })
}

/// For a per-key charge violation: the key's requests that ended within 2 s
/// before a kill of their edge, or were in flight at it (when each ended
/// relative to the kill, whether it counted as disrupted), to tell a lost
/// settle at the kill from a fault of the ledger.
fn near_kills(h: &History, key: &str) -> String {
    let mut out = String::new();
    for f in &h.faults {
        for c in h.clients.iter().filter(|c| c.key_id == key && (f.edge == Some(c.edge) || f.edges.contains(&c.edge))) {
            if c.start_ms <= f.at_ms && c.end_ms + 2_000 >= f.at_ms {
                out.push_str(&format!(
                    "; near {} at {} ms: {} on edge {} ended {:+} ms from it{}",
                    f.kind,
                    f.at_ms,
                    c.outcome,
                    c.edge,
                    c.end_ms as i64 - f.at_ms as i64,
                    if disrupted(c, &h.faults) { " (disrupted)" } else { "" }
                ));
            }
        }
    }
    out
}

/// Longest window of failed admissions: from the first failure after a
/// success (or the start) to the next success, over requests in start order.
fn longest_outage(clients: &[&ClientRecord], from: u64, to: u64) -> u64 {
    let mut rs: Vec<&&ClientRecord> = clients.iter().filter(|c| c.end_ms >= from && c.start_ms <= to).collect();
    rs.sort_by_key(|c| c.start_ms);
    let (mut longest, mut failing_since) = (0u64, None::<u64>);
    for c in rs {
        let admitted = c.outcome != "failed" || (c.status >= 200 && c.status != 503 && c.status < 500);
        match (admitted, failing_since) {
            (false, None) => failing_since = Some(c.start_ms),
            (true, Some(s)) => {
                longest = longest.max(c.start_ms.saturating_sub(s));
                failing_since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = failing_since {
        longest = longest.max(to.saturating_sub(s));
    }
    longest
}

/// Checks every invariant over `h`.
pub fn check(h: &History) -> Verdict {
    let mut v = Verdict::default();
    for c in &h.clients {
        match c.outcome.as_str() {
            "ok" => v.requests.ok += 1,
            "denied" => v.requests.denied += 1,
            _ => v.requests.failed += 1,
        }
    }

    check_caps(h, &mut v);
    check_charges(h, &mut v);
    check_agreement(h, &mut v);
    check_availability(h, &mut v);
    v
}

/// Hard caps: overspend (strict), the estimate-mode overshoot and the
/// fail-open overshoot, each against its bound.
fn check_caps(h: &History, v: &mut Verdict) {
    for b in h.budgets.iter().filter(|b| b.hard) {
        let over = (b.spent + b.held + b.leased).saturating_sub(b.limit);
        if h.fail_open_allowance.is_some() {
            v.fail_open_overshoot_nano_usd += over;
        } else if h.strict {
            v.overspend_nano_usd += over;
            if over > 0 {
                v.violations
                    .push(format!("overspend: {} spent {} + held {} > limit {}", b.scope, b.spent, b.held, b.limit));
            }
        } else {
            v.estimate_overshoot_nano_usd += over;
        }
    }
    if !h.strict {
        // The design's bound: the estimation error of admitted requests
        // (what they cost beyond what estimate mode reserved for them).
        let by_id: HashMap<&str, &TruthRecord> = h.truth.iter().map(|t| (t.id.as_str(), t)).collect();
        v.estimate_overshoot_bound_nano_usd = h
            .clients
            .iter()
            .filter_map(|c| by_id.get(c.response_id.as_str()).map(|t| truth_cost(t).saturating_sub(c.estimate())))
            .sum();
        if h.fail_open_allowance.is_none() && v.estimate_overshoot_nano_usd > v.estimate_overshoot_bound_nano_usd {
            v.violations.push(format!(
                "estimate-mode overshoot {} beyond its bound {}",
                v.estimate_overshoot_nano_usd, v.estimate_overshoot_bound_nano_usd
            ));
        }
    }

    if let Some(allowance) = h.fail_open_allowance {
        // While an edge cannot reach the ledger it admits at most its
        // allowance (acknowledged charges refill it only once the ledger
        // answers again): at most once per fault, per edge.
        let outages = h.faults.len().max(1) as u64;
        let estimate_part = if h.strict { 0 } else { v.estimate_overshoot_bound_nano_usd };
        v.fail_open_overshoot_bound_nano_usd =
            allowance.saturating_mul(h.edges as u64).saturating_mul(outages).saturating_add(estimate_part);
        if v.fail_open_overshoot_nano_usd > v.fail_open_overshoot_bound_nano_usd {
            v.violations.push(format!(
                "fail-open overshoot {} beyond its bound {}",
                v.fail_open_overshoot_nano_usd, v.fail_open_overshoot_bound_nano_usd
            ));
        }
    }
}

/// Each key was charged at least what the upstream billed and at most
/// what its requests could cost, and holds nothing after every ttl.
fn check_charges(h: &History, v: &mut Verdict) {
    let truth_by_id: HashMap<&str, &TruthRecord> = h.truth.iter().map(|t| (t.id.as_str(), t)).collect();
    // What each key must have been charged at least: what the upstream
    // billed. In estimate mode a request whose settle was lost (its edge
    // killed) is charged its reservation at expiry, which may be less than
    // it cost: it counts what the client was told was reserved, or, if no
    // response head reached it, the least any reservation for it was (its
    // input at the input rate: the edge estimates at least 2 tokens per 7
    // characters, the mock bills 1 per 4 bytes).
    let client_by_id: HashMap<&str, &ClientRecord> =
        h.clients.iter().filter(|c| !c.response_id.is_empty()).map(|c| (c.response_id.as_str(), c)).collect();
    // Under leases a request whose edge died before it settled has no hold
    // to expire on its key: its reservation is charged, as its lease's
    // unsettled room, to the budgets only. So its key owes nothing for it,
    // and its team's budget owes all of it.
    let mut lower: BTreeMap<&str, u64> = BTreeMap::new();
    let mut team_lower: BTreeMap<&str, u64> = BTreeMap::new();
    for t in h.truth.iter().filter(|t| t.status == 200) {
        let cost = truth_cost(t);
        let least = rates(&t.model).map_or(0, |[i, ..]| t.usage.input_tokens * i).min(cost);
        let client = client_by_id.get(t.id.as_str());
        let settled_by_its_edge = client.is_some_and(|c| !disrupted(c, &h.faults));
        let owed = match client {
            _ if h.strict => cost,
            Some(c) if !disrupted(c, &h.faults) => cost,
            Some(c) => c.reserved_nano_usd.map_or(least, |r| r.min(cost)),
            None => least,
        };
        let key_owes = if h.leases && !settled_by_its_edge { 0 } else { owed };
        *lower.entry(t.tag.as_str()).or_default() += key_owes;
        if let Some(team) = h.key_teams.get(&t.tag) {
            *team_lower.entry(team.as_str()).or_default() += owed;
        }
    }
    for b in h.budgets.iter().filter(|b| b.hard) {
        let Some(team) = b.scope.strip_prefix("team:") else { continue };
        let owed = team_lower.get(team).copied().unwrap_or(0);
        if b.spent < owed {
            v.lost_charges += 1;
            v.lost_nano_usd += owed - b.spent;
            v.violations
                .push(format!("lost charge: budget {} spent {} < {owed} the upstream billed", b.scope, b.spent));
        }
    }
    let mut upper: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &h.clients {
        let exact = (!disrupted(c, &h.faults)).then(|| truth_by_id.get(c.response_id.as_str())).flatten();
        let most = match exact {
            Some(t) => truth_cost(t),
            None if c.outcome == "denied" => 0,
            None => c.worst_case(),
        };
        *upper.entry(c.key_id.as_str()).or_default() += most;
    }
    let keys: std::collections::BTreeSet<&str> =
        lower.keys().chain(upper.keys()).copied().chain(h.key_spend.keys().map(String::as_str)).collect();
    for k in keys {
        let (spent, held) = h.key_spend.get(k).copied().unwrap_or((0, 0));
        let (lo, hi) = (lower.get(k).copied().unwrap_or(0), upper.get(k).copied().unwrap_or(0));
        if spent < lo {
            v.lost_charges += 1;
            v.lost_nano_usd += lo - spent;
            v.violations
                .push(format!("lost charge: key {k} charged {spent} < {lo} the upstream billed{}", near_kills(h, k)));
        }
        if spent > hi {
            v.double_charges += 1;
            v.double_nano_usd += spent - hi;
            v.violations.push(format!(
                "double charge: key {k} charged {spent} > {hi}, the most its requests cost{}",
                near_kills(h, k)
            ));
        }
        if held > 0 {
            v.holds_left += 1;
            v.violations.push(format!("hold left: key {k} still holds {held} after every ttl"));
        }
    }
    for b in h.budgets.iter().filter(|b| b.held > 0) {
        v.holds_left += 1;
        v.violations.push(format!("hold left: budget {} still holds {}", b.scope, b.held));
    }
    for b in h.budgets.iter().filter(|b| b.leased > 0) {
        v.leases_left += 1;
        v.violations.push(format!("lease left: budget {} still leases {} after every ttl", b.scope, b.leased));
    }
}

/// Every member answers, at the same index with the same digest.
fn check_agreement(h: &History, v: &mut Verdict) {
    let reachable: Vec<&MemberState> = h.members.iter().filter(|m| m.reachable).collect();
    v.digests_agree = reachable.len() == h.members.len()
        && !reachable.is_empty()
        && reachable.windows(2).all(|w| w[0].applied_index == w[1].applied_index && w[0].digest == w[1].digest);
    if !v.digests_agree {
        let seen: Vec<String> = h
            .members
            .iter()
            .map(|m| format!("{}@{}:{}", m.id, m.applied_index, &m.digest[..m.digest.len().min(12)]))
            .collect();
        v.violations.push(format!("members disagree (or some did not answer): {}", seen.join(" ")));
    }
}

/// The longest run of failed admissions, overall and around each fault.
fn check_availability(h: &History, v: &mut Verdict) {
    let all: Vec<&ClientRecord> = h.clients.iter().collect();
    let end = h.clients.iter().map(|c| c.end_ms).max().unwrap_or(0);
    v.longest_unavailability_ms = longest_outage(&all, 0, end);
    for f in &h.faults {
        let window = longest_outage(&all, f.at_ms, f.healed_ms.max(f.at_ms) + 10 * h.election_timeout_ms.max(100));
        v.unavailability_by_fault.push((format!("{} {}", f.kind, f.target), window));
    }
    let regions: std::collections::BTreeSet<&String> = h.edge_regions.iter().collect();
    for r in regions {
        let theirs: Vec<&ClientRecord> = h.clients.iter().filter(|c| h.edge_regions.get(c.edge) == Some(r)).collect();
        v.unavailability_by_region.push((r.clone(), longest_outage(&theirs, 0, end)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::TruthUsage;

    fn truth(id: &str, tag: &str, input: u64, output: u64) -> TruthRecord {
        TruthRecord {
            seq: 0,
            id: id.into(),
            api: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            stream: false,
            status: 200,
            completed: true,
            usage: TruthUsage { input_tokens: input, output_tokens: output, ..Default::default() },
            credential: "sk".into(),
            tag: tag.into(),
        }
    }

    fn client(id: &str, key: &str, outcome: &str, t: u64) -> ClientRecord {
        ClientRecord {
            key_id: key.into(),
            team: "t".into(),
            edge: 0,
            model: "claude-sonnet-4-5".into(),
            stream: false,
            body_bytes: 100,
            max_tokens: 50,
            start_ms: t,
            end_ms: t + 10,
            status: if outcome == "ok" { 200 } else { 503 },
            outcome: outcome.into(),
            response_id: id.into(),
            reserved_nano_usd: None,
        }
    }

    fn member(id: u64, index: u64, digest: &str) -> MemberState {
        MemberState { id, reachable: true, applied_index: index, digest: digest.into() }
    }

    fn clean() -> History {
        let truth = vec![truth("m1", "k1", 10, 20), truth("m2", "k1", 10, 20), truth("m3", "k2", 5, 5)];
        let cost = |t: &TruthRecord| truth_cost(t);
        let (k1, k2) = (cost(&truth[0]) + cost(&truth[1]), cost(&truth[2]));
        History {
            strict: true,
            leases: false,
            key_teams: BTreeMap::from([("k1".to_string(), "t".to_string()), ("k2".to_string(), "t".to_string())]),
            fail_open_allowance: None,
            edges: 2,
            edge_regions: vec![],
            election_timeout_ms: 600,
            clients: vec![client("m1", "k1", "ok", 0), client("m2", "k1", "ok", 100), client("m3", "k2", "ok", 200)],
            truth,
            budgets: vec![BudgetFigures {
                scope: "team:t".into(),
                hard: true,
                limit: k1 + k2,
                spent: k1 + k2,
                held: 0,
                unsettled: 0,
                leased: 0,
            }],
            key_spend: BTreeMap::from([("k1".to_string(), (k1, 0)), ("k2".to_string(), (k2, 0))]),
            members: vec![member(1, 50, "aa"), member(2, 50, "aa"), member(3, 50, "aa")],
            faults: vec![],
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let v = check(&clean());
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(v.requests, RequestCounts { ok: 3, denied: 0, failed: 0 });
        assert!(v.digests_agree);
        assert_eq!((v.overspend_nano_usd, v.lost_charges, v.double_charges, v.holds_left), (0, 0, 0, 0));
    }

    #[test]
    fn it_catches_an_overspend_a_lost_charge_a_double_charge_and_a_digest_mismatch() {
        let mut h = clean();
        h.budgets[0].spent += 7;
        h.key_spend.get_mut("k1").unwrap().0 -= 1; // one nano-dollar lost
        h.key_spend.get_mut("k2").unwrap().0 *= 2; // charged twice
        h.members[2].digest = "bb".into();
        let v = check(&h);
        assert_eq!(v.overspend_nano_usd, 7);
        assert_eq!((v.lost_charges, v.lost_nano_usd), (1, 1));
        assert_eq!(v.double_charges, 1);
        assert!(!v.digests_agree);
        assert_eq!(v.violations.len(), 4, "{:?}", v.violations);
        for words in ["overspend: team:t", "lost charge: key k1", "double charge: key k2", "members disagree"] {
            assert!(v.violations.iter().any(|x| x.contains(words)), "{words}: {:?}", v.violations);
        }
    }

    #[test]
    fn disrupted_requests_may_cost_up_to_their_reservation_and_holds_must_end() {
        let mut h = clean();
        // A request cut on a killed edge: the upstream billed 4 output tokens,
        // the hold expired and was charged in full (its reservation).
        h.truth.push(TruthRecord { completed: false, ..truth("m4", "k2", 5, 4) });
        let mut c = client("m4", "k2", "failed", 300);
        c.status = 200;
        let reservation = c.worst_case();
        h.clients.push(c);
        h.key_spend.get_mut("k2").unwrap().0 += reservation;
        h.budgets[0].limit += reservation;
        h.budgets[0].spent += reservation;
        let v = check(&h);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        // One nano-dollar more than the reservation is a double charge; a hold left is caught.
        h.key_spend.get_mut("k2").unwrap().0 += 1;
        h.key_spend.get_mut("k1").unwrap().1 = 5;
        let v = check(&h);
        assert_eq!((v.double_charges, v.holds_left), (1, 1), "{:?}", v.violations);
    }

    #[test]
    fn under_leases_a_request_cut_by_its_edge_is_owed_by_its_team_budget_not_its_key() {
        let mut h = clean();
        h.leases = true;
        h.truth.push(TruthRecord { completed: false, ..truth("m4", "k2", 5, 4) });
        let mut c = client("m4", "k2", "failed", 300);
        c.status = 200;
        let reservation = c.worst_case();
        h.clients.push(c);
        // The lease's unused room expired as unsettled spend on the budget.
        h.budgets[0].limit += reservation;
        h.budgets[0].spent += reservation;
        let v = check(&h);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        // Without it the team budget has lost the charge; a lease left is caught.
        h.budgets[0].spent -= reservation;
        h.budgets[0].leased = 7;
        let v = check(&h);
        assert_eq!((v.lost_charges, v.leases_left), (1, 1), "{:?}", v.violations);
        // Without leases the key itself owes it (its hold expires on the key).
        h.leases = false;
        h.budgets[0].spent += reservation;
        h.budgets[0].leased = 0;
        assert_eq!(check(&h).lost_charges, 1);
    }

    #[test]
    fn in_estimate_mode_a_request_whose_settle_was_lost_owes_only_what_was_reserved() {
        let mut h = clean();
        // Cut on a killed edge after the upstream billed 400 output tokens
        // (6,000,000 + input); the edge had reserved 1,000,000 for it and
        // the expiry charged exactly that.
        h.truth.push(TruthRecord { completed: false, ..truth("m4", "k2", 5, 400) });
        let mut c = client("m4", "k2", "failed", 300);
        c.status = 200;
        c.reserved_nano_usd = Some(1_000_000);
        h.clients.push(c);
        h.faults = vec![Fault {
            kind: "edge-kill".into(),
            target: "e0".into(),
            at_ms: 300,
            edge: Some(0),
            ..Default::default()
        }];
        h.key_spend.get_mut("k2").unwrap().0 += 1_000_000;
        h.budgets[0].limit += 1_000_000;
        h.budgets[0].spent += 1_000_000;
        h.strict = false;
        let v = check(&h);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        // A nano-dollar less than the reservation is lost.
        h.key_spend.get_mut("k2").unwrap().0 -= 1;
        assert_eq!(check(&h).lost_charges, 1);
        // In strict mode the reservation covered the cost: charging less than
        // the upstream billed is lost, whatever happened: on the key and on
        // its team's budget.
        h.key_spend.get_mut("k2").unwrap().0 += 1;
        h.strict = true;
        assert_eq!(check(&h).lost_charges, 2);
    }

    #[test]
    fn a_fail_open_run_may_overshoot_by_each_edges_allowance_per_fault_and_no_more() {
        let mut h = clean();
        h.fail_open_allowance = Some(100);
        h.faults = vec![Fault { kind: "edge-partition".into(), target: "e0".into(), ..Default::default() }; 2];
        // Two edges, two faults: up to 400 over the cap passes, reported.
        h.budgets[0].limit -= 400;
        let v = check(&h);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!((v.overspend_nano_usd, v.fail_open_overshoot_nano_usd), (0, 400));
        assert_eq!(v.fail_open_overshoot_bound_nano_usd, 400);
        // One nano-dollar more is a violation.
        h.budgets[0].limit -= 1;
        let v = check(&h);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("fail-open overshoot 401 beyond its bound 400"), "{:?}", v.violations);
        // Without fail-open the same history is an overspend.
        h.fail_open_allowance = None;
        assert_eq!(check(&h).overspend_nano_usd, 401);
    }

    #[test]
    fn unavailability_is_the_longest_run_of_failed_admissions() {
        let mut h = clean();
        h.clients = vec![
            client("a", "k1", "ok", 0),
            client("", "k1", "failed", 1000),
            client("", "k1", "failed", 1500),
            client("b", "k1", "ok", 3100),
            client("", "k1", "failed", 4000),
            client("c", "k1", "ok", 4200),
        ];
        h.faults = vec![Fault {
            kind: "leader-kill".into(),
            target: "n1".into(),
            at_ms: 900,
            healed_ms: 900,
            ..Default::default()
        }];
        let v = check(&h);
        assert_eq!(v.longest_unavailability_ms, 2100);
        assert_eq!(v.unavailability_by_fault, vec![("leader-kill n1".to_string(), 2100)]);
        assert!(v.unavailability_by_region.is_empty(), "one LAN has no regions");
    }

    #[test]
    fn each_region_is_measured_on_its_own_edges() {
        let mut h = clean();
        h.edge_regions = vec!["r1".into(), "r2".into()];
        let on = |edge, id: &str, outcome, t| ClientRecord { edge, ..client(id, "k1", outcome, t) };
        h.clients = vec![
            on(0, "a", "ok", 0),
            on(1, "b", "ok", 100),
            on(0, "", "failed", 1000),
            on(1, "c", "ok", 1500),
            on(0, "", "failed", 2000),
            on(1, "", "failed", 2500),
            on(1, "d", "ok", 2700),
            on(0, "e", "ok", 4000),
        ];
        let v = check(&h);
        assert_eq!(v.unavailability_by_region, vec![("r1".to_string(), 3000), ("r2".to_string(), 200)]);
    }

    #[test]
    fn requests_in_flight_on_a_killed_regions_edges_are_disrupted() {
        let c = ClientRecord { edge: 2, ..client("a", "k1", "ok", 1000) };
        let killed = |edge, edges| Fault { at_ms: 1005, edge, edges, ..Default::default() };
        assert!(disrupted(&c, &[killed(Some(0), vec![0, 2])]));
        assert!(!disrupted(&c, &[killed(Some(0), vec![0, 1])]));
        assert!(!disrupted(&c, &[killed(None, vec![])]));
    }
}
