# The smki-extract image the Helm chart (helm/smki-extract) runs.
#   docker build -t smki-extract:0.1.0 .
# Build stage: the Rust toolchain plus what librdkafka (cmake, OpenSSL for TLS and SASL/SCRAM)
# and RocksDB (clang for bindgen) need to compile.
FROM rust:1.89-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang libclang-dev \
      libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin smki-extract \
 && install -D target/release/smki-extract /out/smki-extract

# Runtime stage: the binary and the shared libraries it links (libstdc++, zlib, OpenSSL),
# CA certificates for brokers signed by public CAs (time zones are compiled in: chrono-tz).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 smki \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin smki
COPY --from=build /out/smki-extract /usr/local/bin/smki-extract
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["smki-extract"]
CMD ["run", "-c", "/etc/smki-extract/config.toml"]
