//! Configuration from the environment (and a `.env` file). Every name is documented in
//! `.env.example`; defaults are the offline, local ones.

mod secret;

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, bail};

pub use self::secret::{ConnUrl, Secret};
pub use crate::{http::proxy::TrustedProxies, ratelimit::RateLimits};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingProvider {
    Local,
    OpenAi,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Live (not revoked) API keys a tenant may have.
    pub api_keys_per_tenant: i64,
    /// Users a tenant may have (admins' additions and logins of new addresses; the operator's
    /// command line is not bound by it).
    pub members_per_tenant: i64,
    /// Chat sockets open at once per user, and per tenant, in one process.
    pub sockets_per_user: usize,
    pub sockets_per_tenant: usize,
    pub environment: Environment,
    pub database_url: ConnUrl,
    /// The tables' owner, for migrations and the command line (`None`: `database_url`).
    pub database_migration_url: Option<ConnUrl>,
    pub database_max_connections: u32,
    pub redis_url: ConnUrl,
    /// Prepended to every Redis key, so that several deployments (or tests) can share one Redis.
    pub redis_key_prefix: String,
    pub bind_addr: SocketAddr,
    /// Where `GET /metrics` is served (`METRICS_ADDR`; `None`: nowhere)
    pub metrics_addr: Option<SocketAddr>,
    pub jwt_secret: Secret,
    /// The key of the login codes' HMACs: `LOGIN_CODE_KEY`, or one derived from `JWT_SECRET`
    /// with a label of its own, so that the two purposes never share a key.
    pub login_code_key: Secret,
    pub jwt_ttl: Duration,
    pub smtp_url: Option<ConnUrl>,
    pub mail_from: String,
    pub openai_api_key: Option<Secret>,
    pub openai_base_url: Option<String>,
    pub chat_model: String,
    pub chat_models_allowed: Vec<String>,
    pub embedding_provider: EmbeddingProvider,
    pub embedding_model: String,
    /// Vector size of `embedding_model` when it is not one the service knows.
    pub embedding_dimensions: Option<usize>,
    /// The local multilingual model that also embeds every chunk, for questions in another script
    /// than the document's (`CROSS_LANGUAGE_MODEL`; only with all-MiniLM-L6-v2, which reads Latin
    /// script alone): `multilingual-e5-small` by default there, `None` otherwise or with `none`.
    pub cross_language_model: Option<String>,
    /// The local model's files (`model.safetensors`, `tokenizer.json`, `config.json`).
    pub local_model_dir: Option<String>,
    /// CPU threads of the local embedder.
    pub embed_threads: usize,
    pub ingestion: IngestionConfig,
    pub chat: ChatConfig,
    pub cors_origins: Vec<String>,
    pub log_format: LogFormat,
    /// The reverse proxies whose `X-Forwarded-For` entries are believed.
    pub trusted_proxies: TrustedProxies,
    /// Longest wait for a request's headers once a connection has started sending one.
    pub header_read_timeout: Duration,
    /// Longest a write to a client may wait for the client to read before the connection is closed.
    pub write_stall_timeout: Duration,
    /// Bytes per second a client that keeps the server's writes waiting must read, on average: the
    /// writes of a connection may wait `write_stall_timeout` plus a second per this many bytes
    /// sent, in all.
    pub min_send_rate: u64,
    /// Largest JSON request body accepted.
    pub max_json_bytes: usize,
    pub auth: AuthLimits,
    pub rate_limits: RateLimits,
}

/// Uploads and the ingestion pipeline.
#[derive(Clone, Debug)]
pub struct IngestionConfig {
    /// Largest upload, in bytes.
    pub max_upload_bytes: usize,
    pub max_pages: usize,
    pub chunk_tokens: usize,
    pub chunk_overlap: usize,
    /// Ingestion workers inside `docuchat serve` (0: none; run `docuchat worker`).
    pub workers: usize,
    /// A job whose worker stops renewing its lease for this long is taken by another worker.
    pub lease: Duration,
    pub max_attempts: i32,
    /// Wall-clock budget for extracting one document.
    pub extract_budget: Duration,
    /// The program run as the PDF-reading child (`None`: this very binary).
    pub extract_program: Option<std::path::PathBuf>,
    /// Address-space limit of a PDF-reading child, in bytes.
    pub extract_memory_bytes: u64,
    /// Most text one document may yield, in bytes.
    pub extract_max_text_bytes: usize,
    /// Wall-clock deadline of an upload's inspection (open the PDF, count its pages).
    pub inspect_timeout: Duration,
    /// Uploads inspected at once per process.
    pub inspect_concurrency: usize,
}

