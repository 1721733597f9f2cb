//! One binary, every stack compared by `bench/http.sh`:
//!
//! ```text
//! bench-server <stack> [--addr 127.0.0.1:4000] [--log-file PATH]   # HTTP/1.1 and h2c
//! bench-server <grpc-stack|ws-stack> [--addr …] [--log-file …]    # gRPC (tonic), WebSocket
//! bench-server grpc-load ADDR SECONDS CALLS CONNECTIONS TOKEN   # the gRPC rows' load client
//! bench-server ws-load ADDR SECONDS CONNECTIONS TOKEN   # the WebSocket rows' load client
//! bench-server token        # prints a bearer token the `full` stack accepts
//! bench-server redis-latency [N]   # N rate-limit checks against Redis, one after another: p50, p99
//! bench-server soak ADDR REQUESTS CONNECTIONS PID TOKEN   # bench/soak.sh's load client
//! bench-server requests <stack> N  # N requests in process, no sockets (bench/instructions.sh)
//! bench-server events <reqscope|fmt-json> N   # N stamped events (bench/instructions.sh)
//! bench-server calls <grpc-stack> N   # N unary gRPC calls in process (bench/instructions.sh)
//! bench-server otlp-sink ADDR   # a stand-in OTLP/HTTP collector; GET /counts: "spans records"
//! ```
//!
//! Every HTTP stack answers `GET /hello` with the same small JSON (over HTTP/1.1, or h2c with
//! prior knowledge), the gRPC stacks `Users/GetUser`, the WebSocket stacks echo on `/ws`; on
//! a tokio runtime with one worker (the script pins the process to one core). Stacks that log write to `--log-file`
//! through the same non-blocking writer, so the comparison is about the stacks, not the
//! output.
#![forbid(unsafe_code)]

mod grpc;
mod grpc_load;
mod handrolled;
mod inproc;
mod latency;
mod sink;
mod soak;
mod stacks;
mod ws;
mod ws_load;

use std::net::SocketAddr;
use std::process::ExitCode;

