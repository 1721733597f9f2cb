//! End-to-end tests: real servers on 127.0.0.1, real HTTP, and the JSON lines actually written.

mod support;

// The example server's own modules, so that its routes are tested exactly as they ship.
#[path = "../../examples/api/access_log.rs"]
#[allow(dead_code)] // the tests build the sampler from values, not from the environment
mod access_log;
#[path = "../../examples/api/app.rs"]
mod app;
#[path = "../../examples/api/boom.rs"]
mod boom;
#[path = "../../examples/api/chain.rs"]
mod chain;
#[path = "../../examples/api/db.rs"]
#[allow(dead_code)] // the tests open databases of their own, not the default one
mod db;
#[path = "../../examples/api/fanout.rs"]
mod fanout;
#[path = "../../examples/api/grpc.rs"]
mod grpc;
#[path = "../../examples/api/health.rs"]
mod health;
#[path = "../../examples/api/jobs.rs"]
#[allow(dead_code)] // the tests make their queues themselves, not from the environment
mod jobs;
#[path = "../../examples/api/jwt.rs"]
#[allow(dead_code)] // the tests use the example's constants, not its secret handling
mod jwt;
#[path = "../../examples/api/log_settings.rs"]
#[allow(dead_code)] // the tests take the settings as the example ships them, not from the environment
mod log_settings;
#[path = "../../examples/api/not_found.rs"]
mod not_found;
#[path = "../../examples/api/rate_limit.rs"]
#[allow(dead_code)] // the tests build the layer from arguments, not from the environment
mod rate_limit;
#[path = "../../examples/api/ready.rs"]
mod ready;
#[path = "../../examples/api/request_fields.rs"]
mod request_fields;
#[path = "../../examples/api/stream.rs"]
mod stream;
#[path = "../../examples/api/users.rs"]
mod users;
#[path = "../../examples/api/ws.rs"]
mod ws;

mod access;
mod access_sampling;
mod auth;
mod background_jobs;
mod baggage;
mod carry;
mod concurrency;
mod context;
mod deployment;
mod error_tracking;
mod example_binary;
mod forwarded_ids;
mod grammar;
mod grpc_access;
mod grpc_layers;
mod grpc_service;
mod http2;
mod log_formats;
mod log_level;
mod log_lines;
mod log_redaction;
mod opentelemetry;
mod otlp;
mod panics;
mod properties;
mod rate_limits;
mod stamping;
mod traces;
mod user_endpoints;
mod websocket;
