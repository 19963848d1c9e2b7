-- Chat history: sessions belong to one user of one tenant; each message is one question and its
-- answer, with the sources shown and the tokens spent.

create table chat_sessions (
    id         uuid primary key,
    tenant_id  uuid not null,
    user_id    uuid not null,
    title      text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (tenant_id, id),
    foreign key (tenant_id, user_id) references users (tenant_id, id) on delete cascade
);
create index chat_sessions_user on chat_sessions (tenant_id, user_id, updated_at desc);

create table messages (
    id                uuid primary key,
    tenant_id         uuid not null,
    session_id        uuid not null,
    question          text not null,
    answer            text not null default '',
    sources           jsonb not null default '[]',
    model             text not null,
    prompt_tokens     int not null default 0,
    completion_tokens int not null default 0,
    status            text not null check (status in ('complete', 'cancelled', 'failed')),
    error_code        text,
    created_at        timestamptz not null default now(),
    foreign key (tenant_id, session_id) references chat_sessions (tenant_id, id) on delete cascade
);
create index messages_session on messages (tenant_id, session_id, created_at);
