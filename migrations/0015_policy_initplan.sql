-- The policies read the transaction's tenant once per statement, not once per row: as
-- `(select docuchat_tenant())` the planner makes it an init plan whose value every row is compared
-- with, where the bare call was evaluated — the setting looked up, the text parsed into a uuid —
-- for every row a scan passed through a filter (the joins of hybrid search that carry no tenant
-- condition of their own).
do $$
declare
    t text;
begin
    foreach t in array array['users', 'documents', 'document_files', 'ingestion_jobs', 'chunks', 'usage_events',
                             'chat_sessions', 'messages', 'api_keys', 'usage_hourly', 'usage_tenant_hourly',
                             'usage_tenant_daily', 'quotas', 'quota_holds', 'revoked_tokens'] loop
        execute format('alter policy tenant_rows on %I using (tenant_id = (select docuchat_tenant()))'
                       ' with check (tenant_id = (select docuchat_tenant()))', t);
    end loop;
    alter policy tenant_rows on tenants using (id = (select docuchat_tenant())) with check (id = (select docuchat_tenant()));
end $$;

create or replace function docuchat_text_ranked(p_model text, p_query tsquery, p_matches int, p_top int)
returns table (id bigint, rank real)
language sql stable security definer set search_path = pg_catalog, public as $$
    select m.id, ts_rank(m.tsv, p_query, 1) as rank
      from (select c.id, c.tsv from chunks c
             where c.tenant_id = (select docuchat_tenant()) and c.embedding_model = p_model and c.tsv @@ p_query
             limit p_matches) m
     order by rank desc
     limit p_top
$$;
