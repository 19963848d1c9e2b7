//! The second wall: row-level security. Statements run as the service's role with no tenant
//! condition at all see, change and remove only the rows of the tenant their transaction works
//! for; with no tenant set they see nothing; and no table of tenant rows is without the wall.

mod common;

use std::collections::BTreeMap;

use common::{
    TestApp,
    ws::{ask, connect},
};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Every table of the public schema that holds tenant rows, with the column naming the tenant.
async fn tenant_tables(db: &PgPool) -> Vec<(String, String)> {
    let mut tables: Vec<(String, String)> = sqlx::query_as(
        "select c.table_name::text, c.column_name::text from information_schema.columns c
           join information_schema.tables t using (table_schema, table_name)
          where c.table_schema = 'public' and c.column_name = 'tenant_id' and t.table_type = 'BASE TABLE'
          order by 1",
    )
    .fetch_all(db)
    .await
    .unwrap();
    tables.push(("tenants".into(), "id".into()));
    tables
}

/// Rows per tenant table, as the owner sees them.
async fn rows_of(db: &PgPool, tenant: Uuid) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (table, column) in tenant_tables(db).await {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table} where {column} = $1")))
                .bind(tenant)
                .fetch_one(db)
                .await
                .unwrap();
        out.insert(table, n);
    }
    out
}

