-- A second vector per chunk, for questions in another script than the document's.
--
-- all-MiniLM-L6-v2 (the offline default) reads Latin script only: a Persian question about an
-- English manual, or an English one about a Russian guide, finds little by its vector. With a
-- cross-language model configured (multilingual-e5-small), each chunk also gets that model's vector
-- here, and a question is searched by MiniLM among the documents of its own side (Latin or not)
-- and by the multilingual model among the others, the two lists fused (docs/BENCHMARKS.md, "Each
-- passage by the model suited to its language pair").
--
-- - `documents.script`: the script of most of a document's chunks (`latin`, `cyrillic`,
--   `arabic`, `han`, `other`), set when its chunks are written;
-- - `documents.cross_model`: the model whose vectors of its chunks are in `chunk_vectors` (null:
--   none; such a document is searched by its chunks' own model whatever the question's script);
-- - `chunk_vectors`: named like `chunks`' columns (`id` is the chunk's), so that one search
--   statement reads either table; the chunk's tenant and document are repeated so that a search
--   filters by tenant and joins documents without reading the chunk.
alter table documents add column script text, add column cross_model text;

create table chunk_vectors (
    id              bigint not null references chunks (id) on delete cascade,
    tenant_id       uuid not null,
    document_id     uuid not null,
    embedding_model text not null,
    embedding       vector not null,
    primary key (id, embedding_model)
);
-- in the row, as `chunks`' vectors are (0017)
alter table chunk_vectors alter column embedding set storage main;
create index chunk_vectors_tenant on chunk_vectors (tenant_id, embedding_model);
create index chunk_vectors_e5small on chunk_vectors
    using hnsw ((embedding::vector(384)) vector_cosine_ops) where embedding_model = 'multilingual-e5-small';

alter table chunk_vectors enable row level security;
alter table chunk_vectors force row level security;
create policy tenant_rows on chunk_vectors using (tenant_id = (select docuchat_tenant()))
    with check (tenant_id = (select docuchat_tenant()));
do $$
begin
    execute format('create policy owner_rows on chunk_vectors to %I using (true) with check (true)', current_user);
end $$;
grant select, insert, update, delete on table chunk_vectors to docuchat_app;
