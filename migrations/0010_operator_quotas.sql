-- Who set a quota. The operator's (set with the command line: a plan, a contract) bind the
-- tenant's admins too: the API cannot raise, lower or remove them. Admins set their own on other
-- scopes and periods (or for single users) below the operator's.
alter table quotas add column set_by text not null default 'admin' check (set_by in ('admin', 'operator'));
