# Build: docker build -t switchyard .
# Run:   docker run -p 8080:8080 -p 9901:9901 -v $PWD/my-config:/srv/switchyard/config switchyard
# The shipped quickstart listens on 127.0.0.1; a container config listens on 0.0.0.0.
FROM rust:1-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN cargo build --release --locked --bin switchyard

FROM debian:bookworm-slim
RUN useradd --system --no-create-home switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
WORKDIR /srv/switchyard
COPY config ./config
USER switchyard
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["run", "--config", "config/quickstart.toml"]
