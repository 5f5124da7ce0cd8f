//! Config changes: teams, users, keys, budgets, policies, limits and the
//! admin token, each validated again here so a bad one changes nothing.

use super::*;

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_email(s: &str) -> bool {
    s.len() <= 254
        && s.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !s.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == ',')
}

fn valid_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn check_price(p: &ModelPrice) -> Result<(), String> {
    if !valid_model(&p.model) {
        return Err(format!("model {:?} is not a valid model name", p.model));
    }
    if let Some(v) = p.provider.as_deref().filter(|v| !matches!(*v, "anthropic" | "openai")) {
        return Err(format!("provider {v:?} is not anthropic or openai"));
    }
    let rates = [Some(p.input), Some(p.output), p.cache_write_5m, p.cache_write_1h, p.cache_read];
    if rates.iter().flatten().any(|r| *r > MAX_PRICE_PICO_PER_TOKEN) {
        return Err(format!("a price of {} is above $100,000 per million tokens", p.model));
    }
    if p.output == 0 && p.input == 0 {
        return Err(format!("model {} cannot be free (input and output both zero)", p.model));
    }
    Ok(())
}

impl LedgerState {
    pub(super) fn admin(&mut self, op: &AdminOp, stamp: &Stamp) -> Outcome {
        use ErrorCode::*;
        match op {
            AdminOp::SetAdminToken { sha256 } => {
                if !valid_sha256_hex(sha256) {
                    return Outcome::reject(InvalidArgument, "admin token hash must be 64 lowercase hex digits");
                }
                if self.admin_token_sha256.is_some() {
                    return Outcome::reject(AlreadyExists, "the admin token is already set");
                }
                self.admin_token_sha256 = Some(sha256.clone());
            }
            AdminOp::CreateTeam { name } => {
                if !valid_name(name) {
                    return Outcome::reject(
                        InvalidArgument,
                        format!("team name {name:?} must be 1-64 characters of letters, digits, '-', '_', '.'"),
                    );
                }
                if self.teams.contains_key(name) {
                    return Outcome::reject(AlreadyExists, format!("team {name} already exists"));
                }
                self.teams.insert(name.clone(), TeamRec { created: stamp.clone() });
            }
            AdminOp::CreateUser { email, team } => {
                if !valid_email(email) {
                    return Outcome::reject(InvalidArgument, format!("{email:?} is not a valid email address"));
                }
                if !self.teams.contains_key(team) {
                    return Outcome::reject(NotFound, format!("unknown team {team}"));
                }
                if self.users.contains_key(email) {
                    return Outcome::reject(AlreadyExists, format!("user {email} already exists"));
                }
                self.users.insert(email.clone(), UserRec { team: team.clone(), created: stamp.clone() });
            }
            AdminOp::CreateKey { id, user, name, secret_sha256 } => {
                return self.create_key(id, user, name, secret_sha256, stamp)
            }
            AdminOp::RevokeKey { id } => match self.keys.get_mut(id) {
                None => return Outcome::reject(NotFound, format!("unknown key {id}")),
                Some(k) => k.revoked = true,
            },
            AdminOp::SetBudget { scope, model, limit, period, mode } => {
                return self.set_budget(scope, model, limit, period, mode, stamp)
            }
            AdminOp::SetPolicy { scope, allowed_models } => {
                if let Err(r) = self.check_scope(scope) {
                    return r;
                }
                if let Some(m) = allowed_models.iter().find(|m| !valid_model(m)) {
                    return Outcome::reject(InvalidArgument, format!("model {m:?} is not a valid model name"));
                }
                if allowed_models.is_empty() {
                    self.policies.remove(&scope.to_string());
                } else {
                    self.policies.insert(scope.to_string(), allowed_models.clone());
                }
            }
            AdminOp::SetLimits { max_request } => {
                if *max_request == NanoUsd::ZERO {
                    return Outcome::reject(InvalidArgument, "the per-request maximum must be greater than zero");
                }
                self.limits.max_request = *max_request;
            }
            AdminOp::SetPrices { set, remove } => return self.set_prices(set, remove),
            AdminOp::SetDiscount { basis_points } => {
                if *basis_points > MAX_DISCOUNT_BP {
                    return Outcome::reject(
                        InvalidArgument,
                        format!("the discount must be between 0% and {}%", MAX_DISCOUNT_BP / 100),
                    );
                }
                self.prices.discount_bp = *basis_points;
            }
        }
        Outcome::Done
    }

