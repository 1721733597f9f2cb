//! `GET /boom`: panics on purpose, to show the error path. The client gets 500 JSON with the
//! request id (never the panic text); the log gets one ERROR line with the panic message and
//! location, stamped with the request and — with a token — the user; the server keeps serving.

pub async fn boom() -> &'static str {
    panic!("the /boom route panics on purpose")
}
