//! Redis: verification codes and shared counters. Every key carries the configured prefix, so
//! deployments (and tests) can share one server without seeing each other's keys.

use std::time::Duration;

use anyhow::Context;
use fred::prelude::*;

/// A pool of Redis connections and the key prefix.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    prefix: String,
}

/// Commands fail after this long instead of hanging while Redis is down.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

impl Redis {
    pub async fn connect(url: &str, prefix: &str, pool_size: usize) -> anyhow::Result<Self> {
        let config = Config::from_url(url).context("REDIS_URL is not a valid Redis URL")?;
        let pool = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
                c.max_command_attempts = 1;
                c.tcp = TcpConfig { nodelay: Some(true), ..Default::default() };
            })
            .with_performance_config(|p| {
                p.default_command_timeout = COMMAND_TIMEOUT;
            })
            // keep trying for ever, at most every 2 s, so the service heals when Redis returns
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build_pool(pool_size.max(1))
            .context("cannot build the Redis client")?;
        tokio::time::timeout(Duration::from_secs(10), pool.init())
            .await
            .context("timed out connecting to Redis")?
            .context("cannot connect to Redis")?;
        Ok(Self { pool, prefix: prefix.to_owned() })
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{}{}", self.prefix, suffix)
    }

    pub fn client(&self) -> &Client {
        self.pool.next()
    }

    pub async fn ping(&self) -> Result<(), Error> {
        let _: String = self.client().ping(None).await?;
        Ok(())
    }

    /// Counts one hit in a fixed window of `window` that starts with the first hit. Returns the
    /// count so far (this hit included) and the time left in the window.
    pub async fn hit(&self, key: &str, window: Duration) -> Result<(u64, Duration), Error> {
        const SCRIPT: &str = r"
            local n = redis.call('INCR', KEYS[1])
            if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
            local ttl = redis.call('PTTL', KEYS[1])
            if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
            return {n, ttl}
        ";
        let window_ms = window.as_millis().max(1) as i64;
        let (count, ttl): (i64, i64) = self.client().eval(SCRIPT, vec![self.key(key)], vec![window_ms]).await?;
        Ok((count.max(0) as u64, Duration::from_millis(ttl.max(0) as u64)))
    }

    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }
}
