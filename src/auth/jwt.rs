//! Access tokens: HS256 JWTs with the algorithm pinned. A token names its tenant and is only
//! accepted together with that tenant.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// the user id
    pub sub: Uuid,
    /// the tenant id
    pub tid: Uuid,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
    pub jti: Uuid,
    /// the user's token generation when it was issued (tokens of an older one are revoked)
    #[serde(default)]
    pub r#gen: i32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl JwtKeys {
    pub fn new(secret: &Secret, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        validation.leeway = 5;
        validation.validate_exp = true;
        Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for the user at their current token generation (see `users.token_generation`).
    pub fn issue(&self, user: Uuid, tenant: Uuid, role: Role, generation: i32) -> anyhow::Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user,
            tid: tenant,
            role,
            iat: now,
            exp: now + self.ttl.as_secs(),
            jti: Uuid::new_v4(),
            r#gen: generation,
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(e) => {
                tracing::debug!(reason = %e, "token rejected");
                Err(TokenError::Invalid)
            }
        }
    }

    /// Signs arbitrary claims with this key (tests use it to forge expired tokens).
    #[doc(hidden)]
    pub fn sign_raw(&self, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding).expect("HS256 signing")
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(&Secret::new("k".repeat(40)), Duration::from_secs(60))
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let (u, t) = (Uuid::new_v4(), Uuid::new_v4());
        let claims = k.verify(&k.issue(u, t, Role::Admin, 0).unwrap()).unwrap();
        assert_eq!((claims.sub, claims.tid, claims.role), (u, t, Role::Admin));
        assert_eq!(claims.exp - claims.iat, 60);
    }

    #[test]
    fn rejects_alg_none_other_keys_and_tampering() {
        let k = keys();
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({"sub": Uuid::new_v4(), "tid": Uuid::new_v4(), "role": "admin",
            "iat": now, "exp": now + 60, "jti": Uuid::new_v4()});
        let none = format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "typ": "JWT"})), b64(&claims));
        assert_eq!(k.verify(&none).unwrap_err(), TokenError::Invalid);

        let other = JwtKeys::new(&Secret::new("z".repeat(40)), Duration::from_secs(60));
        assert_eq!(k.verify(&other.sign_raw(&claims)).unwrap_err(), TokenError::Invalid);

        let good = k.sign_raw(&claims);
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut forged = claims.clone();
        forged["role"] = "admin".into();
        forged["tid"] = serde_json::json!(Uuid::new_v4());
        parts[1] = b64(&forged);
        assert_eq!(k.verify(&parts.join(".")).unwrap_err(), TokenError::Invalid);

        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret("k".repeat(40).as_bytes()),
        )
        .unwrap();
        assert_eq!(k.verify(&hs512).unwrap_err(), TokenError::Invalid);
    }

    #[test]
    fn expired_is_told_apart() {
        let k = keys();
        let now = jsonwebtoken::get_current_timestamp();
        let expired = k.sign_raw(&serde_json::json!({"sub": Uuid::new_v4(), "tid": Uuid::new_v4(),
            "role": "member", "iat": now - 7200, "exp": now - 3600, "jti": Uuid::new_v4()}));
        assert_eq!(k.verify(&expired).unwrap_err(), TokenError::Expired);
    }
}