/// The HNSW search breadth unless `RETRIEVAL_EF_SEARCH` says otherwise (measured at 1M chunks:
/// docs/BENCHMARKS.md).
pub const DEFAULT_EF_SEARCH: u32 = 200;

/// Retrieval and the chat socket.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// Tokens of context (passages and earlier turns) put into a prompt.
    pub context_tokens: usize,
    /// Passages retrieved per question.
    pub k: usize,
    /// Minimum cosine similarity of a passage to count as relevant (`None`: the embedding model's
    /// own floor, [`crate::embed::similarity_floor`]).
    pub min_similarity: Option<f32>,
    /// HNSW search breadth (`hnsw.ef_search`): recall against latency in big tenants.
    pub ef_search: u32,
    pub max_question_chars: usize,
    /// A socket with no frame from the client for this long is closed.
    pub idle_timeout: Duration,
    /// A client that takes no frames for this long, with frames waiting for it, is disconnected.
    pub write_timeout: Duration,
    /// When the server stops, how long an answer in flight may take to finish before it is cut.
    pub shutdown_grace: Duration,
    /// Longest wait for the model server to connect or to send the next piece of an answer.
    pub upstream_timeout: Duration,
    /// Most tokens a model may write in one answer (also what a quota holds for it).
    pub max_answer_tokens: usize,
}

/// Limits on the e-mail code login.
#[derive(Clone, Debug)]
pub struct AuthLimits {
    pub code_ttl: Duration,
    pub max_attempts: u32,
    pub resend_cooldown: Duration,
    /// Codes that may be requested per e-mail address per hour.
    pub codes_per_email_per_hour: u32,
    /// Codes that may be requested per client address per hour.
    pub codes_per_ip_per_hour: u32,
    /// Code checks that may be made per client address per hour.
    pub verifies_per_ip_per_hour: u32,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            code_ttl: Duration::from_secs(600),
            max_attempts: 5,
            resend_cooldown: Duration::from_secs(60),
            codes_per_email_per_hour: 5,
            codes_per_ip_per_hour: 30,
            verifies_per_ip_per_hour: 120,
        }
    }
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://docuchat:docuchat@127.0.0.1:54329/docuchat";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:63790";
/// Only for development; `ENVIRONMENT=production` refuses to start with it.
const DEV_JWT_SECRET: &str = "docuchat-development-secret-do-not-use-in-production";
pub const MIN_JWT_SECRET_LEN: usize = 32;

impl Config {
    /// Reads `.env` (if present) and then the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any name → value lookup (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());

        let environment = match var("ENVIRONMENT").as_deref() {
            None | Some("development") | Some("dev") => Environment::Development,
            Some("production") | Some("prod") => Environment::Production,
            Some(other) => bail!("ENVIRONMENT must be `development` or `production`, not `{other}`"),
        };

        let jwt_secret = match var("JWT_SECRET") {
            Some(secret) => {
                if environment == Environment::Production && secret.len() < MIN_JWT_SECRET_LEN {
                    bail!("JWT_SECRET must be at least {MIN_JWT_SECRET_LEN} bytes in production");
                }
                if environment == Environment::Production && secret == DEV_JWT_SECRET {
                    bail!("JWT_SECRET is the development key, which anyone can read: set a random one in production");
                }
                Secret::new(secret)
            }
            None if environment == Environment::Production => {
                bail!("JWT_SECRET is required in production (at least {MIN_JWT_SECRET_LEN} random bytes)")
            }
            None => Secret::new(DEV_JWT_SECRET),
        };

        let login_code_key = match var("LOGIN_CODE_KEY") {
            Some(key) => {
                if environment == Environment::Production && key.len() < MIN_JWT_SECRET_LEN {
                    bail!("LOGIN_CODE_KEY must be at least {MIN_JWT_SECRET_LEN} bytes in production");
                }
                if key == jwt_secret.expose() {
                    bail!("LOGIN_CODE_KEY must not be JWT_SECRET: leave it unset to derive one from it");
                }
                Secret::new(key)
            }
            None => derive_key(&jwt_secret, "docuchat/login-code-key/v1"),
        };

