//! One-time login codes, kept in Redis.
//!
//! A code is six digits from the operating system's CSPRNG. Redis holds only an HMAC of it
//! (keyed with the login-code key — `LOGIN_CODE_KEY`, or one derived from the JWT secret —
//! bound to tenant and address), so a copy of Redis does not let
//! anyone log in. Key names carry a keyed hash of the address, never the address itself.
//! A new request replaces the old code; every guess is counted *before* it is compared, so
//! concurrent guesses cannot get past the attempt limit (a guess past it is refused without being
//! compared); a right guess deletes the code, and only the caller whose delete removed it is
//! logged in, so a code works once.

use std::{net::IpAddr, time::Duration};

use fred::prelude::*;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::email::Email;
use crate::{
    config::{AuthLimits, Secret},
    error::ApiError,
    redis::Redis,
};

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct CodeStore {
    redis: Redis,
    key: Secret,
    limits: AuthLimits,
}

/// Why a code was not issued or not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// Wrong, expired, already used, or never requested.
    #[error("the code is wrong, expired or already used")]
    Invalid,
    /// Too many wrong guesses: the code is burned.
    #[error("too many wrong codes: request a new code")]
    Burned,
    /// Too many codes or attempts for this address or from this client.
    #[error("{message}")]
    RateLimited { message: &'static str, retry_after: Duration },
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
}

impl From<CodeError> for ApiError {
    fn from(e: CodeError) -> Self {
        match e {
            CodeError::Invalid => {
                ApiError::Unauthorized { code: "invalid_code", message: "the code is wrong, expired or already used" }
            }
            CodeError::Burned => ApiError::Unauthorized {
                code: "too_many_attempts",
                message: "too many wrong codes: request a new code",
            },
            CodeError::RateLimited { message, retry_after } => ApiError::rate_limited(message, retry_after),
            CodeError::Redis(e) => e.into(),
        }
    }
}

fn limited(message: &'static str, retry_after: Duration) -> CodeError {
    CodeError::RateLimited { message, retry_after }
}

impl CodeStore {
    pub fn new(redis: Redis, key: Secret, limits: AuthLimits) -> Self {
        Self { redis, key, limits }
    }

