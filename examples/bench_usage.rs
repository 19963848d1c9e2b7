//! `GET /v1/usage` throughput and latency against a `docuchat serve` process (release build), with
//! a ledger of 1M rows (by default) over 100 tenants and the last 30 days.
//!
//!     cargo build --release --bin docuchat
//!     eval "$(infra/dev.sh env)"
//!     cargo run --release --example bench_usage -- [ledger rows] [seconds per scenario] [connections]
//!
//! The load comes from this process over keep-alive HTTP/1.1 connections (a minimal client on raw
//! sockets, so the generator takes little of the 2 cores). Scenarios: admins reading their
//! tenant's 24 h / 7 d totals, members reading their own, and API keys asking for 30 days by day —
//! over the quiet tenants, and over one active tenant that writes `ACTIVE_ROWS_PER_HOUR` ledger rows
//! an hour (20,000 by default) in the current hour (full up to now) and in the hours around each
//! window's start (24 hours and 7 days ago), where the edges of its windows fall.
//! Works in a database of its own, created and dropped here.

#[path = "support/mod.rs"]
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use docuchat::{
    auth::jwt::{JwtKeys, Role},
    config::Secret,
};
use sqlx::postgres::PgPoolOptions;
use support::percentile;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const SECRET: &str = "bench-secret-that-is-long-enough-0123456789";
const TENANTS: usize = 100;
const USERS_PER_TENANT: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: u64| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (rows, seconds, connections) = (arg(1, 1_000_000), arg(2, 10), arg(3, 32) as usize);
    support::with_scratch_database(
        |url| async move { run(&url, rows, Duration::from_secs(seconds), connections).await },
    )
    .await
}

struct Caller {
    slug: String,
    bearer: String,
}