        let smtp_url = var("SMTP_URL").map(ConnUrl::new);
        if environment == Environment::Production && smtp_url.is_none() {
            bail!("SMTP_URL is required in production: verification codes may not go to the log");
        }

        let parse_u64 = |name: &str, default: u64| -> anyhow::Result<u64> {
            match var(name) {
                Some(v) => v.parse().with_context(|| format!("{name} must be a whole number, not `{v}`")),
                None => Ok(default),
            }
        };
        let list = |name: &str| -> Vec<String> {
            var(name)
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        };
        let flag = |name: &str| -> anyhow::Result<bool> {
            match var(name).as_deref() {
                None => Ok(false),
                Some("1" | "true" | "yes" | "on") => Ok(true),
                Some("0" | "false" | "no" | "off") => Ok(false),
                Some(other) => bail!("{name} must be true or false, not `{other}`"),
            }
        };

        let jwt_ttl = Duration::from_secs(parse_u64("JWT_TTL_SECONDS", 7 * 24 * 3600)?);
        if jwt_ttl.is_zero() {
            bail!("JWT_TTL_SECONDS must be positive");
        }

        let bind_addr = var("BIND_ADDR").unwrap_or_else(|| "127.0.0.1:8000".into());
        let bind_addr = bind_addr.parse().with_context(|| format!("BIND_ADDR must be host:port, not `{bind_addr}`"))?;
        let metrics_addr = match var("METRICS_ADDR").as_deref().map(str::trim) {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            Some("off") => None,
            Some(addr) => {
                Some(addr.parse().with_context(|| format!("METRICS_ADDR must be host:port or `off`, not `{addr}`"))?)
            }
        };

        let chat_model = var("CHAT_MODEL").unwrap_or_else(|| "gpt-4o-mini".into());
        let mut chat_models_allowed = list("CHAT_MODELS_ALLOWED");
        if !chat_models_allowed.contains(&chat_model) {
            chat_models_allowed.insert(0, chat_model.clone());
        }

        let embedding_provider = match var("EMBEDDING_PROVIDER").as_deref() {
            None | Some("local") => EmbeddingProvider::Local,
            Some("openai") => EmbeddingProvider::OpenAi,
            Some(other) => bail!("EMBEDDING_PROVIDER must be `local` or `openai`, not `{other}`"),
        };
        let embedding_model = var("EMBEDDING_MODEL").unwrap_or_else(|| match embedding_provider {
            EmbeddingProvider::Local => "all-MiniLM-L6-v2".into(),
            EmbeddingProvider::OpenAi => "text-embedding-3-small".into(),
        });

        // the second model answers for what the first cannot read: only all-MiniLM-L6-v2 reads a
        // single script, and only the local multilingual model is a second one
        let reads_one_script =
            embedding_provider == EmbeddingProvider::Local && embedding_model == crate::embed::local::MODEL_NAME;
        let cross_language_model = match var("CROSS_LANGUAGE_MODEL").as_deref() {
            Some("none") => None,
            None if reads_one_script => Some(crate::embed::local::E5_MODEL_NAME.to_owned()),
            None => None,
            Some(m) if m == crate::embed::local::E5_MODEL_NAME && reads_one_script => Some(m.to_owned()),
            Some(m) if m == crate::embed::local::E5_MODEL_NAME => bail!(
                "CROSS_LANGUAGE_MODEL is for the local all-MiniLM-L6-v2, which reads Latin script only; \
                 `{embedding_model}` needs none (set `none`)"
            ),
            Some(other) => bail!("CROSS_LANGUAGE_MODEL must be `multilingual-e5-small` or `none`, not `{other}`"),
        };

        let log_format = match var("LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("LOG_FORMAT must be `text` or `json`, not `{other}`"),
        };

        let database_max_connections = parse_u64("DATABASE_MAX_CONNECTIONS", 10)?;
        let database_max_connections = u32::try_from(database_max_connections)
            .ok()
            .filter(|n| *n > 0)
            .context("DATABASE_MAX_CONNECTIONS must be between 1 and 2^32")?;