    pub fn limits(&self) -> &AuthLimits {
        &self.limits
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(self.key.expose().as_bytes()).expect("HMAC takes any key length");
        for part in parts {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn subject(&self, tenant: Uuid, email: &Email) -> String {
        let h = self.mac(&[b"docuchat/email/v1", tenant.as_bytes(), email.as_str().as_bytes()]);
        format!("{tenant}:{}", hex::encode(&h[..16]))
    }

    fn code_hash(&self, tenant: Uuid, email: &Email, code: &str) -> String {
        hex::encode(self.mac(&[b"docuchat/code/v1", tenant.as_bytes(), email.as_str().as_bytes(), code.as_bytes()]))
    }

    /// Checks the request limits, then stores and returns a fresh code, which the caller mails.
    /// For an address that may not log in (`allowed` false) every limit is counted the same way
    /// but nothing is stored and no code is returned: the answer cannot tell the two apart.
    pub async fn issue(
        &self,
        tenant: Uuid,
        email: &Email,
        client_ip: Option<IpAddr>,
        allowed: bool,
    ) -> Result<Option<String>, CodeError> {
        let hour = Duration::from_secs(3600);
        if let Some(ip) = client_ip {
            let (n, left) = self.redis.hit(&format!("rl:code-ip:{ip}"), hour).await?;
            if n > u64::from(self.limits.codes_per_ip_per_hour) {
                return Err(limited("too many code requests from this address", left));
            }
        }
        let subject = self.subject(tenant, email);

        // resend cooldown: one code per address per cooldown period (zero: no cooldown)
        if !self.limits.resend_cooldown.is_zero() {
            let cooldown_key = self.redis.key(&format!("code-cooldown:{subject}"));
            let cooldown_ms = self.limits.resend_cooldown.as_millis().max(1) as i64;
            let set: Option<String> = self
                .redis
                .client()
                .set(&cooldown_key, "1", Some(Expiration::PX(cooldown_ms)), Some(SetOptions::NX), false)
                .await?;
            if set.is_none() {
                let left: i64 = self.redis.client().pttl(&cooldown_key).await?;
                return Err(limited(
                    "a code was sent a moment ago; wait before asking for another",
                    Duration::from_millis(left.max(1000) as u64),
                ));
            }
        }

        let (n, left) = self.redis.hit(&format!("rl:code-email:{subject}"), hour).await?;
        if n > u64::from(self.limits.codes_per_email_per_hour) {
            return Err(limited("too many codes were requested for this address", left));
        }

        if !allowed {
            return Ok(None);
        }
        let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
        const STORE: &str = r"
            redis.call('DEL', KEYS[1])
            redis.call('HSET', KEYS[1], 'h', ARGV[1], 'n', 0)
            redis.call('PEXPIRE', KEYS[1], ARGV[2])
            return 1
        ";
        let ttl_ms = self.limits.code_ttl.as_millis().max(1) as i64;
        let _: i64 = self
            .redis
            .client()
            .eval(
                STORE,
                vec![self.redis.key(&format!("code:{subject}"))],
                vec![self.code_hash(tenant, email, &code), ttl_ms.to_string()],
            )
            .await?;
        Ok(Some(code))
    }

    /// Consumes the code if it is right. Every call counts as one attempt.
    pub async fn verify(&self, tenant: Uuid, email: &Email, code: &str) -> Result<(), CodeError> {
        let key = self.redis.key(&format!("code:{}", self.subject(tenant, email)));
        // returns {0} when there is no code, {-1} when the attempt limit is passed, else {1, hash, n}
        const ATTEMPT: &str = r"
            local h = redis.call('HGET', KEYS[1], 'h')
            if not h then return {0} end
            local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
            if n > tonumber(ARGV[1]) then return {-1} end
            return {1, h, n}
        ";
        let reply: Vec<Value> =
            self.redis.client().eval(ATTEMPT, vec![key.clone()], vec![i64::from(self.limits.max_attempts)]).await?;
        let status = reply.first().and_then(|v| v.as_i64()).unwrap_or(0);
        match status {
            0 => return Err(CodeError::Invalid),
            -1 => return Err(CodeError::Burned),
            _ => {}
        }
        let stored = reply.get(1).and_then(|v| v.as_string()).unwrap_or_default();
        let attempts = reply.get(2).and_then(|v| v.as_i64()).unwrap_or(i64::MAX);

        let well_formed = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
        let expected = self.code_hash(tenant, email, if well_formed { code } else { "" });
        let matches = well_formed && bool::from(expected.as_bytes().ct_eq(stored.as_bytes()));
        if matches {
            // consume it, unless it was replaced or used meanwhile: exactly one caller wins
            const CONSUME: &str = r"
                if redis.call('HGET', KEYS[1], 'h') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
                return 0
            ";
            let deleted: i64 = self.redis.client().eval(CONSUME, vec![key.clone()], vec![stored]).await?;
            return if deleted == 1 { Ok(()) } else { Err(CodeError::Invalid) };
        }
        if attempts >= i64::from(self.limits.max_attempts) {
            let _: i64 = self.redis.client().del(&key).await?;
            return Err(CodeError::Burned);
        }
        Err(CodeError::Invalid)
    }

    /// Counts one verification attempt from a client address (guards against guessing across many
    /// addresses from one machine).
    pub async fn check_verify_rate(&self, client_ip: Option<IpAddr>) -> Result<(), CodeError> {
        let Some(ip) = client_ip else { return Ok(()) };
        let (n, left) = self.redis.hit(&format!("rl:verify-ip:{ip}"), Duration::from_secs(3600)).await?;
        if n > u64::from(self.limits.verifies_per_ip_per_hour) {
            return Err(limited("too many login attempts from this address", left));
        }
        Ok(())
    }
}
