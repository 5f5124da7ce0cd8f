//! Release tombstones: ids released before (or instead of) their reserve,
//! remembered so a reserve that commits late cannot resurrect them, and
//! bounded per caller so no one caller can grow the state without limit.

use super::*;

impl LedgerState {
    /// Remembers `hold` as released by `caller`, for the longest ttl. Each
    /// caller keeps a bounded number: past it, its oldest goes first (at
    /// worst a very late reserve of that id then holds, and expires
    /// charged: over-counted, never under-counted).
    pub(super) fn leave_tombstone(&mut self, hold: HoldId, caller: &str) {
        let max = self.limits.max_tombstones_per_caller.max(1);
        while self.tombstones.get(caller).is_some_and(|t| t.len() as u64 >= max) {
            let oldest = self.tombstones.get(caller).and_then(|t| t.get_min().copied());
            let Some((at, id)) = oldest else { break };
            self.forgets.remove(&(at, id));
            self.holds.remove(&id);
            self.untrack_tombstone(at, id);
        }
        self.holds.insert(hold, HoldRec { info: None, state: HoldState::Released, forget_at_ms: 0 });
        self.finish(hold, HoldState::Released, MAX_TTL_MS);
        let at = self.clock_ms.saturating_add(MAX_TTL_MS);
        self.tombstones.entry(caller.to_string()).or_default().insert((at, hold));
    }

    /// Drops a forgotten tombstone from its caller's set.
    pub(super) fn untrack_tombstone(&mut self, at: u64, id: HoldId) {
        let mut emptied = None;
        for (caller, set) in self.tombstones.iter_mut() {
            if set.remove(&(at, id)).is_some() {
                if set.is_empty() {
                    emptied = Some(caller.clone());
                }
                break;
            }
        }
        if let Some(caller) = emptied {
            self.tombstones.remove(&caller);
        }
    }

    /// Files release tombstones that no caller's set holds under the
    /// unnamed caller "" (what a state from before callers were tracked
    /// has; a replay of its `Release` commands files them the same way).
    pub fn adopt_unnamed_tombstones(&mut self) {
        let tracked: usize = self.tombstones.values().map(|t| t.len()).sum();
        let released: Vec<(u64, HoldId)> =
            self.holds.iter().filter(|(_, h)| h.info.is_none()).map(|(id, h)| (h.forget_at_ms, *id)).collect();
        if tracked == released.len() {
            return;
        }
        let unnamed = self.tombstones.entry(String::new()).or_default();
        for t in released {
            unnamed.insert(t);
        }
    }
}
