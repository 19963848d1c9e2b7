-- A revoked (or deleted) API key is announced on `docuchat_access` as `key:<id>`, as a user's
-- access changes are: each process forgets the key it remembered (src/auth/access.rs).
create function notify_key() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        perform pg_notify('docuchat_access', 'key:' || old.id::text);
    elsif new.revoked_at is distinct from old.revoked_at then
        perform pg_notify('docuchat_access', 'key:' || new.id::text);
    end if;
    return null;
end $$;

create trigger api_keys_access_changed after update of revoked_at or delete on api_keys
    for each row execute function notify_key();
