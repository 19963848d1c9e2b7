# DocuChat for people who use Docker: `docker compose -f infra/docker-compose.yml up --build`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked --bin docuchat

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/docuchat docuchat
COPY --from=build /src/target/release/docuchat /usr/local/bin/docuchat
USER docuchat
WORKDIR /var/lib/docuchat
ENV BIND_ADDR=0.0.0.0:8000
EXPOSE 8000
ENTRYPOINT ["docuchat"]
CMD ["serve", "--migrate"]
