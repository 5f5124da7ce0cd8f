//! Usage by what Claude Code says a request was for: its session, agent
//! (with the agent that spawned it), request class and prompt. The ids come
//! from clients, so each kind keeps a bounded number of entries; past the
//! bound the one updated longest ago is forgotten (deterministically: by
//! the entry's time, then its id).

use imbl::{OrdMap, OrdSet};

use super::*;

/// What an attribution id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AttribKind {
    Session,
    Agent,
    RequestClass,
    Prompt,
}

impl AttribKind {
    pub const ALL: [AttribKind; 4] =
        [AttribKind::Session, AttribKind::Agent, AttribKind::RequestClass, AttribKind::Prompt];

    /// The name `tollgate admin usage --by` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            AttribKind::Session => "session",
            AttribKind::Agent => "agent",
            AttribKind::RequestClass => "request-class",
            AttribKind::Prompt => "prompt",
        }
    }

    pub fn parse(s: &str) -> Option<AttribKind> {
        AttribKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The most entries of this kind kept.
    pub fn capacity(self) -> usize {
        match self {
            AttribKind::RequestClass => 256,
            _ => 20_000,
        }
    }
}

/// Usage of one session, agent, request class or prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttribRec {
    /// The agent that spawned this one (agents only; the last reported).
    pub parent: Option<String>,
    /// The user of the last request counted.
    pub user: String,
    pub settled: NanoUsd,
    /// What requests cost beyond what was reserved for them.
    pub excess: NanoUsd,
    pub requests: u64,
    pub usage: Usage,
    pub first_ms: u64,
    pub last_ms: u64,
}

/// The attribution entries of every kind, bounded per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttribTable {
    /// By kind, then id. (Nested, not keyed by a tuple: the digest is JSON,
    /// whose keys are strings.)
    /// Persistent maps, like the holds: copying the state for a snapshot
    /// or digest stays O(1).
    pub entries: OrdMap<AttribKind, OrdMap<String, AttribRec>>,
    /// Derived: entries by (kind, last update, id), for eviction.
    #[serde(skip)]
    age: OrdSet<(AttribKind, u64, String)>,
}

impl AttribTable {
    pub(super) fn rebuild(&mut self) {
        self.age = self
            .entries
            .iter()
            .flat_map(|(k, ids)| ids.iter().map(move |(id, r)| (*k, r.last_ms, id.clone())))
            .collect();
    }

    /// The entries of one kind.
    pub fn of(&self, kind: AttribKind) -> impl Iterator<Item = (&String, &AttribRec)> {
        self.entries.get(&kind).into_iter().flatten()
    }

    /// Counts one settled request against every id `a` names.
    pub(super) fn record(&mut self, a: &Attribution, info: &HoldInfo, cost: NanoUsd, usage: &Usage, now: u64) {
        let excess = cost.saturating_sub(info.amount);
        let named = [
            (AttribKind::Session, &a.session),
            (AttribKind::Agent, &a.agent),
            (AttribKind::RequestClass, &a.request_class),
            (AttribKind::Prompt, &a.prompt),
        ];
        for (kind, id) in named {
            let Some(id) = id else { continue };
            let ids = self.entries.entry(kind).or_default();
            match ids.get(id) {
                Some(r) => {
                    self.age.remove(&(kind, r.last_ms, id.clone()));
                }
                None => {
                    // `len` of a persistent map is O(1).
                    if ids.len() >= kind.capacity() {
                        if let Some(oldest) = self.age.range((kind, 0, String::new())..).next().cloned() {
                            self.age.remove(&oldest);
                            ids.remove(&oldest.2);
                        }
                    }
                }
            }
            let r = ids.entry(id.clone()).or_insert_with(|| AttribRec { first_ms: now, ..AttribRec::default() });
            if kind == AttribKind::Agent && a.parent_agent.is_some() {
                r.parent = a.parent_agent.clone();
            }
            r.user = info.user.clone();
            r.settled = r.settled.saturating_add(cost);
            r.excess = r.excess.saturating_add(excess);
            r.requests = r.requests.saturating_add(1);
            add_usage(&mut r.usage, usage);
            r.last_ms = now;
            self.age.insert((kind, now, id.clone()));
        }
    }
}

/// Adds `u` into `into`, saturating.
pub(super) fn add_usage(into: &mut Usage, u: &Usage) {
    into.input_tokens = into.input_tokens.saturating_add(u.input_tokens);
    into.output_tokens = into.output_tokens.saturating_add(u.output_tokens);
    into.cache_write_5m_tokens = into.cache_write_5m_tokens.saturating_add(u.cache_write_5m_tokens);
    into.cache_write_1h_tokens = into.cache_write_1h_tokens.saturating_add(u.cache_write_1h_tokens);
    into.cache_read_tokens = into.cache_read_tokens.saturating_add(u.cache_read_tokens);
    into.web_search_requests = into.web_search_requests.saturating_add(u.web_search_requests);
}
