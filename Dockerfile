# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin portcullis

# Runtime stage: a small image running as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home portcullis
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
USER portcullis
# Mount the config at /etc/portcullis/config.toml and certificates beside it
# (read-only); secrets come from the environment or /run/secrets.
WORKDIR /etc/portcullis
EXPOSE 6380 6432 9090
# The admin endpoint must listen where this probe can reach it (127.0.0.1:9090 by default).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/portcullis", "probe", "127.0.0.1:9090", "/healthz"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "--config", "/etc/portcullis/config.toml"]
