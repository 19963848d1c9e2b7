-- Documents, their original bytes, the ingestion queue, chunks and the usage ledger.

create table documents (
    id            uuid primary key,
    tenant_id     uuid not null references tenants (id) on delete cascade,
    uploaded_by   uuid,
    filename      text not null,
    sha256        bytea not null check (length(sha256) = 32),
    bytes         bigint not null check (bytes > 0),
    pages_total   int not null check (pages_total > 0),
    pages_done    int not null default 0,
    status        text not null default 'queued' check (status in ('queued', 'processing', 'ready', 'failed')),
    error_code    text,
    error_message text,
    chunk_count   int not null default 0,
    embedding_model text,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    unique (tenant_id, id),
    foreign key (tenant_id, uploaded_by) references users (tenant_id, id) on delete set null (uploaded_by)
);
-- the same bytes uploaded again in a tenant return the existing document
create unique index documents_tenant_sha256 on documents (tenant_id, sha256);
-- ids are UUIDv7 (time-ordered): newest first is id descending
create index documents_tenant_id on documents (tenant_id, id desc);

-- the original upload, kept durably in the database (API processes stay stateless)
create table document_files (
    document_id uuid primary key,
    tenant_id   uuid not null,
    data        bytea not null,
    foreign key (tenant_id, document_id) references documents (tenant_id, id) on delete cascade
);
alter table document_files alter column data set storage external; -- PDFs are compressed already

-- Postgres is the queue: claimed with FOR UPDATE SKIP LOCKED, leased, retried with backoff.
create table ingestion_jobs (
    id           bigint generated always as identity primary key,
    document_id  uuid not null unique,
    tenant_id    uuid not null,
    attempts     int not null default 0,
    max_attempts int not null default 5,
    run_at       timestamptz not null default now(),
    locked_by    text,
    locked_until timestamptz,
    last_error   text,
    created_at   timestamptz not null default now(),
    foreign key (tenant_id, document_id) references documents (tenant_id, id) on delete cascade
);
create index ingestion_jobs_due on ingestion_jobs (run_at) where locked_until is null;
create index ingestion_jobs_lease on ingestion_jobs (locked_until) where locked_until is not null;

create table chunks (
    id              bigint generated always as identity primary key,
    tenant_id       uuid not null,
    document_id     uuid not null,
    ordinal         int not null,
    page_from       int not null,
    page_to         int not null check (page_to >= page_from),
    text            text not null,
    token_count     int not null,
    embedding       vector not null,
    embedding_model text not null,
    -- 'simple': no stemming, no stop words, so Persian (and every other script) is searchable too
    tsv             tsvector generated always as (to_tsvector('simple', text)) stored,
    unique (document_id, ordinal),
    foreign key (tenant_id, document_id) references documents (tenant_id, id) on delete cascade
);
create index chunks_tenant_document on chunks (tenant_id, document_id);
create index chunks_tsv on chunks using gin (tsv);
-- one partial HNSW index per embedding model (dimension fixed by the cast)
create index chunks_embedding_minilm on chunks
    using hnsw ((embedding::vector(384)) vector_cosine_ops) where embedding_model = 'all-MiniLM-L6-v2';
create index chunks_embedding_te3small on chunks
    using hnsw ((embedding::vector(1536)) vector_cosine_ops) where embedding_model = 'text-embedding-3-small';

-- Append-only token ledger: every total is derived from it.
create table usage_events (
    id          bigint generated always as identity primary key,
    tenant_id   uuid not null references tenants (id) on delete cascade,
    user_id     uuid,
    api_key_id  uuid,
    kind        text not null check (kind in ('embedding', 'prompt', 'completion')),
    model       text not null,
    tokens      bigint not null check (tokens >= 0),
    document_id uuid,
    message_id  uuid,
    created_at  timestamptz not null default now()
);
create index usage_events_tenant_time on usage_events (tenant_id, created_at);