async fn run(url: &str, rows: u64, duration: Duration, connections: usize) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    docuchat::db::migrate(&pool).await?;

    // tenants, their users (user 0 is the admin), one usage:read key each
    let started = Instant::now();
    sqlx::query(
        "insert into tenants (id, name, slug, admin_email)
         select gen_random_uuid(), 'Tenant ' || t, 'tenant-' || t, 'u0@t' || t || '.example'
           from generate_series(0, $1 - 1) t",
    )
    .bind(TENANTS as i32)
    .execute(&pool)
    .await?;
    sqlx::query(
        "insert into users (id, tenant_id, email, role)
         select gen_random_uuid(), t.id, 'u' || u || '@' || split_part(t.admin_email, '@', 2),
                case when u = 0 then 'admin' else 'member' end
           from tenants t, generate_series(0, $1 - 1) u",
    )
    .bind(USERS_PER_TENANT as i32)
    .execute(&pool)
    .await?;
    // the ledger: each row a random user of a random tenant, at a random time in the last 30
    // days, one of three kinds and three models; written in batches, as it would be (the rollup
    // trigger runs per statement)
    let batch = 100_000u64;
    let mut written = 0;
    while written < rows {
        let n = batch.min(rows - written);
        sqlx::query(
            "with u as (select id, tenant_id, row_number() over () - 1 as i from users),
                  r as (select floor(random() * (select count(*) from users))::bigint as i,
                               now() - random() * interval '30 days' as at,
                               (array['embedding', 'prompt', 'completion'])[1 + floor(random() * 3)::int] as kind,
                               (array['gpt-4o-mini', 'gpt-4o', 'all-MiniLM-L6-v2'])[1 + floor(random() * 3)::int] as model,
                               1 + floor(random() * 2000)::bigint as tokens
                          from generate_series(1, $1))
             insert into usage_events (tenant_id, user_id, kind, model, tokens, created_at)
             select u.tenant_id, u.id, r.kind, r.model, r.tokens, r.at from r join u using (i)",
        )
        .bind(n as i64)
        .execute(&pool)
        .await?;
        written += n;
    }
    // the active tenant (the last one): ACTIVE_ROWS_PER_HOUR rows an hour over its users — the
    // current hour holds that many up to now, whatever the minute — and as many an hour in the two
    // hours around 24 h and 7 days ago
    let per_hour: i64 = std::env::var("ACTIVE_ROWS_PER_HOUR").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    for (from, span, hours) in [
        ("date_trunc('hour', now())", "now() - date_trunc('hour', now())", 1),
        ("now() - interval '25 hours'", "interval '2 hours'", 2),
        ("now() - interval '7 days 1 hour'", "interval '2 hours'", 2),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "with u as (select id, row_number() over () - 1 as i from users
                         where tenant_id = (select id from tenants where slug = 'tenant-{last}')),
                  r as (select floor(random() * {USERS_PER_TENANT})::bigint as i,
                               {from} + random() * ({span}) as at,
                               (array['embedding', 'prompt', 'completion'])[1 + floor(random() * 3)::int] as kind,
                               (array['gpt-4o-mini', 'gpt-4o', 'all-MiniLM-L6-v2'])[1 + floor(random() * 3)::int] as model,
                               1 + floor(random() * 2000)::bigint as tokens
                          from generate_series(1, $1 * {hours}))
             insert into usage_events (tenant_id, user_id, kind, model, tokens, created_at)
             select (select id from tenants where slug = 'tenant-{last}'), u.id, r.kind, r.model, r.tokens, r.at
               from r join u using (i)",
            last = TENANTS - 1,
        )))
        .bind(per_hour)
        .execute(&pool)
        .await?;
    }
    // the whole database: the ledger, every rollup, the users and keys
    sqlx::query("vacuum analyze").execute(&pool).await?;
    let rollup: i64 = sqlx::query_scalar("select count(*) from usage_hourly").fetch_one(&pool).await?;
    let busy: i64 = sqlx::query_scalar(
        "select count(*) from usage_events e join tenants t on t.id = e.tenant_id
          where t.slug = $1 and e.created_at >= date_trunc('hour', now())",
    )
    .bind(format!("tenant-{}", TENANTS - 1))
    .fetch_one(&pool)
    .await?;
    println!(
        "ledger: {rows} rows over {TENANTS} tenants × {USERS_PER_TENANT} users, 30 days ({rollup} rollup rows), \
         and the active tenant at {per_hour} rows an hour ({busy} in the current hour); loaded in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let keys = JwtKeys::new(&Secret::new(SECRET), Duration::from_secs(3600));
    let users: Vec<(Uuid, Uuid, String, String)> = sqlx::query_as(
        "select u.id, u.tenant_id, t.slug, u.role from users u join tenants t on t.id = u.tenant_id order by t.slug, u.email",
    )
    .fetch_all(&pool)
    .await?;
    let active = format!("tenant-{}", TENANTS - 1);
    let (mut admins, mut members, mut active_admins, mut active_members) = (vec![], vec![], vec![], vec![]);
    for (id, tenant, slug, role) in &users {
        let role = if role == "admin" { Role::Admin } else { Role::Member };
        let caller = Caller { slug: slug.clone(), bearer: keys.issue(*id, *tenant, role, 0)? };
        match (role == Role::Admin, *slug == active) {
            (true, false) => admins.push(caller),
            (false, false) => members.push(caller),
            (true, true) => active_admins.push(caller),
            (false, true) => active_members.push(caller),
        }
    }
    let (mut api_keys, mut active_keys) = (Vec::new(), Vec::new());
    for (_, tenant, slug, role) in &users {
        if role != "admin" {
            continue;
        }
        let secret = format!("dck_{}", Uuid::new_v4().simple().to_string().repeat(2));
        sqlx::query(
            "insert into api_keys (id, tenant_id, name, prefix, secret_hash, scopes)
             values ($1, $2, 'billing', $3, sha256(convert_to($4, 'UTF8')), array['usage:read'])",
        )
        .bind(Uuid::now_v7())
        .bind(tenant)
        .bind(&secret[..10])
        .bind(&secret)
        .execute(&pool)
        .await?;
        let caller = Caller { slug: slug.clone(), bearer: secret };
        if *slug == active { active_keys.push(caller) } else { api_keys.push(caller) }
    }

    let server = support::Server::start(&[
        ("DATABASE_URL", url.to_owned()),
        ("DATABASE_MAX_CONNECTIONS", std::env::var("BENCH_DB_CONNECTIONS").unwrap_or_else(|_| "8".into())),
        ("JWT_SECRET", SECRET.to_owned()),
    ])
    .await?;
    let port = server.port;

    let scenarios: [(&str, &[Caller], &str); 6] = [
        ("admins, 24 h + 7 d totals", &admins, "/v1/usage"),
        ("members, their own 24 h + 7 d", &members, "/v1/usage"),
        ("API keys, 30 days by day", &api_keys, "/v1/usage?group_by=day&from=THIRTY_DAYS_AGO"),
        ("active: admin, 24 h + 7 d", &active_admins, "/v1/usage"),
        ("active: members, their own", &active_members, "/v1/usage"),
        ("active: API key, 30 days by day", &active_keys, "/v1/usage?group_by=day&from=THIRTY_DAYS_AGO"),
    ];
    let thirty_days_ago = (chrono::Utc::now() - chrono::Duration::days(30)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    for (label, callers, path) in scenarios {
        let path = path.replace("THIRTY_DAYS_AGO", &thirty_days_ago);
        let requests: Arc<Vec<Vec<u8>>> = Arc::new(
            callers
                .iter()
                .map(|c| {
                    format!(
                        "GET {path} HTTP/1.1\r\nHost: bench\r\nX-Tenant-ID: {}\r\nAuthorization: Bearer {}\r\n\r\n",
                        c.slug, c.bearer
                    )
                    .into_bytes()
                })
                .collect(),
        );
        // warm up, then measure
        load(port, requests.clone(), connections, Duration::from_secs(1)).await?;
        let (latencies, errors, elapsed) = load(port, requests, connections, duration).await?;
        let mut ms: Vec<f64> = latencies.iter().map(|d| d * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "{label:<32} {connections} connections: {:>6.0} requests/s, p50 {:.2} ms, p99 {:.2} ms ({} requests, {errors} errors)",
            ms.len() as f64 / elapsed,
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms.len(),
        );
    }
    Ok(())
}

/// Runs `connections` keep-alive connections, each sending the next request as soon as the last
/// answer is read, for `duration`. Returns the latencies (s), the non-200 answers, the time taken.
async fn load(
    port: u16,
    requests: Arc<Vec<Vec<u8>>>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(Vec<f64>, usize, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (requests, stop) = (requests.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let mut buf = vec![0u8; 64 * 1024];
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let request = &requests[i % requests.len()];
                i += connections;
                let sent = Instant::now();
                stream.write_all(request).await?;
                let status = read_response(&mut stream, &mut buf).await?;
                latencies.push(sent.elapsed().as_secs_f64());
                if status != 200 {
                    errors += 1;
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        all.extend(l);
        errors += e;
    }
    Ok((all, errors, started.elapsed().as_secs_f64()))
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut [u8]) -> anyhow::Result<u16> {
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        len += n;
        let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = std::str::from_utf8(&buf[..end])?;
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body_len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let want = end + 4 + body_len;
        anyhow::ensure!(want <= buf.len(), "response too large");
        while len < want {
            let n = stream.read(&mut buf[len..]).await?;
            anyhow::ensure!(n > 0, "the server closed the connection");
            len += n;
        }
        return Ok(status);
    }
}
