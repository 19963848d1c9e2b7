-- Who may log in to a tenant: its admin address and the addresses its admins added (`invite`,
-- the default), also any address in one of `allowed_domains` (`domain`), or anyone (`open`).
-- Existing tenants become `invite`: their users keep logging in, strangers no longer join.
alter table tenants
    add column signup text not null default 'invite' check (signup in ('invite', 'domain', 'open')),
    add column allowed_domains text[] not null default '{}'
        check (array_position(allowed_domains, null) is null);
