-- Metering: API keys, the ledger's rollup, quotas and the holds that keep concurrent requests
-- from overshooting them.

-- Machine credentials. The secret is shown once; only its SHA-256 is kept (the secret is 256 random
-- bits, so a fast hash is enough and lookups go straight through the unique index).
create table api_keys (
    id           uuid primary key,
    tenant_id    uuid not null references tenants (id) on delete cascade,
    name         text not null check (length(name) between 1 and 100),
    -- the first characters of the secret, shown in listings so people can tell keys apart
    prefix       text not null,
    secret_hash  bytea not null unique check (length(secret_hash) = 32),
    scopes       text[] not null check (scopes <@ array['usage:read', 'documents:read', 'documents:write']
                                        and cardinality(scopes) > 0),
    created_by   uuid,
    created_at   timestamptz not null default now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    unique (tenant_id, id)
);
create index api_keys_tenant on api_keys (tenant_id, created_at desc);

-- a document uploaded with an API key is charged to that key
alter table documents add column uploaded_by_key uuid;

-- The ledger is append-only: nothing may change or remove a row once written.
create function usage_events_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'usage_events is append-only';
end $$;
create trigger usage_events_append_only before update or delete on usage_events
    for each row execute function usage_events_append_only();
create trigger usage_events_no_truncate before truncate on usage_events
    for each statement execute function usage_events_append_only();

-- Range scans of one tenant's ledger read only this index (the edges of a window, see below).
drop index usage_events_tenant_time;
create index usage_events_tenant_time on usage_events (tenant_id, created_at)
    include (user_id, api_key_id, kind, model, tokens);
create index usage_events_tenant_user_time on usage_events (tenant_id, user_id, created_at)
    include (api_key_id, kind, model, tokens);

