-- The full-text half of hybrid search ranks inside its security-definer function (migration
-- 0012) and returns only the best ids with their rank: handing every match's tsvector out of the
-- function made Postgres copy and sort them (a saturated chat server answered a quarter fewer
-- questions a second).
drop function docuchat_text_matches(text, tsquery, int);

create function docuchat_text_ranked(p_model text, p_query tsquery, p_matches int, p_top int)
returns table (id bigint, rank real)
language sql stable security definer set search_path = pg_catalog, public as $$
    select m.id, ts_rank(m.tsv, p_query, 1) as rank
      from (select c.id, c.tsv from chunks c
             where c.tenant_id = docuchat_tenant() and c.embedding_model = p_model and c.tsv @@ p_query
             limit p_matches) m
     order by rank desc
     limit p_top
$$;
revoke all on function docuchat_text_ranked(text, tsquery, int, int) from public;
grant execute on function docuchat_text_ranked(text, tsquery, int, int) to docuchat_app;