/// Two tenants with rows in every tenant table: documents (one ready, one still queued), chunks,
/// a chat session with its message, the ledger and its rollups, a quota and a hold, an API key, a
/// revoked token.
async fn two_busy_tenants(app: &TestApp) -> (Uuid, Uuid) {
    let mut ids = Vec::new();
    for slug in ["acme", "globex"] {
        let admin_email = format!("boss@{slug}.example");
        let admin = app.tenant_with_admin(slug, &admin_email).await;
        app.upload_ready(slug, &admin, "r.pdf", "english-2page.pdf").await;
        let mut ws = connect(app, &admin).await;
        let frames = ask(&mut ws, None, "What are the standard packages supplied with R?").await;
        assert_eq!(frames.last().unwrap()["type"], "done", "{frames:?}");
        let key = app
            .client
            .post(app.url("/v1/api-keys"))
            .header("X-Tenant-ID", slug)
            .bearer_auth(&admin)
            .json(&json!({"name": "billing", "scopes": ["usage:read"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(key.status(), StatusCode::CREATED);
        let quota = app
            .client
            .put(app.url("/v1/quotas"))
            .header("X-Tenant-ID", slug)
            .bearer_auth(&admin)
            .json(&json!({"scope": "tenant", "period": "month", "token_limit": 10_000_000}))
            .send()
            .await
            .unwrap();
        assert_eq!(quota.status(), StatusCode::OK);
        let other = app.login(slug, &admin_email).await;
        let out = app
            .client
            .post(app.url("/v1/auth/logout"))
            .header("X-Tenant-ID", slug)
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), StatusCode::NO_CONTENT);
        let tenant: Uuid =
            sqlx::query_scalar("select id from tenants where slug = $1").bind(slug).fetch_one(&app.db).await.unwrap();
        sqlx::query(
            "insert into quota_holds (id, tenant_id, user_id, tokens, expires_at)
             values ($1, $2, null, 10, now() + interval '1 hour')",
        )
        .bind(Uuid::now_v7())
        .bind(tenant)
        .execute(&app.db)
        .await
        .unwrap();
        ids.push(tenant);
    }
    // a document each that stays queued (its job waiting)
    for slug in ["acme", "globex"] {
        let admin = app.login(slug, &format!("boss@{slug}.example")).await;
        let resp = app.upload(slug, &admin, "queued.pdf", common::fixture("persian.pdf")).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    }
    for tenant in &ids {
        for (table, n) in rows_of(&app.db, *tenant).await {
            assert!(n > 0, "the test needs rows of every tenant in {table}");
        }
    }
    (ids[0], ids[1])
}

#[sqlx::test]
async fn every_table_of_tenant_rows_is_walled_and_the_service_bypasses_nothing(db: PgPool) {
    let app = TestApp::spawn(db).await;
    let walled: Vec<(String, bool, bool)> = sqlx::query_as(
        "select relname::text, relrowsecurity, relforcerowsecurity from pg_class
          where relnamespace = 'public'::regnamespace and relkind = 'r'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    for (table, _) in tenant_tables(&app.db).await {
        let row = walled.iter().find(|(name, ..)| *name == table).unwrap();
        assert!(row.1 && row.2, "{table} has no forced row-level security");
    }
    // the service's own connections
    let row = sqlx::query(
        "select current_user::text as name, r.rolsuper, r.rolbypassrls,
                exists (select 1 from pg_tables where schemaname = 'public' and tableowner = current_user) as owns
           from pg_roles r where r.rolname = current_user",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("name"), "docuchat_app");
    assert!(!row.get::<bool, _>("rolsuper") && !row.get::<bool, _>("rolbypassrls") && !row.get::<bool, _>("owns"));
    // the ledger has no foreign key a client's delete could break (only its tenant's)
    let keys: Vec<String> = sqlx::query_scalar(
        "select confrelid::regclass::text from pg_constraint where conrelid = 'usage_events'::regclass and contype = 'f'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(keys, ["tenants"]);
}

/// A service whose documents get second vectors too (`chunk_vectors` has rows of both tenants).
async fn cross_language_app(db: PgPool) -> TestApp {
    TestApp::builder().var("CROSS_LANGUAGE_MODEL", "multilingual-e5-small").spawn(db).await
}

#[sqlx::test]
async fn statements_without_a_tenant_condition_see_only_their_tenant(db: PgPool) {
    let app = cross_language_app(db).await;
    let (acme, globex) = two_busy_tenants(&app).await;
    let (acme_rows, globex_rows) = (rows_of(&app.db, acme).await, rows_of(&app.db, globex).await);
    let service = &app.state.db;

    for (table, column) in tenant_tables(&app.db).await {
        let mut tx = docuchat::db::for_tenant(service, acme).await.unwrap();
        // select: every row it sees is acme's, and it sees all of them
        let seen: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select {column} from {table}")))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert!(seen.iter().all(|t| *t == acme), "{table}: another tenant's row was seen");
        assert_eq!(seen.len() as i64, acme_rows[&table], "{table}");
        if table == "usage_events" {
            // the ledger is append-only for the service: it may not even try
            let err = sqlx::query("update usage_events set tokens = tokens").execute(&mut *tx).await.unwrap_err();
            assert!(err.to_string().contains("permission denied"), "{err}");
            continue;
        }
        // update and delete: only acme's rows are touched (rolled back below)
        let updated =
            sqlx::query(sqlx::AssertSqlSafe(format!("update {table} set {column} = {column}"))).execute(&mut *tx).await;
        assert_eq!(updated.unwrap().rows_affected() as i64, acme_rows[&table], "{table}");
        let mut sp = sqlx::Acquire::begin(&mut *tx).await.unwrap();
        let deleted = sqlx::query(sqlx::AssertSqlSafe(format!("delete from {table}"))).execute(&mut *sp).await;
        match deleted {
            Ok(done) => assert!(done.rows_affected() as i64 <= acme_rows[&table], "{table}"),
            // a delete that a trigger or a foreign key refuses (the ledger, rows others point at)
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        drop(sp);
        // moving a row to another tenant is refused by the policy's check
        let moved = sqlx::query(sqlx::AssertSqlSafe(format!("update {table} set {column} = $1")))
            .bind(globex)
            .execute(&mut *tx)
            .await;
        assert!(moved.is_err(), "{table}: a row was moved to another tenant");
        drop(tx);
    }
    // nothing of globex's changed
    assert_eq!(rows_of(&app.db, globex).await, globex_rows);
    assert_eq!(rows_of(&app.db, acme).await, acme_rows);
}

#[sqlx::test]
async fn a_transaction_with_no_tenant_sees_and_writes_nothing(db: PgPool) {
    let app = cross_language_app(db).await;
    let (acme, _) = two_busy_tenants(&app).await;
    let service = &app.state.db;
    for (table, column) in tenant_tables(&app.db).await {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
            .fetch_one(service)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} shows rows to a connection that names no tenant");
        if table != "usage_events" {
            let touched = sqlx::query(sqlx::AssertSqlSafe(format!("update {table} set {column} = {column}")))
                .execute(service)
                .await
                .unwrap();
            assert_eq!(touched.rows_affected(), 0, "{table}");
        }
    }
    // nor can it write a row for a tenant
    let err = sqlx::query("insert into usage_events (tenant_id, kind, model, tokens) values ($1, 'prompt', 'm', 1)")
        .bind(acme)
        .execute(service)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    // and a transaction of one tenant cannot write another's
    let globex: Uuid =
        sqlx::query_scalar("select id from tenants where slug = 'globex'").fetch_one(&app.db).await.unwrap();
    let mut tx = docuchat::db::for_tenant(service, acme).await.unwrap();
    let err = sqlx::query("insert into usage_events (tenant_id, kind, model, tokens) values ($1, 'prompt', 'm', 1)")
        .bind(globex)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
}

/// In production the service refuses to log in as the owner (or a superuser): a statement could
/// `RESET ROLE` out of the wall. A login role of its own, granted `docuchat_app`, is accepted.
#[sqlx::test]
async fn production_refuses_an_owner_login_and_accepts_a_role_of_its_own(db: PgPool) {
    let options = (*db.connect_options()).clone();
    let as_owner = docuchat::db::pool_options(100).max_connections(1).connect_with(options.clone()).await.unwrap();
    let err = docuchat::db::check_roles(&as_owner, true).await.unwrap_err().to_string();
    assert!(err.contains("login role of its own"), "{err}");
    docuchat::db::check_roles(&as_owner, false).await.expect("development allows it");

    // roles are the cluster's: made once, for every test database
    sqlx::query(
        "do $$ begin
             if not exists (select 1 from pg_roles where rolname = 'docuchat_test_service') then
                 create role docuchat_test_service login password 'docuchat_test_service' in role docuchat_app;
             end if;
         end $$",
    )
    .execute(&db)
    .await
    .unwrap();
    let own = options.username("docuchat_test_service").password("docuchat_test_service");
    let service = docuchat::db::pool_options(100).max_connections(1).connect_with(own).await.unwrap();
    docuchat::db::check_roles(&service, true).await.expect("a login role of its own");
    let (session, current): (String, String) =
        sqlx::query_as("select session_user::text, current_user::text").fetch_one(&service).await.unwrap();
    assert_eq!((session.as_str(), current.as_str()), ("docuchat_test_service", "docuchat_app"));
    // and it cannot step out of the wall
    let owner: String = sqlx::query_scalar("select tableowner::text from pg_tables where tablename = 'documents'")
        .fetch_one(&db)
        .await
        .unwrap();
    let err = sqlx::query(sqlx::AssertSqlSafe(format!("set role \"{owner}\""))).execute(&service).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}
