//! The `docuchat` command: serve, migrate, manage tenants.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use docuchat::{
    app::{self, AppState},
    auth::{email::Email, jwt::Role, users},
    config::Config,
    db,
    ingestion::sandbox,
    telemetry, tenants,
    usage::quota,
};
use tokio::net::TcpListener;

/// mimalloc: the server allocates many small short-lived buffers (frames, rows, JSON) from every
/// worker thread, where glibc's allocator spent a sixth of the server's CPU and contended on its
/// arena locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "docuchat", version, about = "Multi-tenant document chat over your PDFs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP and WebSocket server.
    Serve {
        /// Apply pending database migrations before serving.
        #[arg(long)]
        migrate: bool,
    },
    /// Run ingestion workers only (no HTTP server), until SIGTERM.
    Worker {
        /// How many documents to work on at once (default: INGEST_WORKERS).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Queue for ingestion again every document not embedded with the configured model
    /// (after changing EMBEDDING_PROVIDER or EMBEDDING_MODEL); workers then re-embed them.
    Reindex {
        /// Only this tenant (id or slug).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Print the API description (OpenAPI 3.1, JSON), as `GET /openapi.json` serves it.
    Openapi,
    /// Read one untrusted PDF from standard input (run by the service itself, in a child process
    /// with hard limits).
    #[command(name = "pdf-child", hide = true)]
    PdfChild { mode: String, max_pages: usize, budget_ms: u64, memory_bytes: u64 },
    /// The members of a tenant: add (invite) one, list them (JSON), or remove one.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print it as JSON.
    Create {
        #[arg(long)]
        name: String,
        /// Lower-case letters, digits and hyphens; clients may send it as X-Tenant-ID.
        #[arg(long)]
        slug: String,
        /// This address becomes the tenant's admin on first login.
        #[arg(long)]
        admin_email: String,
        /// Who may log in: `invite` (the admin address and the members admins add), `domain`
        /// (also any address in an --allowed-domain) or `open` (anyone; for demos).
        #[arg(long, default_value = "invite", value_parser = ["invite", "domain", "open"])]
        signup: String,
        /// A domain whose addresses may log in with `--signup domain` (repeat for more).
        #[arg(long = "allowed-domain")]
        allowed_domains: Vec<String>,
    },
    /// List tenants as JSON.
    List,
    /// Show a tenant's token quotas (as JSON), or set or remove one.
    ///
    /// `docuchat tenant quota --tenant acme --period day --tokens 100000` limits the tenant;
    /// add `--per-user` for a limit every user has on their own, or `--user EMAIL` for one user;
    /// `--remove` instead of `--tokens` removes the quota.
    Quota {
        /// The tenant (id or slug).
        #[arg(long)]
        tenant: String,
        /// `day` (UTC) or `month` (calendar month, UTC).
        #[arg(long, value_parser = ["day", "month"])]
        period: Option<String>,
        /// The token limit to set.
        #[arg(long, conflicts_with = "remove", requires = "period")]
        tokens: Option<i64>,
        /// Remove the quota instead.
        #[arg(long, requires = "period")]
        remove: bool,
        /// A limit for each user of the tenant (instead of the tenant as a whole).
        #[arg(long, conflicts_with = "user")]
        per_user: bool,
        /// A limit for this user only (overrides --per-user's limit for them).
        #[arg(long)]
        user: Option<String>,
    },
    /// Create the `demo` tenant if it is missing and print how to log in. The demo tenant is
    /// `open`: any address may log in to it.
    EnsureDemo {
        #[arg(long, default_value = "admin@demo.example")]
        admin_email: String,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Add an address to the tenant; it may log in from then on.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "member", value_parser = ["member", "admin"])]
        role: String,
    },
    /// List the tenant's members as JSON.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Remove a member (their tokens stop working at once).
    Remove {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::PdfChild { mode, max_pages, budget_ms, memory_bytes } = &cli.command {
        // no configuration, no logs, no network, no async runtime: bytes in, JSON lines out
        let budget = std::time::Duration::from_millis(*budget_ms);
        let code = sandbox::child_main(mode, *max_pages, budget, *memory_bytes);
        return ExitCode::from(code as u8);
    }
    if let Command::Openapi = &cli.command {
        // needs no configuration: the description is the binary's
        println!("{}", serde_json::to_string_pretty(&docuchat::http::openapi::document()).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(async_main(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn async_main(cli: Cli) -> ExitCode {
    docuchat::install_crypto_provider();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    match run(cli, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { migrate } => {
            let listener = TcpListener::bind(config.bind_addr)
                .await
                .with_context(|| format!("cannot listen on {}", config.bind_addr))?;
            if migrate {
                // as the tables' owner, before the service's pool, which works as a role the
                // migrations create
                let owner = db::connect_owner(&config).await?;
                db::migrate(&owner).await?;
                owner.close().await;
            }
            let metrics = metrics_listener(&config).await?;
            let state = AppState::connect(config).await?;
            serve_metrics(metrics, &state);
            app::serve(listener, state, app::shutdown_signal()).await
        }
        Command::Worker { concurrency } => {
            let n = concurrency.unwrap_or(config.ingestion.workers).max(1);
            let metrics = metrics_listener(&config).await?;
            let state = AppState::connect(config).await?;
            serve_metrics(metrics, &state);
            let workers = state.workers()?;
            tracing::info!(workers = n, "ingestion workers starting");
            let stop = tokio_util::sync::CancellationToken::new();
            let signal = stop.clone();
            tokio::spawn(async move {
                app::shutdown_signal().await;
                signal.cancel();
            });
            workers.run(n, stop).await;
            Ok(())
        }
        Command::Reindex { tenant } => {
            let pool = db::connect_owner(&config).await?;
            let tenant_id = match tenant {
                Some(t) => {
                    Some(tenants::resolve(&pool, &t).await?.ok_or_else(|| anyhow::anyhow!("no tenant `{t}`"))?.id)
                }
                None => None,
            };
            let n = docuchat::documents::requeue_for_model(
                &pool,
                &config.embedding_model,
                config.cross_language_model.as_deref(),
                tenant_id,
                config.ingestion.max_attempts,
            )
            .await?;
            match &config.cross_language_model {
                Some(cross) => eprintln!(
                    "{n} documents queued for re-embedding with {} (their chunks) or {cross} (their second vectors)",
                    config.embedding_model
                ),
                None => eprintln!("{n} documents queued for re-embedding with {}", config.embedding_model),
            }
            Ok(())
        }
        Command::Migrate => {
            let pool = db::connect_owner(&config).await?;
            db::migrate(&pool).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Tenant { command } => tenant(command, &config).await,
        Command::Member { command } => member(command, &config).await,
        Command::PdfChild { .. } | Command::Openapi => unreachable!("handled before the configuration is read"),
    }
}

/// The metrics' own listener, unless `METRICS_ADDR=off`.
async fn metrics_listener(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = config.metrics_addr else { return Ok(None) };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the metrics (METRICS_ADDR; `off` turns them off)"))?;
    Ok(Some(listener))
}

/// Serves the metrics for as long as the process runs (bound before connecting, so that a taken
/// port fails the start).
fn serve_metrics(listener: Option<TcpListener>, state: &AppState) {
    if let Some(listener) = listener {
        tokio::spawn(app::serve_metrics(listener, state.clone(), std::future::pending()));
    }
}

/// The command line is the operator's: it works as the tables' owner (see `db::connect_owner`).
async fn tenant(command: TenantCommand, config: &Config) -> anyhow::Result<()> {
    let pool = db::connect_owner(config).await?;
    match command {
        TenantCommand::Create { name, slug, admin_email, signup, allowed_domains } => {
            let email = Email::parse(&admin_email).map_err(|e| anyhow::anyhow!("--admin-email: {e}"))?;
            let signup = tenants::Signup::parse(&signup).context("--signup")?;
            let domains = tenants::clean_domains(&allowed_domains)?;
            if signup == tenants::Signup::Domain && domains.is_empty() {
                anyhow::bail!("--signup domain needs at least one --allowed-domain");
            }
            let mut tx = pool.begin().await?;
            let tenant = tenants::create(&mut *tx, &name, &slug, &email).await?;
            let access = tenants::set_access(&mut *tx, tenant.id, signup, &domains).await?;
            tx.commit().await?;
            let mut shown = serde_json::to_value(&tenant)?;
            shown["signup"] = serde_json::to_value(access.signup)?;
            shown["allowed_domains"] = serde_json::to_value(&access.allowed_domains)?;
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        TenantCommand::List => {
            println!("{}", serde_json::to_string_pretty(&tenants::list(&pool).await?)?);
        }
        TenantCommand::Quota { tenant, period, tokens, remove, per_user, user } => {
            let found = tenants::resolve(&pool, &tenant).await?.with_context(|| format!("no tenant `{tenant}`"))?;
            if let Some(period) = period {
                if tokens.is_none() && !remove {
                    anyhow::bail!("give --tokens N to set the quota, or --remove");
                }
                let period = if period == "day" { quota::Period::Day } else { quota::Period::Month };
                let user_id = match &user {
                    None => None,
                    Some(address) => {
                        let email = Email::parse(address).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
                        let user = users::find_by_email(&pool, found.id, &email).await?;
                        Some(user.map(|u| u.id).with_context(|| {
                            format!(
                                "no user {address} in tenant `{}` (users exist after their first login)",
                                found.slug
                            )
                        })?)
                    }
                };
                let scope =
                    if per_user || user_id.is_some() { quota::QuotaScope::User } else { quota::QuotaScope::Tenant };
                let changed = quota::set(
                    &pool,
                    found.id,
                    scope,
                    user_id,
                    period,
                    if remove { None } else { tokens },
                    quota::SetBy::Operator,
                )
                .await?;
                if remove && !changed {
                    anyhow::bail!("there is no such quota");
                }
            }
            println!("{}", serde_json::to_string_pretty(&quota::list(&pool, found.id).await?)?);
        }
        TenantCommand::EnsureDemo { admin_email } => {
            let email = Email::parse(&admin_email).map_err(|e| anyhow::anyhow!("--admin-email: {e}"))?;
            let tenant = match tenants::find_by_slug(&pool, "demo").await? {
                Some(t) => t,
                None => tenants::create(&pool, "Demo", "demo", &email).await?,
            };
            // the demo tenant is open, also one made before tenants had a login policy
            tenants::set_access(&pool, tenant.id, tenants::Signup::Open, &[]).await?;
            let base = format!("http://{}", config.bind_addr);
            eprintln!(
                "\nDemo tenant `{slug}` (id {id}), admin {admin}; it is open: any address may log in.\n\
                 \nIn a browser: {base}/app/?tenant={slug}  (log in as {admin}; {where_code})\n\
                 \nWith curl:\n\
                 \n  curl -s -X POST {base}/v1/auth/request-code -H 'X-Tenant-ID: {slug}' \\\n    \
                 -H 'Content-Type: application/json' -d '{{\"email\":\"{admin}\"}}'\n\
                 \n  # {where_code}\n\
                 \n  curl -s -X POST {base}/v1/auth/verify-code -H 'X-Tenant-ID: {slug}' \\\n    \
                 -H 'Content-Type: application/json' -d '{{\"email\":\"{admin}\",\"code\":\"123456\"}}'\n\
                 \n  curl -s {base}/v1/me -H 'X-Tenant-ID: {slug}' -H 'Authorization: Bearer <access_token>'\n",
                slug = tenant.slug,
                id = tenant.id,
                admin = tenant.admin_email,
                where_code = if config.smtp_url.is_some() {
                    "the code arrives by e-mail"
                } else {
                    "no SMTP_URL: the code is printed in this server's log (\"login code ...\")"
                },
            );
        }
    }
    Ok(())
}

async fn member(command: MemberCommand, config: &Config) -> anyhow::Result<()> {
    let pool = db::connect_owner(config).await?;
    let find = |t: String| {
        let pool = pool.clone();
        async move { tenants::resolve(&pool, &t).await?.with_context(|| format!("no tenant `{t}`")) }
    };
    match command {
        MemberCommand::Add { tenant, email, role } => {
            let tenant = find(tenant).await?;
            let email = Email::parse(&email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
            let role = if role == "admin" { Role::Admin } else { Role::Member };
            let member = users::invite(&mut *pool.acquire().await?, tenant.id, &email, role, i64::MAX).await?;
            println!("{}", serde_json::to_string_pretty(&member)?);
        }
        MemberCommand::List { tenant } => {
            let tenant = find(tenant).await?;
            let members = users::list_members(&pool, tenant.id, None, i64::MAX).await?;
            println!("{}", serde_json::to_string_pretty(&members)?);
        }
        MemberCommand::Remove { tenant, email } => {
            let tenant = find(tenant).await?;
            let email = Email::parse(&email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
            let user = users::find_by_email(&pool, tenant.id, &email)
                .await?
                .with_context(|| format!("{email} is not a member of `{}`", tenant.slug))?;
            users::remove(&pool, tenant.id, user.id).await?;
            eprintln!("{email} removed from `{}`", tenant.slug);
        }
    }
    Ok(())
}
