# The example API server: a release build in the full Rust image, run from a slim image as a
# non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --example api \
    && cp target/release/examples/api /usr/local/bin/reqscope-api

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home reqscope
COPY --from=build /usr/local/bin/reqscope-api /usr/local/bin/reqscope-api
USER reqscope
ENV ADDR=0.0.0.0:3000
EXPOSE 3000
CMD ["/usr/local/bin/reqscope-api"]
