use std::collections::HashMap;

use super::*;

fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(|name| map.get(name).cloned())
}

#[test]
fn defaults_are_local_and_offline() {
    let c = config(&[]).unwrap();
    assert_eq!(c.environment, Environment::Development);
    assert_eq!(c.database_url.expose(), DEFAULT_DATABASE_URL);
    assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8000");
    assert_eq!(c.jwt_ttl, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(c.embedding_provider, EmbeddingProvider::Local);
    assert_eq!(c.embedding_model, "all-MiniLM-L6-v2");
    assert_eq!(c.chat_models_allowed, vec!["gpt-4o-mini".to_string()]);
    assert!(c.openai_api_key.is_none());
}

#[test]
fn production_refuses_missing_or_short_secret_and_log_mailer() {
    let err = config(&[("ENVIRONMENT", "production"), ("SMTP_URL", "smtp://mail:25")]).unwrap_err();
    assert!(err.to_string().contains("JWT_SECRET is required"), "{err}");

    let err =
        config(&[("ENVIRONMENT", "production"), ("JWT_SECRET", "short"), ("SMTP_URL", "smtp://m:25")]).unwrap_err();
    assert!(err.to_string().contains("at least 32 bytes"), "{err}");

    let err = config(&[("ENVIRONMENT", "production"), ("JWT_SECRET", DEV_JWT_SECRET), ("SMTP_URL", "smtp://m:25")])
        .unwrap_err();
    assert!(err.to_string().contains("development key"), "{err}");

    let long = "x".repeat(40);
    let err = config(&[("ENVIRONMENT", "production"), ("JWT_SECRET", &long)]).unwrap_err();
    assert!(err.to_string().contains("SMTP_URL is required"), "{err}");

    let ok = config(&[("ENVIRONMENT", "production"), ("JWT_SECRET", &long), ("SMTP_URL", "smtp://m:25")]);
    assert!(ok.unwrap().is_production());
}

#[test]
fn secrets_are_redacted_in_debug() {
    let c = config(&[
        ("JWT_SECRET", "super-secret-value-123"),
        ("LOGIN_CODE_KEY", "code-key-value-xyz"),
        ("OPENAI_API_KEY", "sk-live-abcdef"),
        ("DATABASE_URL", "postgres://app:hunter2@db:5432/app"),
        ("SMTP_URL", "smtp://mailer:mailpass@smtp:587"),
    ])
    .unwrap();
    let printed = format!("{c:?}");
    for secret in ["super-secret-value-123", "code-key-value-xyz", "sk-live-abcdef", "hunter2", "mailpass"] {
        assert!(!printed.contains(secret), "{secret} leaked in {printed}");
    }
    assert!(printed.contains("postgres://app:***@db:5432/app"), "{printed}");
}

#[test]
fn search_breadth_defaults_and_bounds() {
    assert_eq!(config(&[]).unwrap().chat.ef_search, DEFAULT_EF_SEARCH);
    assert_eq!(config(&[("RETRIEVAL_EF_SEARCH", "3")]).unwrap().chat.ef_search, 10);
    assert_eq!(config(&[("RETRIEVAL_EF_SEARCH", "400")]).unwrap().chat.ef_search, 400);
    let err = config(&[("RETRIEVAL_EF_SEARCH", "wide")]).unwrap_err();
    assert!(err.to_string().contains("RETRIEVAL_EF_SEARCH"), "{err}");
}

#[test]
fn bad_values_are_named() {
    let err = config(&[("JWT_TTL_SECONDS", "soon")]).unwrap_err();
    assert!(err.to_string().contains("JWT_TTL_SECONDS"));
    let err = config(&[("BIND_ADDR", "nowhere")]).unwrap_err();
    assert!(err.to_string().contains("BIND_ADDR"));
    let err = config(&[("EMBEDDING_PROVIDER", "magic")]).unwrap_err();
    assert!(err.to_string().contains("EMBEDDING_PROVIDER"));
}

#[test]
fn allow_list_always_contains_the_default_model() {
    let c = config(&[("CHAT_MODEL", "m1"), ("CHAT_MODELS_ALLOWED", "m2, m3")]).unwrap();
    assert_eq!(c.chat_models_allowed, vec!["m1", "m2", "m3"]);
}

#[test]
fn login_caps_per_client_address_are_configurable() {
    let c = config(&[]).unwrap();
    assert_eq!((c.auth.codes_per_ip_per_hour, c.auth.verifies_per_ip_per_hour), (30, 120));
    assert_eq!(c.api_keys_per_tenant, 100);
    let c = config(&[
        ("LOGIN_CODES_PER_ADDRESS_PER_HOUR", "600"),
        ("LOGIN_CHECKS_PER_ADDRESS_PER_HOUR", "2400"),
        ("API_KEYS_PER_TENANT", "3"),
    ])
    .unwrap();
    assert_eq!((c.auth.codes_per_ip_per_hour, c.auth.verifies_per_ip_per_hour), (600, 2400));
    assert_eq!(c.auth.codes_per_email_per_hour, 5, "the per-mailbox cap stays");
    assert_eq!(c.api_keys_per_tenant, 3);
    assert!(config(&[("LOGIN_CODES_PER_ADDRESS_PER_HOUR", "many")]).is_err());
}

#[test]
fn login_codes_have_a_key_of_their_own() {
    let c = config(&[("JWT_SECRET", "a-jwt-secret-of-enough-length-000000")]).unwrap();
    assert_ne!(c.login_code_key, c.jwt_secret);
    // derived: the same secret gives the same key (codes survive a restart), another another
    let again = config(&[("JWT_SECRET", "a-jwt-secret-of-enough-length-000000")]).unwrap();
    assert_eq!(again.login_code_key, c.login_code_key);
    let other = config(&[("JWT_SECRET", "a-jwt-secret-of-enough-length-000001")]).unwrap();
    assert_ne!(other.login_code_key, c.login_code_key);

    let own = config(&[("LOGIN_CODE_KEY", "a-key-for-codes-only")]).unwrap();
    assert_eq!(own.login_code_key.expose(), "a-key-for-codes-only");
    let err = config(&[("JWT_SECRET", "same-key-for-both"), ("LOGIN_CODE_KEY", "same-key-for-both")]).unwrap_err();
    assert!(err.to_string().contains("must not be JWT_SECRET"), "{err}");
    let long = "x".repeat(40);
    let err = config(&[
        ("ENVIRONMENT", "production"),
        ("JWT_SECRET", &long),
        ("SMTP_URL", "smtp://m:25"),
        ("LOGIN_CODE_KEY", "short"),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("LOGIN_CODE_KEY must be at least 32 bytes"), "{err}");
}

#[test]
fn proxies_and_header_timeout() {
    let c = config(&[]).unwrap();
    assert_eq!(c.trusted_proxies, TrustedProxies::None);
    assert_eq!(c.header_read_timeout, Duration::from_secs(30));
    assert_eq!(c.write_stall_timeout, Duration::from_secs(60));
    assert_eq!(c.min_send_rate, 16 * 1024);
    let c = config(&[
        ("TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1"),
        ("HTTP_HEADER_TIMEOUT_SECONDS", "5"),
        ("HTTP_WRITE_STALL_SECONDS", "7"),
        ("HTTP_MIN_SEND_RATE", "0"),
    ])
    .unwrap();
    assert_eq!(c.write_stall_timeout, Duration::from_secs(7));
    assert_eq!(c.min_send_rate, 1, "no rate of 0: a waiting client would never earn time");
    assert!(matches!(c.trusted_proxies, TrustedProxies::Networks(ref n) if n.len() == 2));
    assert_eq!(c.header_read_timeout, Duration::from_secs(5));
    let err = config(&[("TRUSTED_PROXIES", "10.0.0.0/99")]).unwrap_err();
    assert!(format!("{err:#}").contains("TRUSTED_PROXIES"), "{err:#}");
}

#[test]
fn the_similarity_floor_is_the_models_unless_set() {
    assert_eq!(config(&[]).unwrap().chat.min_similarity, None);
    assert_eq!(crate::embed::similarity_floor("all-MiniLM-L6-v2"), 0.25);
    assert_eq!(crate::embed::similarity_floor("multilingual-e5-small"), 0.80);
    let c = config(&[("RETRIEVAL_MIN_SIMILARITY", "0.5"), ("EMBEDDING_MODEL", "multilingual-e5-small")]).unwrap();
    assert_eq!(c.chat.min_similarity, Some(0.5));
    assert!(config(&[("RETRIEVAL_MIN_SIMILARITY", "2")]).is_err());
}

#[test]
fn the_cross_language_model_goes_with_the_local_minilm_only() {
    let e5 = Some("multilingual-e5-small".to_owned());
    assert_eq!(config(&[]).unwrap().cross_language_model, e5);
    assert_eq!(config(&[("CROSS_LANGUAGE_MODEL", "none")]).unwrap().cross_language_model, None);
    assert_eq!(config(&[("EMBEDDING_MODEL", "multilingual-e5-small")]).unwrap().cross_language_model, None);
    assert_eq!(config(&[("EMBEDDING_PROVIDER", "openai")]).unwrap().cross_language_model, None);
    let err =
        config(&[("EMBEDDING_PROVIDER", "openai"), ("CROSS_LANGUAGE_MODEL", "multilingual-e5-small")]).unwrap_err();
    assert!(err.to_string().contains("needs none"), "{err}");
    let err = config(&[("CROSS_LANGUAGE_MODEL", "labse")]).unwrap_err();
    assert!(err.to_string().contains("must be `multilingual-e5-small` or `none`"), "{err}");
}
