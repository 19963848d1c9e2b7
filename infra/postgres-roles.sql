-- Run once by the Postgres image when it creates its cluster (docker-entrypoint-initdb.d).
-- The service's login role: it owns nothing and bypasses nothing, so row-level security holds
-- for every statement it runs; the migrations (run as the owner, POSTGRES_USER) grant it what it
-- needs. Change the password for anything beyond a local trial.
create role docuchat_app login password 'docuchat_app';
