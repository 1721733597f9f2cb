//! One binary, every stack compared by `bench/http.sh`:
//!
//! ```text
//! bench-server <stack> [--addr 127.0.0.1:4000] [--log-file PATH]
//! bench-server token        # prints a bearer token the `full` stack accepts
//! ```
//!
//! Every stack answers `GET /hello` with the same small JSON, on a tokio runtime with one
//! worker (the script pins the process to one core). Stacks that log write to `--log-file`
//! through the same non-blocking writer, so the comparison is about the stacks, not the
//! output.

mod handrolled;
mod stacks;

use std::net::SocketAddr;
use std::process::ExitCode;

use stacks::Stack;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench-server: {message}");
            eprintln!("usage: bench-server <{}> [--addr ADDR] [--log-file PATH]", Stack::NAMES.join("|"));
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
    let stack: Stack = first.parse()?;
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
    let app = stack.router(writer);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot bind {addr}: {e}"))?;
        println!("ready {}", stack.name());
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.map_err(|e| e.to_string())
    })
}
