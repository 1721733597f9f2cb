//! `GET /boom`: panics on purpose, to show the error path. The client gets 500 JSON with the
//! request id (never the panic text); the log gets one ERROR line with the panic message and
//! location, stamped with the request and — with a token — the user; the server keeps serving.
//! Before it, a DEBUG line "about to fail", written when the request is raised to DEBUG or
//! kept until the panic (`LOG_ON_ERROR=debug`).

pub async fn boom() -> &'static str {
    // With `LOG_ON_ERROR=debug` this line is kept and written just before the panic's line.
    tracing::debug!("about to fail");
    panic!("the /boom route panics on purpose")
}