        let ingestion = IngestionConfig {
            max_upload_bytes: usize::try_from(parse_u64("MAX_UPLOAD_BYTES", 25 * 1024 * 1024)?)
                .context("MAX_UPLOAD_BYTES is too large")?,
            max_pages: parse_u64("MAX_PAGES", 500)? as usize,
            chunk_tokens: parse_u64("CHUNK_TOKENS", 400)?.max(16) as usize,
            chunk_overlap: parse_u64("CHUNK_OVERLAP", 40)? as usize,
            workers: parse_u64("INGEST_WORKERS", 2)? as usize,
            lease: Duration::from_secs(parse_u64("INGEST_LEASE_SECONDS", 60)?.max(5)),
            max_attempts: parse_u64("INGEST_MAX_ATTEMPTS", 5)?.clamp(1, 100) as i32,
            extract_budget: Duration::from_secs(parse_u64("EXTRACT_TIMEOUT_SECONDS", 120)?.max(1)),
            extract_program: var("EXTRACT_PROGRAM").map(Into::into),
            extract_memory_bytes: parse_u64("EXTRACT_MEMORY_MB", 1024)?.clamp(64, 1 << 20) << 20,
            extract_max_text_bytes: (parse_u64("EXTRACT_MAX_TEXT_MB", 64)?.clamp(1, 4096) << 20) as usize,
            inspect_timeout: Duration::from_secs(parse_u64("INSPECT_TIMEOUT_SECONDS", 20)?.max(1)),
            inspect_concurrency: parse_u64("INSPECT_CONCURRENCY", 2)?.clamp(1, 64) as usize,
        };
        let min_similarity = match var("RETRIEVAL_MIN_SIMILARITY") {
            Some(v) => Some(
                v.parse::<f32>()
                    .ok()
                    .filter(|s| (-1.0..=1.0).contains(s))
                    .with_context(|| format!("RETRIEVAL_MIN_SIMILARITY must be a number from -1 to 1, not `{v}`"))?,
            ),
            // the embedding model's own (see `embed::similarity_floor`)
            None => None,
        };
        let chat = ChatConfig {
            context_tokens: parse_u64("CHAT_CONTEXT_TOKENS", 3000)?.clamp(200, 100_000) as usize,
            k: parse_u64("RETRIEVAL_K", 6)?.clamp(1, 50) as usize,
            min_similarity,
            ef_search: parse_u64("RETRIEVAL_EF_SEARCH", u64::from(DEFAULT_EF_SEARCH))?.clamp(10, 1000) as u32,
            max_question_chars: parse_u64("MAX_QUESTION_CHARS", 4000)?.clamp(1, 100_000) as usize,
            idle_timeout: Duration::from_secs(parse_u64("WS_IDLE_SECONDS", 300)?.max(5)),
            write_timeout: Duration::from_secs(parse_u64("WS_WRITE_TIMEOUT_SECONDS", 30)?.clamp(1, 3600)),
            shutdown_grace: Duration::from_secs(parse_u64("SHUTDOWN_GRACE_SECONDS", 10)?.min(3600)),
            upstream_timeout: Duration::from_millis(parse_u64("CHAT_TIMEOUT_MS", 60_000)?.max(100)),
            max_answer_tokens: parse_u64("CHAT_MAX_ANSWER_TOKENS", 1024)?.clamp(16, 100_000) as usize,
        };
        let per_minute = |name: &str, default: u32| -> anyhow::Result<u32> {
            Ok(parse_u64(name, u64::from(default))?.min(1_000_000) as u32)
        };
        let defaults = RateLimits::default();
        let rate_limits = RateLimits {
            auth_per_minute: per_minute("RATE_LIMIT_AUTH_PER_MINUTE", defaults.auth_per_minute)?,
            chat_per_minute: per_minute("RATE_LIMIT_CHAT_PER_MINUTE", defaults.chat_per_minute)?,
            upload_per_minute: per_minute("RATE_LIMIT_UPLOAD_PER_MINUTE", defaults.upload_per_minute)?,
        };
        let embedding_dimensions =
            match var("EMBEDDING_DIMENSIONS") {
                Some(v) => Some(v.parse::<usize>().ok().filter(|d| (1..=16_000).contains(d)).with_context(|| {
                    format!("EMBEDDING_DIMENSIONS must be a whole number from 1 to 16000, not `{v}`")
                })?),
                None => None,
            };

