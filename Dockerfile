# Build stage: compile the relay.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin winrm-relay

# Run stage: a small image, non-root.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/winrm-relay --create-home relay
COPY --from=build /src/target/release/winrm-relay /usr/local/bin/winrm-relay
COPY config/relay.example.toml /etc/winrm-relay/relay.toml
WORKDIR /var/lib/winrm-relay
USER relay
# The relay locks its memory against swap only when allowed to:
#   docker run --ulimit memlock=-1 ...
# Mount a real config over /etc/winrm-relay/relay.toml (the example listens on
# 127.0.0.1, which is unreachable from outside the container).
EXPOSE 5985
ENTRYPOINT ["/usr/local/bin/winrm-relay"]
CMD ["serve", "--config", "/etc/winrm-relay/relay.toml"]
