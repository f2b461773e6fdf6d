//! What the running agent tells about itself besides `/readyz` and `/metrics`: a heartbeat in
//! the state store every [`HEARTBEAT_EVERY`] (role, readiness with every reason, version), which
//! `kfr status` reads from any shell on the host, and the certificates' expiry
//! ([`super::certwatch`]), looked at every [`CERTS_EVERY`]. Neither can stop the agent: a failed
//! heartbeat is logged and tried again at the next beat.

use super::certwatch::CertWatch;
use crate::store::{AgentRole, Heartbeat, LeaseHolder, Store};
use crate::sync::health::Health;
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the agent records its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A heartbeat older than this means the agent is gone (stopped hard, hung, or its host down).
pub const STALE_AFTER: chrono::Duration = chrono::Duration::seconds(10);
/// How often the certificate files are looked at for a change.
pub const CERTS_EVERY: Duration = Duration::from_secs(60);

/// The agent's role as the store sees it: leader while its lease holds.
pub fn role(holder: &str, lease: Option<&LeaseHolder>, now: DateTime<Utc>) -> AgentRole {
    match lease {
        Some(l) if l.holder == holder && l.until > now => AgentRole::Leader,
        _ => AgentRole::Standby,
    }
}

/// What one agent needs to beat.
pub struct Watch {
    pub store: Store,
    pub register: String,
    pub holder: String,
    pub health: Health,
    pub certs: CertWatch,
}

impl Watch {
    async fn beat(&self, started_at: DateTime<Utc>, stopped: bool) {
        let now = Utc::now();
        let role = if stopped {
            AgentRole::Stopped
        } else {
            let lease = self.store.lease_holder(self.register.clone()).await.ok().flatten();
            role(&self.holder, lease.as_ref(), now)
        };
        let beat = Heartbeat {
            register: self.register.clone(),
            holder: self.holder.clone(),
            role,
            unready: self.health.unready().iter().map(ToString::to_string).collect(),
            version: super::VERSION.to_string(),
            started_at,
            at: now,
        };
        if let Err(e) = self.store.record_heartbeat(beat).await {
            tracing::warn!(error = %e, "could not record the agent's heartbeat; `kfr status` may show it as gone");
        }
    }

    /// Beats until `stop`, then records a last heartbeat saying it stopped.
    pub fn spawn(mut self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let started_at = Utc::now();
            let mut certs_due = tokio::time::Instant::now();
            loop {
                if tokio::time::Instant::now() >= certs_due {
                    self.certs.check_and_report(Utc::now());
                    certs_due += CERTS_EVERY;
                }
                self.beat(started_at, false).await;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                }
            }
            self.beat(started_at, true).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_only_while_its_own_lease_holds() {
        let now = Utc::now();
        let lease = |holder: &str, secs: i64| LeaseHolder {
            holder: holder.into(),
            epoch: 1,
            until: now + chrono::Duration::seconds(secs),
        };
        assert_eq!(role("sync:a", Some(&lease("sync:a", 10)), now), AgentRole::Leader);
        assert_eq!(role("sync:a", Some(&lease("sync:a", -1)), now), AgentRole::Standby);
        assert_eq!(role("sync:a", Some(&lease("sync:b", 10)), now), AgentRole::Standby);
        assert_eq!(role("sync:a", None, now), AgentRole::Standby);
    }
}