    fn create_key(&mut self, id: &str, user: &str, name: &str, secret_sha256: &str, stamp: &Stamp) -> Outcome {
        use ErrorCode::*;
        if !valid_name(id) {
            return Outcome::reject(InvalidArgument, format!("key id {id:?} is not valid"));
        }
        if name.len() > 64 || name.chars().any(char::is_control) {
            return Outcome::reject(InvalidArgument, "key name must be at most 64 printable characters");
        }
        if !valid_sha256_hex(secret_sha256) {
            return Outcome::reject(InvalidArgument, "key hash must be 64 lowercase hex digits");
        }
        if !self.users.contains_key(user) {
            return Outcome::reject(NotFound, format!("unknown user {user}"));
        }
        if self.keys.contains_key(id) {
            return Outcome::reject(AlreadyExists, format!("key {id} already exists"));
        }
        if self.keys.values().any(|k| k.secret_sha256 == secret_sha256) {
            return Outcome::reject(AlreadyExists, "a key with that secret already exists");
        }
        self.keys.insert(
            id.to_string(),
            KeyRec {
                user: user.to_string(),
                name: name.to_string(),
                secret_sha256: secret_sha256.to_string(),
                revoked: false,
                created: stamp.clone(),
            },
        );
        Outcome::Done
    }

    /// Sets (or replaces) the budget of `scope` and `model`.
    fn set_budget(
        &mut self,
        scope: &Scope,
        model: &Option<String>,
        limit: &NanoUsd,
        period: &Period,
        mode: &Mode,
        stamp: &Stamp,
    ) -> Outcome {
        use ErrorCode::*;
        if let Err(r) = self.check_scope(scope) {
            return r;
        }
        if let Some(m) = model {
            if !valid_model(m) {
                return Outcome::reject(InvalidArgument, format!("model {m:?} is not a valid model name"));
            }
        }
        let now = self.clock_ms;
        let existing = self.budgets.iter().find(|(_, b)| &b.scope == scope && &b.model == model).map(|(id, _)| *id);
        let id = existing.unwrap_or_else(|| {
            let id = BudgetId(self.next_budget_id);
            self.next_budget_id += 1;
            id
        });
        let leased = self.leases.leased(id);
        let b = self.budgets.entry(id).or_insert_with(|| BudgetRec {
            scope: scope.clone(),
            model: model.clone(),
            limit: *limit,
            period: *period,
            mode: *mode,
            period_start_ms: period.start_ms(now),
            epoch: 0,
            settled: NanoUsd::ZERO,
            unsettled: NanoUsd::ZERO,
            held: NanoUsd::ZERO,
            excess: NanoUsd::ZERO,
            requests: 0,
            updated: stamp.clone(),
        });
        b.roll(now, leased);
        if b.period != *period {
            // The counters carry over as they are: the ledger does not
            // know how past spend splits into the new period's windows
            // (to a shorter period it over-counts until the next reset;
            // to a longer one it starts from what the old period had).
            b.period = *period;
            b.period_start_ms = period.start_ms(now);
            b.epoch += 1;
        }
        b.limit = *limit;
        b.mode = *mode;
        b.updated = stamp.clone();
        // A limit lowered below what is already used is recorded as
        // excess, not hidden: nothing new is admitted until it is paid off.
        let used = b.spent().saturating_add(b.held).saturating_add(leased);
        if used > b.limit.saturating_add(b.excess) {
            b.excess = used.saturating_sub(b.limit);
        }
        Outcome::Done
    }

    /// Sets and removes price overrides, all or none.
    fn set_prices(&mut self, set: &[ModelPrice], remove: &[String]) -> Outcome {
        use ErrorCode::*;
        if set.len() + remove.len() > MAX_PRICE_OVERRIDES {
            return Outcome::reject(
                InvalidArgument,
                format!("one change may set or remove at most {MAX_PRICE_OVERRIDES} prices"),
            );
        }
        for p in set {
            if let Err(m) = check_price(p) {
                return Outcome::reject(InvalidArgument, m);
            }
        }
        if let Some(m) = remove.iter().find(|m| !self.prices.overrides.contains_key(*m)) {
            return Outcome::reject(NotFound, format!("model {m} has no price override to remove"));
        }
        let mut next = self.prices.overrides.clone();
        for m in remove {
            next.remove(m);
        }
        for p in set {
            next.insert(p.model.clone(), p.clone());
        }
        if next.len() > MAX_PRICE_OVERRIDES {
            return Outcome::reject(
                FailedPrecondition,
                format!("the ledger keeps at most {MAX_PRICE_OVERRIDES} price overrides; remove some first"),
            );
        }
        self.prices.overrides = next;
        Outcome::Done
    }

    fn check_scope(&self, scope: &Scope) -> Result<(), Outcome> {
        let missing = match scope {
            Scope::Org => false,
            Scope::Team(t) => !self.teams.contains_key(t),
            Scope::User(u) => !self.users.contains_key(u),
            Scope::Key(k) => !self.keys.contains_key(k),
        };
        if missing {
            return Err(Outcome::reject(ErrorCode::NotFound, format!("unknown scope {scope}")));
        }
        Ok(())
    }
}
