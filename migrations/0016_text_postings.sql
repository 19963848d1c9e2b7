-- The full-text half of hybrid search as BM25 over impact-ordered postings, so that its cost per
-- question does not grow with the tenant and the candidates it hands to fusion are the best ranked.
--
-- Before, a question's words were OR-ed into a tsquery, matched through the GIN index and the
-- first 2,000 matches ranked with ts_rank: for common words in a big tenant that read thousands of
-- tsvectors per question, and which 2,000 were ranked was the bitmap's order, not their merit.
--
-- Now every chunk's words (its `tsv` lexemes, stop words left out) are written as postings
-- (tenant, term, impact, chunk), the impact being BM25's term-frequency part for that chunk:
--     impact = tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl)),  k1 = 1.2, b = 0.75,
-- with dl the chunk's length in words and avgdl a constant 300 words (about one chunk of 400
-- tokens; chunks are cut to a size, so a tenant's average hardly moves — a constant lets the
-- impact be computed once). A chunk's score for a question is sum(idf(term) * impact) over the
-- question's terms, idf from the term's document frequency in the tenant (`text_df`, kept by
-- triggers). The index (tenant, term, impact desc) hands out each term's best chunks first, so a
-- question reads a bounded number of postings per term whatever the tenant's size; the index
-- (chunk, term) then gives the best of them their exact score (src/retrieval/mod.rs).

-- Words too common to tell passages apart: never queried (src/retrieval/mod.rs keeps the same
-- list, and a test holds them equal), so not written as postings either.
create function docuchat_stop_words() returns text[] language sql immutable parallel safe as $$
    select array['a', 'about', 'after', 'all', 'also', 'am', 'an', 'and', 'any', 'are', 'as', 'at', 'be', 'been',
                 'being', 'but', 'by', 'can', 'could', 'did', 'do', 'does', 'for', 'from', 'had', 'has', 'have', 'he',
                 'her', 'his', 'how', 'i', 'if', 'in', 'into', 'is', 'it', 'its', 'me', 'more', 'most', 'my', 'no',
                 'not', 'of', 'on', 'or', 'our', 'she', 'should', 'so', 'some', 'such', 'than', 'that', 'the',
                 'their', 'them', 'then', 'there', 'these', 'they', 'this', 'those', 'to', 'us', 'was', 'we', 'were',
                 'what', 'when', 'where', 'which', 'who', 'whom', 'why', 'will', 'with', 'would', 'you', 'your',
                 'و', 'در', 'به', 'از', 'که', 'این', 'آن', 'را', 'با', 'است', 'برای', 'یک', 'تا', 'بر', 'هم', 'نیز',
                 'چه', 'چیست', 'چیه', 'کدام', 'می', 'ها', 'های', 'هست', 'هستند', 'بود', 'شود', 'کند', 'کرد', 'شد',
                 'اند', 'ای', 'ما', 'من', 'شما', 'او', 'آنها', 'یا', 'اگر', 'پس', 'چون', 'باید', 'دارد', 'داشت',
                 'چگونه', 'چطور', 'کجا', 'کی', 'آیا']
$$;

create table text_postings (
    tenant_id uuid not null,
    term      text not null,
    impact    real not null,
    chunk_id  bigint not null
);
-- each term's best chunks first
create index text_postings_term on text_postings (tenant_id, term, impact desc, chunk_id);
-- one chunk's impact for one term (a candidate's exact score), and a chunk's postings when it is
-- deleted
create index text_postings_chunk on text_postings (chunk_id, term) include (impact);

-- Per tenant and term, in how many chunks it occurs; the row with the empty term ('' is never a
-- lexeme) counts the tenant's chunks that have postings (BM25's N).
create table text_df (
    tenant_id uuid not null,
    term      text not null,
    df        bigint not null,
    primary key (tenant_id, term)
);

do $$
declare
    t text;
begin
    foreach t in array array['text_postings', 'text_df'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format('create policy tenant_rows on %I using (tenant_id = (select docuchat_tenant()))'
                       ' with check (tenant_id = (select docuchat_tenant()))', t);
        execute format('create policy owner_rows on %I to %I using (true) with check (true)', t, current_user);
        execute format('grant select, insert, update, delete on table %I to docuchat_app', t);
    end loop;
end $$;

-- A chunk's postings, from its tsvector: one per lexeme but the stop words.
create function docuchat_postings(p_tsv tsvector)
returns table (term text, impact real) language sql immutable parallel safe as $$
    with l as (select u.lexeme, cardinality(u.positions) as tf from unnest(p_tsv) u),
         d as (select coalesce(sum(tf), 0) as dl from l)
    select l.lexeme, (l.tf * 2.2 / (l.tf + 1.2 * (0.25 + 0.75 * d.dl / 300.0)))::real
      from l, d
     where l.lexeme <> all (docuchat_stop_words())
$$;

-- Postings follow the chunks: written with them, deleted with them.
create function chunks_postings_insert() returns trigger language plpgsql as $$
begin
    insert into text_postings (tenant_id, term, impact, chunk_id)
    select n.tenant_id, p.term, p.impact, n.id
      from new_rows n cross join lateral docuchat_postings(n.tsv) p;
    return null;
end $$;
create trigger chunks_postings_insert after insert on chunks
    referencing new table as new_rows for each statement execute function chunks_postings_insert();

create function chunks_postings_delete() returns trigger language plpgsql as $$
begin
    delete from text_postings p using old_rows o where p.chunk_id = o.id;
    return null;
end $$;
create trigger chunks_postings_delete after delete on chunks
    referencing old table as old_rows for each statement execute function chunks_postings_delete();

-- Document frequencies follow the postings. Rows are locked in key order, so concurrent writers of
-- one tenant queue on the rows of common terms rather than deadlock.
create function text_postings_df_insert() returns trigger language plpgsql as $$
begin
    insert into text_df as d (tenant_id, term, df)
    select tenant_id, term, count(*) from (
        select tenant_id, term from new_rows
        union all
        select tenant_id, '' from new_rows group by tenant_id, chunk_id
    ) x
     group by 1, 2
     order by 1, 2
    on conflict (tenant_id, term) do update set df = d.df + excluded.df;
    return null;
end $$;
create trigger text_postings_df_insert after insert on text_postings
    referencing new table as new_rows for each statement execute function text_postings_df_insert();

create function text_postings_df_delete() returns trigger language plpgsql as $$
begin
    with gone as (
        select tenant_id, term, count(*) as n from (
            select tenant_id, term from old_rows
            union all
            select tenant_id, '' from old_rows group by tenant_id, chunk_id
        ) x
         group by 1, 2
    ),
    locked as (
        select d.tenant_id, d.term from text_df d join gone g using (tenant_id, term)
         order by 1, 2
           for update of d
    )
    update text_df d set df = d.df - g.n
      from gone g join locked l using (tenant_id, term)
     where d.tenant_id = g.tenant_id and d.term = g.term;
    delete from text_df d
     using (select distinct tenant_id, term from old_rows union select distinct tenant_id, '' from old_rows) g
     where d.tenant_id = g.tenant_id and d.term = g.term and d.df <= 0;
    return null;
end $$;
create trigger text_postings_df_delete after delete on text_postings
    referencing old table as old_rows for each statement execute function text_postings_df_delete();

-- the chunks as they stand
insert into text_postings (tenant_id, term, impact, chunk_id)
select c.tenant_id, p.term, p.impact, c.id from chunks c cross join lateral docuchat_postings(c.tsv) p;

-- the GIN full-text path is gone
drop function docuchat_text_ranked(text, tsquery, int, int);
drop index chunks_tenant_tsv;
