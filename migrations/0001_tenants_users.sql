-- Tenants and their users. Every tenant-owned table carries tenant_id.
create extension if not exists vector;

create table tenants (
    id          uuid primary key,
    name        text not null check (length(name) between 1 and 200),
    -- lower-case letters, digits and inner hyphens; never shaped like a UUID (X-Tenant-ID takes both)
    slug        text not null unique
                check (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'
                       and slug !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
    admin_email text not null check (admin_email = lower(admin_email)),
    created_at  timestamptz not null default now()
);

create table users (
    id            uuid primary key,
    tenant_id     uuid not null references tenants (id) on delete cascade,
    email         text not null check (email = lower(email)),
    role          text not null check (role in ('admin', 'member')),
    created_at    timestamptz not null default now(),
    last_login_at timestamptz,
    unique (tenant_id, email),
    -- lets other tables reference (tenant_id, user id) so a row can never point across tenants
    unique (tenant_id, id)
);