        Ok(Self {
            environment,
            database_url: ConnUrl::new(var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into())),
            database_migration_url: var("DATABASE_MIGRATION_URL").map(ConnUrl::new),
            database_max_connections,
            redis_url: ConnUrl::new(var("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.into())),
            redis_key_prefix: var("REDIS_KEY_PREFIX").unwrap_or_else(|| "docuchat:".into()),
            bind_addr,
            metrics_addr,
            jwt_secret,
            login_code_key,
            jwt_ttl,
            smtp_url,
            mail_from: var("MAIL_FROM").unwrap_or_else(|| "DocuChat <no-reply@docuchat.localhost>".into()),
            openai_api_key: var("OPENAI_API_KEY").map(Secret::new),
            openai_base_url: var("OPENAI_BASE_URL"),
            chat_model,
            chat_models_allowed,
            embedding_provider,
            embedding_model,
            embedding_dimensions,
            cross_language_model,
            local_model_dir: var("LOCAL_MODEL_DIR"),
            embed_threads: parse_u64(
                "EMBED_THREADS",
                std::thread::available_parallelism().map_or(2, |n| n.get() as u64),
            )?
            .clamp(1, 256) as usize,
            ingestion,
            chat,
            cors_origins: list("CORS_ORIGINS"),
            log_format,
            trusted_proxies: {
                if flag("TRUST_FORWARDED_FOR")? {
                    // it believed the left-most entry, which the client writes
                    bail!(
                        "TRUST_FORWARDED_FOR is replaced by TRUSTED_PROXIES: the number of proxies in front of the \
                         service (`1`) or their addresses (`10.0.0.0/8,127.0.0.1`)"
                    );
                }
                TrustedProxies::parse(&var("TRUSTED_PROXIES").unwrap_or_default())?
            },
            header_read_timeout: Duration::from_secs(parse_u64("HTTP_HEADER_TIMEOUT_SECONDS", 30)?.clamp(1, 3600)),
            write_stall_timeout: Duration::from_secs(parse_u64("HTTP_WRITE_STALL_SECONDS", 60)?.clamp(1, 3600)),
            min_send_rate: parse_u64("HTTP_MIN_SEND_RATE", 16 * 1024)?.clamp(1, 1 << 30),
            max_json_bytes: usize::try_from(parse_u64("MAX_JSON_BYTES", 64 * 1024)?)
                .context("MAX_JSON_BYTES is too large")?,
            auth: {
                // a company behind one NAT address logs in more often than a person does: the caps
                // per client address are the operator's (the per-mailbox caps protect a mailbox
                // and stay fixed)
                let defaults = AuthLimits::default();
                let per_hour = |name: &str, default: u32| -> anyhow::Result<u32> {
                    Ok(parse_u64(name, u64::from(default))?.clamp(1, 1_000_000) as u32)
                };
                AuthLimits {
                    codes_per_ip_per_hour: per_hour(
                        "LOGIN_CODES_PER_ADDRESS_PER_HOUR",
                        defaults.codes_per_ip_per_hour,
                    )?,
                    verifies_per_ip_per_hour: per_hour(
                        "LOGIN_CHECKS_PER_ADDRESS_PER_HOUR",
                        defaults.verifies_per_ip_per_hour,
                    )?,
                    ..defaults
                }
            },
            api_keys_per_tenant: parse_u64("API_KEYS_PER_TENANT", 100)?.clamp(1, 100_000) as i64,
            members_per_tenant: parse_u64("MEMBERS_PER_TENANT", 10_000)?.clamp(1, 100_000_000) as i64,
            sockets_per_user: parse_u64("WS_MAX_PER_USER", 20)?.clamp(1, 1_000_000) as usize,
            sockets_per_tenant: parse_u64("WS_MAX_PER_TENANT", 20_000)?.clamp(1, 10_000_000) as usize,
            rate_limits,
        })
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }
}

/// A key for one purpose, from a secret and the purpose's label (HMAC-SHA256 as a PRF, the
/// extract-free half of HKDF: the secret is already a key).
fn derive_key(secret: &Secret, label: &str) -> Secret {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key length");
    mac.update(label.as_bytes());
    Secret::new(hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests;
