//! Which tenants have quotas, remembered per process so that the questions of a tenant without
//! any are admitted without a round trip to Postgres (most tenants have none; admission had been a
//! seventh of the database's work per question).
//!
//! Every change to `quotas` notifies the channel `docuchat_quotas` (a trigger, migration 0006,
//! so changes made outside the API count too); a listener forgets everything it remembered on each
//! notification, and on losing its connection. While it is not listening nothing is remembered
//! and every admission asks Postgres. A lookup that overlapped a notification is not remembered
//! (a generation count). A quota set through this process is forgotten at once; one set through
//! another process, within the notification's delivery (milliseconds), during which that
//! tenant's questions may be admitted without a hold. Listening keeps one of the pool's
//! connections; with a pool of fewer than four, nothing is remembered.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Once,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use uuid::Uuid;

use super::quota::{self, AdmitError, Hold};
use crate::db::{self, Listening};

const CHANNEL: &str = "docuchat_quotas";
const QUOTA_CHANGES: &str = "quota changes; every admission asks the database";
/// The smallest pool that gives a connection to listening.
const MIN_POOL_TO_LISTEN: u32 = 4;

#[derive(Default)]
struct Known {
    /// tenant → has at least one quota
    tenants: HashMap<Uuid, bool>,
    /// bumped whenever what is known may have gone stale
    generation: u64,
}

pub struct QuotaGate {
    db: PgPool,
    known: Mutex<Known>,
    /// the listener is subscribed, so what is remembered is kept current
    live: AtomicBool,
    listener: Once,
}

impl QuotaGate {
    pub fn new(db: PgPool) -> Arc<Self> {
        Arc::new(QuotaGate { db, known: Mutex::default(), live: AtomicBool::new(false), listener: Once::new() })
    }

    /// Forgets everything (a quota changed).
    pub fn forget(&self) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.generation += 1;
        known.tenants.clear();
    }

    /// What is remembered of a tenant: whether it has a quota; `None` when nothing is, or while
    /// not listening.
    pub fn remembers(&self, tenant: Uuid) -> Option<bool> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if self.live.load(Ordering::Acquire) { known.tenants.get(&tenant).copied() } else { None }
    }

    /// Whether the tenant has any quota.
    async fn has_quotas(self: &Arc<Self>, tenant: Uuid) -> Result<bool, sqlx::Error> {
        self.listener.call_once(|| {
            // listening keeps one connection: not with a pool too small to spare it
            if self.db.options().get_max_connections() >= MIN_POOL_TO_LISTEN {
                tokio::spawn(db::listen(
                    Arc::downgrade(self),
                    |g| g.db.clone(),
                    CHANNEL,
                    QUOTA_CHANGES,
                    |g, event| match event {
                        Listening::Live => g.set_live(true),
                        Listening::Notified(_) => g.forget(),
                        Listening::Lost => g.set_live(false),
                    },
                ));
            }
        });
        let generation = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            if self.live.load(Ordering::Acquire)
                && let Some(has) = known.tenants.get(&tenant)
            {
                return Ok(*has);
            }
            known.generation
        };
        let has = quota::tenant_has_quotas(&mut *crate::db::for_tenant(&self.db, tenant).await?, tenant).await?;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if self.live.load(Ordering::Acquire) && known.generation == generation {
            known.tenants.insert(tenant, has);
        }
        Ok(has)
    }

    /// [`quota::admit`], without a round trip for a tenant known to have no quota.
    pub async fn admit(
        self: &Arc<Self>,
        tenant: Uuid,
        user: Option<Uuid>,
        tokens: i64,
        hold_for: Duration,
    ) -> Result<Hold, AdmitError> {
        if !self.has_quotas(tenant).await? {
            return Ok(None);
        }
        quota::admit(&self.db, tenant, user, tokens, hold_for).await
    }

    /// [`quota::check`], likewise.
    pub async fn check(self: &Arc<Self>, tenant: Uuid, user: Option<Uuid>) -> Result<(), AdmitError> {
        if !self.has_quotas(tenant).await? {
            return Ok(());
        }
        quota::check(&self.db, tenant, user).await
    }

    fn set_live(&self, live: bool) {
        // either way what was known may have missed a change; forgotten after the switch, so a
        // lookup that raced it cannot leave an answer behind
        self.live.store(live, Ordering::Release);
        self.forget();
    }
}
