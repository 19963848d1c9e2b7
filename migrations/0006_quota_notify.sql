-- Serving processes remember which tenants have no quota at all, so that their questions are
-- admitted without a round trip; every change to `quotas` (from the API, a script or psql) tells
-- them to forget.
create function quotas_changed() returns trigger language plpgsql as $$
begin
    perform pg_notify('docuchat_quotas', '');
    return null;
end $$;
create trigger quotas_changed after insert or update or delete or truncate on quotas
    for each statement execute function quotas_changed();
