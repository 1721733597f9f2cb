//! The reqscope example API server.
//!
//! ```text
//! cargo run --example api
//! curl -i localhost:3000/health
//! ```
//!
//! Environment: `ADDR` (default `127.0.0.1:3000`), `RUST_LOG` (default `info`),
//! `LOG_FORMAT` (`json`, the default, or `pretty`).

mod app;
mod fanout;
mod health;
mod not_found;
mod stream;

use std::net::SocketAddr;

#[tokio::main]
async fn main() {
    // Every line on stdout, startup included, is a JSON log line.
    let _log_guard = match reqscope::logging::init_from_env() {
        Ok(guard) => guard,
        Err(error) => exit_with(&format!("cannot set up logging: {error}")),
    };
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let addr: SocketAddr = addr
        .parse()
        .unwrap_or_else(|_| exit_with(&format!("ADDR must be an address such as 127.0.0.1:3000, got {addr:?}")));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => exit_with(&format!("cannot listen on {addr}: {error}")),
    };
    let local_addr = listener.local_addr().map_or(addr, |a| a);
    tracing::info!(addr = %local_addr, "listening");

    let service = app::app().into_make_service_with_connect_info::<SocketAddr>();
    if let Err(error) = axum::serve(listener, service).with_graceful_shutdown(shutdown_signal()).await {
        tracing::error!(%error, "server failed");
    }
    tracing::info!("stopped");
}

fn exit_with(message: &str) -> ! {
    tracing::error!("{message}");
    eprintln!("error: {message}");
    std::process::exit(1)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
