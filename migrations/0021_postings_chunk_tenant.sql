-- A candidate's missing terms read by chunk, as src/retrieval/mod.rs meant them to be.
--
-- The hybrid statement gives its best full-text candidates their exact score by looking up, for
-- each, the cut terms (those with more postings than are read per term) it was not found for:
-- `chunk_id = $c and term = any($terms)`, under the tenant's row-level security. The index for
-- that, (chunk_id, term) include (impact), does not hold the tenant, so every posting it found
-- had to be read from the heap to be checked against the policy; the planner preferred the
-- (tenant_id, term, impact desc, chunk_id) index, all of whose columns it could read without the
-- heap — a scan of each cut term's postings for every candidate, the chunk matched as the last
-- key. On the 960-chunk tenant of real text (docs/BENCHMARKS.md), a question with four cut terms
-- took 5.4 ms that way and 1.8 ms with this index; the rescoring had been 18 % of Postgres's CPU
-- under a 100-session load.
--
-- The index now carries the tenant too, so the lookup is an index-only scan of the one chunk's
-- terms. It still serves the delete of a chunk's postings (`chunk_id = …`). Rebuilding it blocks
-- writes of postings (documents becoming ready) for as long as it takes: about a second per
-- million postings.
drop index text_postings_chunk;
create index text_postings_chunk on text_postings (chunk_id, term) include (impact, tenant_id);
