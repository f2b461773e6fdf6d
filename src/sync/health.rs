//! The agent's readiness, shared by the parts that know (the dispatcher pauses, the store fails,
//! shutdown drains) and the part that tells (`/readyz`).
//!
//! Ready means "events given to the agent now will be delivered without someone acting": not
//! draining, the store writable, and no pause on a systemic verdict. A pause for a rate limit or a
//! transient outage is not unready: it ends by itself.

use std::sync::{Arc, Mutex};

/// Why the agent is not ready. The text is for `/readyz`'s body and logs: no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unready {
    /// Shutdown has begun: intake is closed.
    Draining,
    /// The state store refused a write; the text says how.
    StoreNotWritable(String),
    /// Delivery is paused on a systemic verdict (credentials, permission, institution, endpoint).
    Paused(String),
    /// Another `kfr sync` holds the register's delivery lease: this one takes events into the
    /// shared outbox and stands by to take over; the text names the holder.
    Standby(String),
}

impl std::fmt::Display for Unready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unready::Draining => f.write_str("draining: shutting down, not taking events"),
            Unready::StoreNotWritable(d) => write!(f, "state store not writable: {d}"),
            Unready::Paused(d) => write!(f, "delivery paused: {d}"),
            Unready::Standby(d) => write!(f, "standby: {d}"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    draining: bool,
    /// The intake's last commit failed (cleared by the intake's next commit that works).
    store: Option<String>,
    /// The dispatcher could not claim, or could not record an outcome (cleared by the
    /// dispatcher once its writes work and nothing is left unrecorded). Kept apart from the
    /// intake's: on a full disk a claim (an update in place) can work while every insert fails,
    /// and one side's success must not make the agent look ready while the other fails.
    delivery_store: Option<String>,
    paused: Option<String>,
    standby: Option<String>,
}

/// Cloneable; every clone sees the same state.
#[derive(Debug, Clone, Default)]
pub struct Health {
    state: Arc<Mutex<State>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic while holding this lock cannot leave it inconsistent (plain field writes).
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Shutdown has begun (never undone).
    pub fn set_draining(&self) {
        self.with(|s| s.draining = true)
    }

    pub fn is_draining(&self) -> bool {
        self.with(|s| s.draining)
    }

    /// `Some(detail)`: the store refused the intake's write; `None`: it works again.
    pub fn set_store_problem(&self, detail: Option<String>) {
        self.with(|s| s.store = detail)
    }

    /// `Some(detail)`: the store refused the dispatcher's write; `None`: it works again.
    pub fn set_delivery_store_problem(&self, detail: Option<String>) {
        self.with(|s| s.delivery_store = detail)
    }

    /// `Some(reason)`: delivery paused on a systemic verdict; `None`: resumed.
    pub fn set_paused(&self, reason: Option<String>) {
        self.with(|s| s.paused = reason)
    }

    /// `Some(holder)`: standing by while another agent delivers; `None`: this one delivers.
    pub fn set_standby(&self, holder: Option<String>) {
        self.with(|s| s.standby = holder)
    }

    /// Every reason the agent is not ready, most fundamental first; empty when ready.
    pub fn unready(&self) -> Vec<Unready> {
        self.with(|s| {
            let mut out = vec![];
            if s.draining {
                out.push(Unready::Draining);
            }
            if let Some(d) = s.store.as_ref().or(s.delivery_store.as_ref()) {
                out.push(Unready::StoreNotWritable(d.clone()));
            }
            if let Some(d) = &s.paused {
                out.push(Unready::Paused(d.clone()));
            }
            if let Some(d) = &s.standby {
                out.push(Unready::Standby(d.clone()));
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_every_reason_and_recovers_from_a_pause() {
        let h = Health::new();
        assert!(h.unready().is_empty());
        let seen_elsewhere = h.clone();
        h.set_paused(Some("credentials: grant refused".into()));
        assert_eq!(
            seen_elsewhere.unready(),
            vec![Unready::Paused("credentials: grant refused".into())]
        );
        h.set_paused(None);
        assert!(seen_elsewhere.unready().is_empty());
        h.set_store_problem(Some("disk full".into()));
        h.set_draining();
        assert_eq!(h.unready()[0], Unready::Draining);
        assert_eq!(h.unready().len(), 2);
    }

    /// A full disk can let the dispatcher's claims (updates in place) work while every insert
    /// of the intake fails: the dispatcher's success must not make the agent look ready.
    #[test]
    fn one_sides_working_store_does_not_clear_the_others_problem() {
        let h = Health::new();
        h.set_store_problem(Some("intake: disk full".into()));
        h.set_delivery_store_problem(None);
        assert_eq!(h.unready(), vec![Unready::StoreNotWritable("intake: disk full".into())]);
        h.set_store_problem(None);
        h.set_delivery_store_problem(Some("an outcome could not be recorded".into()));
        assert_eq!(h.unready().len(), 1, "the dispatcher's problem alone is unready too");
        h.set_delivery_store_problem(None);
        assert!(h.unready().is_empty());
    }
}
