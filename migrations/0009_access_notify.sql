-- Open chat sockets learn at once that their user's access changed: a removal, a change of role,
-- a logout everywhere (the token generation) or of one token notifies `docuchat_access` with the
-- user's id, whoever made the change (the API, the command line, psql).
create function notify_access() returns trigger language plpgsql as $$
begin
    if tg_table_name = 'revoked_tokens' then
        perform pg_notify('docuchat_access', new.user_id::text);
    elsif tg_op = 'DELETE' then
        perform pg_notify('docuchat_access', old.id::text);
    elsif new.role is distinct from old.role or new.token_generation is distinct from old.token_generation then
        perform pg_notify('docuchat_access', new.id::text);
    end if;
    return null;
end $$;

create trigger users_access_changed after update of role, token_generation or delete on users
    for each row execute function notify_access();
create trigger revoked_tokens_access_changed after insert on revoked_tokens
    for each row execute function notify_access();
