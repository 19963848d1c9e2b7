-- The second vectors (0019) filled by a job of their own.
--
-- A document's ingestion writes its chunks with the configured model's vectors and makes it
-- `ready`; the same transaction turns its job into a `cross_vectors` job, which reads the stored
-- chunks' text (no extraction), embeds it with the cross-language model and writes
-- `chunk_vectors`, the document staying `ready` (and searched by its own model) meanwhile.
-- `docuchat reindex` queues that job alone for a document whose chunks are already of the
-- configured model and that only lacks the cross-language vectors.
alter table ingestion_jobs add column kind text not null default 'ingest'
    check (kind in ('ingest', 'cross_vectors'));

-- The claim returns the kind too (a new result type: the function is made again), and takes
-- ingestions first: a document someone waits for is not queued behind the second vectors of a
-- reindex's backlog (those wait while uploads keep coming; they make no document searchable, only
-- better found across scripts). The due jobs are sorted per claim, as before: a claim's cost grows
-- with the backlog (a sort of the due rows), small beside a job's.
drop function docuchat_claim_job(text, interval);
create function docuchat_claim_job(p_worker text, p_lease interval)
returns table (job_id bigint, job_document uuid, job_tenant uuid, job_attempts int, job_max_attempts int,
               job_kind text)
language sql volatile security definer set search_path = pg_catalog, public as $$
    with next as (
        select q.id from ingestion_jobs q
         where (q.locked_until is null and q.run_at <= now()) or q.locked_until < now()
         order by q.kind <> 'ingest', q.run_at, q.id
         limit 1
         for update skip locked
    )
    update ingestion_jobs j
       set locked_by = p_worker, locked_until = now() + p_lease, attempts = j.attempts + 1
      from next
     where j.id = next.id
    returning j.id, j.document_id, j.tenant_id, j.attempts, j.max_attempts, j.kind
$$;
revoke all on function docuchat_claim_job(text, interval) from public;
grant execute on function docuchat_claim_job(text, interval) to docuchat_app;
