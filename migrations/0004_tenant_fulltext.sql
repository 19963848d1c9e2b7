-- Full-text search per tenant: one GIN index over (tenant_id, tsv), so a search looks only at the
-- tenant's posting lists instead of every tenant's matches for common words.
create extension if not exists btree_gin;
drop index if exists chunks_tsv;
create index chunks_tenant_tsv on chunks using gin (tenant_id, tsv);
