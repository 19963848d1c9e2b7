-- Rollups by minute, so that the cost of reading a window does not grow with the tenant's traffic.
--
-- A window [from, to) is summed from the coarsest rollup that fits each part of it: whole days,
-- whole hours, whole minutes, and only the partial minutes at either end from the ledger itself
-- (src/usage/window.rs cuts it). Before this, the partial hours at the ends came from the ledger:
-- for a tenant writing 20,000 rows an hour, every read of "the last 24 hours" summed some 10,000
-- rows at its start. Now a ledger part is at most one minute of rows.
--
-- Same keys, same stripes (`slot`) and same trigger as the hourly rollups (migration 0005): the
-- trigger's one upsert per rollup and statement, rows in key order.
create table usage_minutely (
    tenant_id  uuid not null,
    minute     timestamptz not null
               check (minute = date_bin('1 minute', minute, timestamptz '2000-01-01 00:00:00+00')),
    user_id    uuid,
    api_key_id uuid,
    kind       text not null,
    model      text not null,
    slot       smallint not null,
    tokens     bigint not null,
    events     bigint not null,
    unique nulls not distinct (tenant_id, minute, user_id, api_key_id, kind, model, slot)
) with (fillfactor = 80);
-- one user's minutes (members reading their own usage)
create index usage_minutely_user on usage_minutely (tenant_id, user_id, minute);

create table usage_tenant_minutely (
    tenant_id uuid not null,
    minute    timestamptz not null
              check (minute = date_bin('1 minute', minute, timestamptz '2000-01-01 00:00:00+00')),
    kind      text not null,
    slot      smallint not null,
    tokens    bigint not null,
    events    bigint not null,
    primary key (tenant_id, minute, kind, slot)
) with (fillfactor = 80);

-- the second wall, as for every tenant table (migration 0011)
do $$
declare
    t text;
begin
    foreach t in array array['usage_minutely', 'usage_tenant_minutely'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format('create policy tenant_rows on %I using (tenant_id = (select docuchat_tenant()))'
                       ' with check (tenant_id = (select docuchat_tenant()))', t);
        execute format('create policy owner_rows on %I to %I using (true) with check (true)', t, current_user);
        execute format('grant select, insert, update on table %I to docuchat_app', t);
    end loop;
end $$;

-- the ledger as it stands
insert into usage_minutely (tenant_id, minute, user_id, api_key_id, kind, model, slot, tokens, events)
select tenant_id, date_bin('1 minute', created_at, timestamptz '2000-01-01 00:00:00+00'), user_id, api_key_id,
       kind, model, 0, sum(tokens), count(*)
  from usage_events
 group by 1, 2, 3, 4, 5, 6;
insert into usage_tenant_minutely (tenant_id, minute, kind, slot, tokens, events)
select tenant_id, date_bin('1 minute', created_at, timestamptz '2000-01-01 00:00:00+00'), kind, 0,
       sum(tokens), count(*)
  from usage_events
 group by 1, 2, 3;

create or replace function usage_events_rollup() returns trigger language plpgsql as $$
declare
    v_slot smallint := (pg_backend_pid() % 16)::smallint;
begin
    -- one upsert per rollup and statement, rows in key order
    insert into usage_minutely as m (tenant_id, minute, user_id, api_key_id, kind, model, slot, tokens, events)
    select tenant_id, date_bin('1 minute', created_at, timestamptz '2000-01-01 00:00:00+00'), user_id, api_key_id,
           kind, model, v_slot, sum(tokens), count(*)
      from new_rows
     group by 1, 2, 3, 4, 5, 6
     order by 1, 2, 3, 4, 5, 6
    on conflict (tenant_id, minute, user_id, api_key_id, kind, model, slot)
    do update set tokens = m.tokens + excluded.tokens, events = m.events + excluded.events;

    insert into usage_hourly as h (tenant_id, hour, user_id, api_key_id, kind, model, slot, tokens, events)
    select tenant_id, date_trunc('hour', created_at, 'UTC'), user_id, api_key_id, kind, model, v_slot,
           sum(tokens), count(*)
      from new_rows
     group by 1, 2, 3, 4, 5, 6
     order by 1, 2, 3, 4, 5, 6
    on conflict (tenant_id, hour, user_id, api_key_id, kind, model, slot)
    do update set tokens = h.tokens + excluded.tokens, events = h.events + excluded.events;

    insert into usage_tenant_minutely as m (tenant_id, minute, kind, slot, tokens, events)
    select tenant_id, date_bin('1 minute', created_at, timestamptz '2000-01-01 00:00:00+00'), kind, v_slot,
           sum(tokens), count(*)
      from new_rows
     group by 1, 2, 3
     order by 1, 2, 3
    on conflict (tenant_id, minute, kind, slot)
    do update set tokens = m.tokens + excluded.tokens, events = m.events + excluded.events;

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