use grpc::GrpcStack;
use stacks::Stack;
use ws::WsStack;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench-server: {message}");
            let names = [&Stack::NAMES[..], &GrpcStack::NAMES, &WsStack::NAMES].concat();
            eprintln!("usage: bench-server <{}> [--addr ADDR] [--log-file PATH]", names.join("|"));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let first = args.next().ok_or("missing stack name")?;
    if first == "token" {
        println!("{}", stacks::token());
        return Ok(());
    }
    if first == "redis-latency" {
        let checks = args.next().map_or(Ok(20_000), |n| n.parse().map_err(|_| format!("bad count {n:?}")))?;
        return redis_latency(checks);
    }
    if first == "otlp-sink" {
        let addr: SocketAddr = args.next().ok_or("otlp-sink needs ADDR")?.parse().map_err(|_| "bad ADDR")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start tokio: {e}"))?;
        return runtime.block_on(sink::run(addr));
    }
    if first == "soak" {
        let mut arg = |name: &str| args.next().ok_or(format!("soak needs {name}"));
        let addr: SocketAddr = arg("ADDR")?.parse().map_err(|_| "bad ADDR")?;
        let requests: u64 = arg("REQUESTS")?.parse().map_err(|_| "bad REQUESTS")?;
        let connections: usize = arg("CONNECTIONS")?.parse().map_err(|_| "bad CONNECTIONS")?;
        let pid: u32 = arg("PID")?.parse().map_err(|_| "bad PID")?;
        let token = arg("TOKEN")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start tokio: {e}"))?;
        return runtime.block_on(soak::run(addr, requests, connections, pid, token));
    }
    if first == "grpc-load" || first == "ws-load" {
        let mut arg = |name: &str| args.next().ok_or(format!("{first} needs {name}"));
        let addr: SocketAddr = arg("ADDR")?.parse().map_err(|_| "bad ADDR")?;
        let seconds: u64 = arg("SECONDS")?.parse().map_err(|_| "bad SECONDS")?;
        let count = |value: String, name: &str| value.parse::<usize>().map_err(|_| format!("bad {name}"));
        // One thread, as wrk -t1: the script pins it to the other core.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start tokio: {e}"))?;
        return if first == "grpc-load" {
            let calls = count(arg("CALLS")?, "CALLS")?;
            let connections = count(arg("CONNECTIONS")?, "CONNECTIONS")?;
            runtime.block_on(grpc_load::run(addr, seconds, calls, connections, arg("TOKEN")?))
        } else {
            let connections = count(arg("CONNECTIONS")?, "CONNECTIONS")?;
            runtime.block_on(ws_load::run(addr, seconds, connections, arg("TOKEN")?))
        };
    }
    if first == "requests" || first == "events" || first == "calls" {
        let what = args.next().ok_or(format!("{first} needs what to run"))?;
        let count = args.next().ok_or(format!("{first} needs a count"))?;
        let count: u64 = count.parse().map_err(|_| format!("bad count {count:?}"))?;
        // Lines go to a sink through the servers' writer, but without its worker thread (as
        // after its guard is dropped, each line is written by the thread that logs it): how
        // often a worker wakes depends on scheduling, which would make the counts vary.
        let (writer, guard) = reqscope::logging::non_blocking(std::io::sink());
        drop(guard);
        return if first == "requests" {
            inproc::requests(what.parse()?, count, writer)
        } else if first == "calls" {
            GrpcStack::parse(&what).ok_or(format!("unknown gRPC stack {what:?}"))?.calls(count, writer)
        } else {
            inproc::events(what.parse()?, count, writer)
        };
    }
    let served = if let Some(grpc) = GrpcStack::parse(&first) {
        Served::Grpc(grpc)
    } else if let Some(ws) = WsStack::parse(&first) {
        Served::Ws(ws)
    } else {
        Served::Http(first.parse()?)
    };
    let mut addr: SocketAddr = "127.0.0.1:4000".parse().map_err(|_| "bad default address")?;
    let mut log_file = std::env::temp_dir().join("reqscope-bench.log");
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => addr = value.parse().map_err(|_| format!("bad address {value:?}"))?,
            "--log-file" => log_file = value.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .map_err(|e| format!("cannot open {}: {e}", log_file.display()))?;
    let (writer, _guard) = reqscope::logging::non_blocking(file);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot bind {addr}: {e}"))?;
        let app = match served {
            Served::Http(stack) => stack.router(writer)?,
            Served::Ws(stack) => stack.router(writer)?,
            Served::Grpc(stack) => {
                println!("ready {}", stack.name());
                return stack.serve(listener, writer).await;
            }
        };
        println!("ready {first}");
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.map_err(|e| e.to_string())
    })
}

/// What the process serves: an HTTP stack (HTTP/1.1 and h2c alike), a WebSocket stack (both
/// through `axum::serve`), or a gRPC stack (`tonic::transport::Server`).
enum Served {
    Http(Stack),
    Ws(WsStack),
    Grpc(GrpcStack),
}

/// The latency of one rate-limit check against Redis (`REDIS_URL`, default local), through
/// the layer as a request sees it: `checks` checks in a row, after 1,000 to warm up.
fn redis_latency(checks: usize) -> Result<(), String> {
    use reqscope::rate_limit::{Quota, RateLimitLayer};
    use reqscope::{RequestContext, RequestId};
    use tower::{Layer, ServiceExt};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    runtime.block_on(async move {
        let quota = Quota::per_second(u32::MAX).map_err(|e| e.to_string())?;
        let limit = RateLimitLayer::redis(quota, stacks::redis_store()?);
        let service = limit.layer(tower::service_fn(|_: axum::http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(axum::http::Response::new(String::new()))
        }));
        let ctx = std::sync::Arc::new(RequestContext::new(RequestId::new_v4()));
        ctx.set_user_id("42");
        let mut micros = Vec::with_capacity(checks);
        for n in 0..checks + 1_000 {
            let started = std::time::Instant::now();
            let response = RequestContext::scope(ctx.clone(), service.clone().oneshot(axum::http::Request::new(())))
                .await
                .map_err(|e| e.to_string())?;
            if response.headers().get("ratelimit").is_none() {
                return Err("Redis did not answer: is it running at REDIS_URL?".to_owned());
            }
            if n >= 1_000 {
                micros.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        micros.sort_by(f64::total_cmp);
        let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
        println!("checks={checks} p50_us={:.1} p99_us={:.1} max_us={:.1}", at(0.5), at(0.99), at(1.0));
        Ok(())
    })
}
