-- The full-text half of hybrid search, as a security-definer function. Under row-level security
-- the planner may not evaluate a function that is not leakproof — `tsvector @@ tsquery` is not —
-- before the policy's own condition, so it could not use the (tenant_id, tsv) GIN index and read
-- every chunk of the tenant instead (27.6 ms against 0.4 ms at 30,000 chunks). This function runs
-- as the owner, whose policies let the index be used, and reads only the chunks of the tenant the
-- transaction works for: it takes no tenant argument, so it cannot be pointed at another's. It
-- ranks inside and returns only the best ids: handing every match's tsvector out made Postgres
-- copy and sort them.
create function docuchat_text_ranked(p_model text, p_query tsquery, p_matches int, p_top int)
returns table (id bigint, rank real)
language sql stable security definer set search_path = pg_catalog, public as $$
    select m.id, ts_rank(m.tsv, p_query, 1) as rank
      from (select c.id, c.tsv from chunks c
             where c.tenant_id = (select docuchat_tenant()) and c.embedding_model = p_model and c.tsv @@ p_query
             limit p_matches) m
     order by rank desc
     limit p_top
$$;
revoke all on function docuchat_text_ranked(text, tsquery, int, int) from public;
grant execute on function docuchat_text_ranked(text, tsquery, int, int) to docuchat_app;
