//! No Docker engine runs where the tests do, so the container files are checked as text: the
//! compose services, ports, environment and healthcheck, and that the Dockerfile builds and
//! runs the example as a non-root user.

use serde_yaml_ng::Value;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).expect(name)
}

#[test]
fn compose_wires_the_api_to_postgres_redis_and_rabbitmq_with_a_worker() {
    let compose: Value = serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    let services = &compose["services"];
    let postgres = &services["postgres"];
    assert!(postgres["image"].as_str().unwrap().starts_with("postgres:"), "the official image");
    let check = serde_yaml_ng::to_string(&postgres["healthcheck"]["test"]).unwrap();
    assert!(check.contains("pg_isready"), "a healthcheck that asks PostgreSQL: {check}");
    let user = postgres["environment"]["POSTGRES_USER"].as_str().unwrap();
    let password = postgres["environment"]["POSTGRES_PASSWORD"].as_str().unwrap();
    let database = postgres["environment"]["POSTGRES_DB"].as_str().unwrap();

    let api = &services["api"];
    assert_eq!(api["build"].as_str(), Some("."), "built from the Dockerfile at the root");
    assert_eq!(api["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));
    let url = api["environment"]["DATABASE_URL"].as_str().unwrap();
    assert_eq!(url, format!("postgres://{user}:{password}@postgres:5432/{database}"), "points at the postgres service");
    assert_eq!(api["environment"]["ADDR"].as_str(), Some("0.0.0.0:3000"));

    let redis = &services["redis"];
    assert!(redis["image"].as_str().unwrap().starts_with("redis:"), "the official image");
    let check = serde_yaml_ng::to_string(&redis["healthcheck"]["test"]).unwrap();
    assert!(check.contains("ping"), "a healthcheck that asks Redis: {check}");
    assert_eq!(api["depends_on"]["redis"]["condition"].as_str(), Some("service_healthy"));
    assert_eq!(api["environment"]["REDIS_URL"].as_str(), Some("redis://redis:6379"), "the shared rate-limit store");
    let ports: Vec<&str> = api["ports"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(ports, ["3000:3000"]);

    let rabbitmq = &services["rabbitmq"];
    assert!(rabbitmq["image"].as_str().unwrap().starts_with("rabbitmq:"), "the official image");
    let check = serde_yaml_ng::to_string(&rabbitmq["healthcheck"]["test"]).unwrap();
    assert!(check.contains("rabbitmq-diagnostics") && check.contains("ping"), "{check}");
    let user = rabbitmq["environment"]["RABBITMQ_DEFAULT_USER"].as_str().unwrap();
    let password = rabbitmq["environment"]["RABBITMQ_DEFAULT_PASS"].as_str().unwrap();
    let amqp = format!("amqp://{user}:{password}@rabbitmq:5672/%2f");
    assert_eq!(api["depends_on"]["rabbitmq"]["condition"].as_str(), Some("service_healthy"));
    assert_eq!(api["environment"]["AMQP_URL"].as_str(), Some(amqp.as_str()), "jobs go through the broker");
    let worker = &services["worker"];
    assert_eq!(worker["build"].as_str(), Some("."));
    let command: Vec<&str> = worker["command"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(command, ["/usr/local/bin/reqscope-worker"], "the worker binary the Dockerfile installs");
    assert_eq!(worker["environment"]["AMQP_URL"].as_str(), Some(amqp.as_str()), "the same broker as the api");
    assert_eq!(worker["depends_on"]["rabbitmq"]["condition"].as_str(), Some("service_healthy"));
}

#[test]
fn the_dockerfile_builds_the_example_and_runs_it_unprivileged() {
    let dockerfile = read("Dockerfile");
    let stages: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage: {stages:?}");
    assert!(stages[0].contains("rust:") && stages[0].ends_with(" AS build"), "{}", stages[0]);
    assert!(stages[1].contains("slim"), "a slim runtime image: {}", stages[1]);
    assert!(dockerfile.contains("cargo build --release --example api --example worker"));
    assert!(dockerfile.contains("/usr/local/bin/reqscope-worker"), "the worker is installed too");
    assert!(dockerfile.contains("COPY --from=build"));
    let user = dockerfile.lines().find(|l| l.starts_with("USER ")).expect("a USER line");
    assert_ne!(user.trim(), "USER root");
    assert!(dockerfile.contains("useradd"), "the user is created in the image");
    assert!(dockerfile.contains("EXPOSE 3000"));
    assert!(dockerfile.contains("ADDR=0.0.0.0:3000"), "listens beyond the container's loopback");
}
