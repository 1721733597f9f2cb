# The example API server and its job worker: a release build in the full Rust image, run from
# a slim image as a non-root user (the worker: `command: ["/usr/local/bin/reqscope-worker"]`).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --example api --example worker \
    && cp target/release/examples/api /usr/local/bin/reqscope-api \
    && cp target/release/examples/worker /usr/local/bin/reqscope-worker

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home reqscope
COPY --from=build /usr/local/bin/reqscope-api /usr/local/bin/reqscope-worker /usr/local/bin/
USER reqscope
ENV ADDR=0.0.0.0:3000
EXPOSE 3000
CMD ["/usr/local/bin/reqscope-api"]
