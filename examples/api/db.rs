//! The database: embedded SQLite by default, PostgreSQL when `DATABASE_URL` says so.
//!
//! sqlx logs every statement itself (target `sqlx::query`: the statement text, never the
//! bound values, rows returned / affected and elapsed time), at INFO, and at WARN beyond
//! `SLOW_QUERY_MS`. reqscope stamps those lines like any other: on PostgreSQL they fire in
//! the request's task, on SQLite on sqlx's worker thread, which carries the request span.
//!
//! There is deliberately no query wrapper: sqlx's own events already have everything a
//! wrapper would log, cover statements a wrapper would miss (migrations, pool pings), and a
//! wrapper would write a second line per statement. Handlers that want a name for a query
//! put it on a span or an event of their own.

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};

/// The embedded default: an in-memory SQLite database shared by the pool's connections.
pub const DEFAULT_URL: &str = "sqlite:file:reqscope-api?mode=memory&cache=shared";

/// Connects, runs the embedded migrations (which seed users 1, 2 and 3) and returns the pool.
pub async fn connect(url: &str, slow: Duration) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let options: AnyConnectOptions = url
        .parse::<AnyConnectOptions>()?
        .log_statements(log::LevelFilter::Info)
        .log_slow_statements(log::LevelFilter::Warn, slow);
    let sqlite = url.starts_with("sqlite");
    let pool = AnyPoolOptions::new()
        .max_connections(if sqlite { 1 } else { 10 })
        // An in-memory SQLite database lives as long as a connection to it: keep one open.
        .min_connections(u32::from(sqlite))
        .idle_timeout(if sqlite { None } else { Some(Duration::from_secs(600)) })
        .max_lifetime(if sqlite { None } else { Some(Duration::from_secs(1800)) })
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await?;
    if url.starts_with("postgres") {
        sqlx::migrate!("examples/api/migrations/postgres").run(&pool).await?;
    } else {
        sqlx::migrate!("examples/api/migrations/sqlite").run(&pool).await?;
    }
    Ok(pool)
}