-- Rollups of the ledger, kept by a trigger in the same transaction as every ledger insert, so they
-- always equal the ledger summed by their keys:
--   usage_hourly        per hour and (user, API key, kind, model): members' own usage, group_by
--                       user or model, per-user quotas;
--   usage_tenant_hourly per hour and kind, and
--   usage_tenant_daily  per UTC day and kind: a tenant's totals and days, tenant quotas.
-- A window [from, to) is summed from whole days, then whole hours, then the ledger's own rows in
-- the partial hours at either end, each read through an index.
-- Every ledger write is one statement per transaction (a message's rows, a document's row), and the
-- trigger locks rollup rows in key order, so concurrent writers queue rather than deadlock. Rows are
-- striped by `slot` (the writing connection's process id modulo 16): a row stays locked until its
-- transaction commits, and without stripes every answer of a busy tenant would wait for the commit
-- of the one before it. Readers sum over the slots.
create table usage_hourly (
    tenant_id  uuid not null,
    hour       timestamptz not null check (hour = date_trunc('hour', hour, 'UTC')),
    user_id    uuid,
    api_key_id uuid,
    kind       text not null,
    model      text not null,
    slot       smallint not null,
    tokens     bigint not null,
    events     bigint not null,
    unique nulls not distinct (tenant_id, hour, user_id, api_key_id, kind, model, slot)
) with (fillfactor = 80);
-- one user's hours (members reading their own usage, per-user quotas)
create index usage_hourly_user on usage_hourly (tenant_id, user_id, hour);

create table usage_tenant_hourly (
    tenant_id uuid not null,
    hour      timestamptz not null check (hour = date_trunc('hour', hour, 'UTC')),
    kind      text not null,
    slot      smallint not null,
    tokens    bigint not null,
    events    bigint not null,
    primary key (tenant_id, hour, kind, slot)
) with (fillfactor = 80);

create table usage_tenant_daily (
    tenant_id uuid not null,
    day       timestamptz not null check (day = date_trunc('day', day, 'UTC')),
    kind      text not null,
    slot      smallint not null,
    tokens    bigint not null,
    events    bigint not null,
    primary key (tenant_id, day, kind, slot)
) with (fillfactor = 80);

create function usage_events_rollup() returns trigger language plpgsql as $$
declare
    v_slot smallint := (pg_backend_pid() % 16)::smallint;
begin
    -- one upsert per rollup and statement, rows in key order
    insert into usage_hourly as h (tenant_id, hour, user_id, api_key_id, kind, model, slot, tokens, events)
    select tenant_id, date_trunc('hour', created_at, 'UTC'), user_id, api_key_id, kind, model, v_slot,
           sum(tokens), count(*)
      from new_rows
     group by 1, 2, 3, 4, 5, 6
     order by 1, 2, 3, 4, 5, 6
    on conflict (tenant_id, hour, user_id, api_key_id, kind, model, slot)
    do update set tokens = h.tokens + excluded.tokens, events = h.events + excluded.events;

    insert into usage_tenant_hourly as h (tenant_id, hour, kind, slot, tokens, events)
    select tenant_id, date_trunc('hour', created_at, 'UTC'), kind, v_slot, sum(tokens), count(*)
      from new_rows
     group by 1, 2, 3
     order by 1, 2, 3
    on conflict (tenant_id, hour, kind, slot)
    do update set tokens = h.tokens + excluded.tokens, events = h.events + excluded.events;

    insert into usage_tenant_daily as d (tenant_id, day, kind, slot, tokens, events)
    select tenant_id, date_trunc('day', created_at, 'UTC'), kind, v_slot, sum(tokens), count(*)
      from new_rows
     group by 1, 2, 3
     order by 1, 2, 3
    on conflict (tenant_id, day, kind, slot)
    do update set tokens = d.tokens + excluded.tokens, events = d.events + excluded.events;
    return null;
end $$;
create trigger usage_events_rollup after insert on usage_events
    referencing new table as new_rows for each statement execute function usage_events_rollup();

-- Token quotas: per tenant, or per user (user_id null = every user of the tenant; a row for one
-- user overrides that default), per UTC day or calendar month.
create table quotas (
    tenant_id   uuid not null references tenants (id) on delete cascade,
    scope       text not null check (scope in ('tenant', 'user')),
    user_id     uuid,
    period      text not null check (period in ('day', 'month')),
    token_limit bigint not null check (token_limit >= 0),
    updated_at  timestamptz not null default now(),
    check (scope = 'user' or user_id is null),
    unique nulls not distinct (tenant_id, scope, user_id, period),
    foreign key (tenant_id, user_id) references users (tenant_id, id) on delete cascade
);

-- Tokens promised to requests in flight (the most each may spend). Admission counts them, so
-- concurrent requests overshoot a quota by at most one request. Released with the request's
-- ledger rows; a crashed process's holds expire.
create table quota_holds (
    id         uuid primary key,
    tenant_id  uuid not null,
    user_id    uuid,
    tokens     bigint not null check (tokens >= 0),
    expires_at timestamptz not null
);
create index quota_holds_tenant on quota_holds (tenant_id, expires_at);

-- When the current period ends: the next UTC midnight or first of the month, whatever the
-- session's time zone.
create function quota_reset(p_period text) returns timestamptz language sql stable as $$
    select ((date_trunc(p_period, now(), 'UTC') at time zone 'UTC') + ('1 ' || p_period)::interval) at time zone 'UTC'
$$;

-- Tokens used so far this period under one quota: the tenant's (daily rollup) or one user's
-- (hourly rollup). Stable, so it reads the snapshot of the statement that calls it.
create function quota_used(p_tenant uuid, p_scope text, p_user uuid, p_period text)
returns bigint language sql stable as $$
    select case when p_scope = 'tenant' then
               (select coalesce(sum(d.tokens), 0) from usage_tenant_daily d
                 where d.tenant_id = p_tenant and d.day >= date_trunc(p_period, now(), 'UTC'))
           else
               (select coalesce(sum(u.tokens), 0) from usage_hourly u
                 where u.tenant_id = p_tenant and u.hour >= date_trunc(p_period, now(), 'UTC')
                   and u.user_id = p_user)
           end::bigint
$$;

-- The quotas that apply to one user of a tenant: the tenant's own, and the user's (their own row,
-- else the tenant's default for users).
create function quotas_for(p_tenant uuid, p_user uuid)
returns table (scope text, period text, token_limit bigint) language sql stable as $$
    select q.scope, q.period, q.token_limit
      from quotas q
     where q.tenant_id = p_tenant
       and (q.scope = 'tenant'
            or (p_user is not null and q.scope = 'user'
                and (q.user_id = p_user
                     or (q.user_id is null and not exists (
                            select 1 from quotas o
                             where o.tenant_id = p_tenant and o.scope = 'user'
                               and o.user_id = p_user and o.period = q.period)))))
$$;

-- Admits a request that may spend up to p_tokens: refuses it when a quota that applies is already
-- used up (ledger + holds of requests in flight); otherwise records a hold p_hold (when given and
-- when any quota applies). Returns one row: admitted, and for a refusal the quota and its reset.
create function quota_admit(p_tenant uuid, p_user uuid, p_hold uuid, p_tokens bigint, p_hold_for interval)
returns table (admitted boolean, held boolean, scope text, period text, token_limit bigint, used bigint,
               resets_at timestamptz)
language plpgsql as $$
declare
    q record;
    v_used bigint;
    v_held bigint;
    v_any boolean := false;
begin
    for q in select * from quotas_for(p_tenant, p_user) order by 1, 2 loop
        if not v_any then
            -- admissions of one tenant take turns; tenants without quotas never get here
            perform pg_advisory_xact_lock(hashtextextended('quota:' || p_tenant::text, 0));
            delete from quota_holds h where h.tenant_id = p_tenant and h.expires_at < now();
            v_any := true;
        end if;
        -- one statement, one snapshot: a request that finishes meanwhile releases its hold and
        -- writes its ledger rows in one transaction, so it is counted exactly once either way
        select quota_used(p_tenant, q.scope, p_user, q.period),
               (select coalesce(sum(h.tokens), 0)
                  from quota_holds h
                 where h.tenant_id = p_tenant and (q.scope = 'tenant' or h.user_id = p_user))
          into v_used, v_held;
        if v_used + v_held >= q.token_limit then
            return query select false, false, q.scope, q.period, q.token_limit, v_used, quota_reset(q.period);
            return;
        end if;
    end loop;
    if v_any and p_hold is not null then
        insert into quota_holds (id, tenant_id, user_id, tokens, expires_at)
        values (p_hold, p_tenant, p_user, p_tokens, now() + p_hold_for);
    end if;
    return query select true, v_any and p_hold is not null, null::text, null::text, null::bigint, null::bigint,
                        null::timestamptz;
end $$;
