-- Revocable sessions. A token carries its user's token generation at issue time: logging out
-- everywhere or a change of role moves the generation on, and every older token stops working.
-- One token is revoked by its id until it would have expired anyway.
alter table users add column token_generation int not null default 0;

create table revoked_tokens (
    jti        uuid primary key,
    tenant_id  uuid not null references tenants (id) on delete cascade,
    user_id    uuid not null,
    expires_at timestamptz not null
);
create index revoked_tokens_expiry on revoked_tokens (expires_at);
