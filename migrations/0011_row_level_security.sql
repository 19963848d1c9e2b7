-- Row-level security: the second wall between tenants. Every statement of the service names its
-- tenant; on top of that, the database itself admits only the rows of the tenant the transaction
-- works for (`set local docuchat.tenant_id = '…'`), so a statement that forgets its tenant
-- condition sees nothing of another tenant's, and a transaction that names no tenant sees nothing.
--
-- Roles: the role that runs the migrations owns the tables. The service works as `docuchat_app`
-- (it logs in as a role granted `docuchat_app`, or as `docuchat_app` itself, and `SET ROLE`s to
-- it), which owns nothing, is no superuser and has no BYPASSRLS. What spans tenants by design —
-- resolving `X-Tenant-ID`, claiming ingestion jobs — goes through the security-definer functions
-- below; the command line, the operator's tool, connects as the owner.

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'docuchat_app') then
        begin
            create role docuchat_app nologin;
        exception when insufficient_privilege then
            raise exception 'the role docuchat_app does not exist and % may not create it: create it first (README, "Database roles")',
                current_user;
        end;
    end if;
end $$;

grant usage on schema public to docuchat_app;
grant select, insert, update, delete on all tables in schema public to docuchat_app;
revoke all on table _sqlx_migrations from docuchat_app;
-- the ledger is append-only for the service too (a trigger refuses it for everyone)
revoke update, delete, truncate on table usage_events from docuchat_app;
grant usage, select on all sequences in schema public to docuchat_app;
alter default privileges in schema public grant select, insert, update, delete on tables to docuchat_app;
alter default privileges in schema public grant usage, select on sequences to docuchat_app;

-- The tenant the current transaction works for; null when none is set.
create function docuchat_tenant() returns uuid language sql stable parallel safe as $$
    select nullif(current_setting('docuchat.tenant_id', true), '')::uuid
$$;

-- Every table of tenant rows: enabled and forced (the owner is held by the policies too), a
-- policy for the tenant's own rows, and one that lets the owner — migrations, the command line,
-- the security-definer functions — through. The policies compare with
-- `(select docuchat_tenant())`, an init plan evaluated once per statement: the bare call would be
-- evaluated — the setting looked up, the text parsed into a uuid — for every row a scan passes
-- through a filter (the joins of hybrid search that carry no tenant condition of their own).
do $$
declare
    t text;
begin
    foreach t in array array['users', 'documents', 'document_files', 'ingestion_jobs', 'chunks', 'usage_events',
                             'chat_sessions', 'messages', 'api_keys', 'usage_hourly', 'usage_tenant_hourly',
                             'usage_tenant_daily', 'quotas', 'quota_holds', 'revoked_tokens'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format('create policy tenant_rows on %I using (tenant_id = (select docuchat_tenant()))'
                       ' with check (tenant_id = (select docuchat_tenant()))', t);
        execute format('create policy owner_rows on %I to %I using (true) with check (true)', t, current_user);
    end loop;
    alter table tenants enable row level security;
    alter table tenants force row level security;
    create policy tenant_rows on tenants using (id = (select docuchat_tenant()))
        with check (id = (select docuchat_tenant()));
    execute format('create policy owner_rows on tenants to %I using (true) with check (true)', current_user);
end $$;

-- The paths across tenants, each one statement, run as the owner.

-- `X-Tenant-ID`: a tenant by id or by slug.
create function docuchat_tenant_by_id(p_id uuid) returns setof tenants
language sql stable security definer set search_path = pg_catalog, public as $$
    select * from tenants where id = p_id
$$;
create function docuchat_tenant_by_slug(p_slug text) returns setof tenants
language sql stable security definer set search_path = pg_catalog, public as $$
    select * from tenants where slug = p_slug
$$;

-- An ingestion worker takes the next due job of any tenant (or one whose lease expired).
create function docuchat_claim_job(p_worker text, p_lease interval)
returns table (job_id bigint, job_document uuid, job_tenant uuid, job_attempts int, job_max_attempts int)
language sql volatile security definer set search_path = pg_catalog, public as $$
    with next as (
        select q.id from ingestion_jobs q
         where (q.locked_until is null and q.run_at <= now()) or q.locked_until < now()
         order by q.run_at, q.id
         limit 1
         for update skip locked
    )
    update ingestion_jobs j
       set locked_by = p_worker, locked_until = now() + p_lease, attempts = j.attempts + 1
      from next
     where j.id = next.id
    returning j.id, j.document_id, j.tenant_id, j.attempts, j.max_attempts
$$;

revoke all on function docuchat_tenant_by_id(uuid), docuchat_tenant_by_slug(text), docuchat_claim_job(text, interval)
    from public;
grant execute on function docuchat_tenant_by_id(uuid), docuchat_tenant_by_slug(text), docuchat_claim_job(text, interval)
    to docuchat_app;
