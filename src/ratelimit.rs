//! Request rate limits: the auth endpoints per client IP, questions and uploads per user (or API
//! key). Two layers, both of which must allow a request:
//! - in-process, with governor (GCRA): cheap, and the only layer when Redis cannot be reached;
//! - shared through Redis (a fixed window per key), so several server processes enforce one limit.
//!
//! When Redis fails, requests are limited by the process alone and the failure is logged (at most
//! once a minute), so an outage of Redis never turns into an outage of the service.

use std::{
    fmt::Display,
    hash::Hash,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::keyed::HashMapStateStore,
};
use uuid::Uuid;

use crate::{error::ApiError, redis::Redis};

const WINDOW: Duration = Duration::from_secs(60);
/// A rate-limit check waits no longer than this for Redis.
const REDIS_BUDGET: Duration = Duration::from_millis(250);

/// Requests per minute for each limited class; 0 turns a class off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub auth_per_minute: u32,
    pub chat_per_minute: u32,
    pub upload_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self { auth_per_minute: 30, chat_per_minute: 30, upload_per_minute: 20 }
    }
}

type Local<K> = RateLimiter<K, HashMapStateStore<K>, DefaultClock>;

struct Class<K: Hash + Eq + Clone> {
    name: &'static str,
    per_minute: u32,
    local: Option<Local<K>>,
}

impl<K: Hash + Eq + Clone> Class<K> {
    fn new(name: &'static str, per_minute: u32) -> Self {
        let local = NonZeroU32::new(per_minute).map(|n| RateLimiter::hashmap(Quota::per_minute(n)));
        Self { name, per_minute, local }
    }
}

/// The limiters of one process.
pub struct Limiter {
    redis: Redis,
    auth: Class<IpAddr>,
    chat: Class<Uuid>,
    upload: Class<Uuid>,
    /// seconds since the epoch of the last "Redis unavailable" log line
    last_warned: AtomicU64,
}

/// A request over its limit, and how long until the next one may pass.
#[derive(Debug, thiserror::Error)]
#[error("too many requests: try again in {} s", .retry_after.as_millis().div_ceil(1000).max(1))]
pub struct Limited {
    pub retry_after: Duration,
}

impl From<Limited> for ApiError {
    fn from(e: Limited) -> Self {
        ApiError::rate_limited(e.to_string(), e.retry_after)
    }
}

fn limited(retry_after: Duration) -> Limited {
    Limited { retry_after }
}

impl Limiter {
    pub fn new(redis: Redis, limits: &RateLimits) -> Arc<Self> {
        let limiter = Arc::new(Self {
            redis,
            auth: Class::new("auth", limits.auth_per_minute),
            chat: Class::new("chat", limits.chat_per_minute),
            upload: Class::new("upload", limits.upload_per_minute),
            last_warned: AtomicU64::new(0),
        });
        // forget keys that have been quiet for a window, so the maps stay small
        let weak: Weak<Self> = Arc::downgrade(&limiter);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let mut tick = tokio::time::interval(WINDOW);
                loop {
                    tick.tick().await;
                    let Some(limiter) = weak.upgrade() else { break };
                    limiter.forget_quiet_keys();
                }
            });
        }
        limiter
    }

    fn forget_quiet_keys(&self) {
        for local in [self.chat.local.as_ref(), self.upload.local.as_ref()].into_iter().flatten() {
            local.retain_recent();
            local.shrink_to_fit();
        }
        if let Some(local) = &self.auth.local {
            local.retain_recent();
            local.shrink_to_fit();
        }
    }

    /// The auth endpoints, per client IP (requests without a known address share one bucket).
    pub async fn check_auth(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        let ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        self.check(&self.auth, ip).await
    }

    /// Questions asked over the chat socket, per user.
    pub async fn check_chat(&self, user: Uuid) -> Result<(), Limited> {
        self.check(&self.chat, user).await
    }

    /// Uploads, per user or API key.
    pub async fn check_upload(&self, who: Uuid) -> Result<(), Limited> {
        self.check(&self.upload, who).await
    }

    async fn check<K: Hash + Eq + Clone + Display>(&self, class: &Class<K>, key: K) -> Result<(), Limited> {
        let Some(local) = &class.local else { return Ok(()) };
        if let Err(not_until) = local.check_key(&key) {
            return Err(limited(not_until.wait_time_from(DefaultClock::default().now())));
        }
        let redis_key = format!("rl:{}:{}", class.name, key);
        match tokio::time::timeout(REDIS_BUDGET, self.redis.hit(&redis_key, WINDOW)).await {
            Ok(Ok((count, left))) if count > u64::from(class.per_minute) => Err(limited(left)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.warn_redis_down(&e.to_string());
                Ok(())
            }
            Err(_) => {
                self.warn_redis_down("timed out");
                Ok(())
            }
        }
    }

    fn warn_redis_down(&self, error: &str) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let last = self.last_warned.load(Ordering::Relaxed);
        if now >= last + 60
            && self.last_warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(error, "Redis is unavailable: rate limits are enforced per process only");
        }
    }
}
