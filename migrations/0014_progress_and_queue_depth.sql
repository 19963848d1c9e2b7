-- A document's progress covers every stage of its ingestion: the pages extracted, then the
-- chunks embedded of the chunks made, then their storing. `stage` is meaningful while the
-- document is `processing` (extracting, embedding, storing); otherwise its status says it all.
alter table documents
    add column stage text not null default 'extracting'
        check (stage in ('extracting', 'embedding', 'storing')),
    add column chunks_total integer not null default 0 check (chunks_total >= 0),
    add column chunks_embedded integer not null default 0 check (chunks_embedded >= 0);

-- Each change a client may follow (`GET /v1/documents/{id}/events`) is announced on
-- `docuchat_document` as `<tenant id>:<document id>`; each process listens once and wakes the
-- streams of that document, which read it again (src/documents/watch.rs). The worker writes
-- progress at most once a second per document.
create function notify_document() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        perform pg_notify('docuchat_document', old.tenant_id::text || ':' || old.id::text);
    elsif (new.status, new.stage, new.pages_done, new.pages_total, new.chunks_embedded, new.chunks_total,
           new.error_code)
          is distinct from
          (old.status, old.stage, old.pages_done, old.pages_total, old.chunks_embedded, old.chunks_total,
           old.error_code) then
        perform pg_notify('docuchat_document', new.tenant_id::text || ':' || new.id::text);
    end if;
    return null;
end $$;

create trigger documents_progress after update or delete on documents
    for each row execute function notify_document();

-- The metrics' queue depth counts every tenant's jobs, which the service's role cannot see
-- (row-level security): this function tells it the two numbers and nothing else.
create function docuchat_queue_depth(out queued bigint, out running bigint)
language sql stable security definer set search_path = pg_catalog, public as $$
    select count(*) filter (where locked_until is null or locked_until < now()),
           count(*) filter (where locked_until >= now())
      from ingestion_jobs
$$;

revoke all on function docuchat_queue_depth() from public;
grant execute on function docuchat_queue_depth() to docuchat_app;
