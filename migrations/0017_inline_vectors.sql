-- Chunk vectors kept in the table's own pages, so that reading a tenant's vectors reads no TOAST.
--
-- A chunk row held its vector (1,544 bytes for 384 dimensions), its text (about 570 bytes) and a
-- stored tsvector (about 980 bytes): over the 2 kB at which Postgres moves values out of line, and
-- the vector, the biggest value and one that does not compress, went to the TOAST table. Every
-- distance computed outside the HNSW index (the exact scan of a small tenant, the similarity of a
-- full-text candidate) then cost a TOAST index probe and a detoast: six buffers a row, 15.6 ms to
-- rank the 3,991 vectors of a real tenant. Measured on the same rows with the vectors inline:
-- 4.3 ms (and 1.0 → 0.2 ms for a 150-chunk tenant).
--
-- - the stored tsvector goes: nothing queries it since the postings (0016) replaced the GIN index,
--   and the postings trigger cuts the text itself, as the column did;
-- - the vector's storage is MAIN: the text is compressed and moved out first, the vector stays in
--   the row unless the row could not fit otherwise;
-- - the vectors already written are rewritten, so that they move inline too.

create or replace function chunks_postings_insert() returns trigger language plpgsql as $$
begin
    insert into text_postings (tenant_id, term, impact, chunk_id)
    select n.tenant_id, p.term, p.impact, n.id
      from new_rows n cross join lateral docuchat_postings(to_tsvector('simple', n.text)) p;
    return null;
end $$;

alter table chunks drop column tsv;
alter table chunks alter column embedding set storage main;
update chunks set embedding = embedding::real[]::vector;
