//! A gRPC client for the example API server's `reqscope.example.v1.Users` service.
//!
//! ```text
//! cargo run --example grpc_client -- get-user 1
//! cargo run --example grpc_client -- count-up 3
//! TOKEN=$(cargo run -q --example mint_token -- 1) cargo run --example grpc_client -- who-am-i
//! ```
//!
//! `ADDR` (default `http://127.0.0.1:3000`) is the server; `TOKEN`, when set, is sent as
//! `authorization: Bearer …`; `REQUEST_ID`, when set, as `x-request-id`. Prints each reply
//! and the `x-request-id` the server answered with; a gRPC error prints its code and message
//! and exits with 1.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use reqscope_example_proto::users_client::UsersClient;
use reqscope_example_proto::{CountUpRequest, GetUserRequest, WhoAmIRequest};
use tonic::metadata::{MetadataMap, MetadataValue};

const USAGE: &str = "usage: grpc_client get-user <id> | who-am-i | count-up <n>";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Vec<String>) -> Result<(), String> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "http://127.0.0.1:3000".to_owned());
    let mut client = UsersClient::connect(addr.clone()).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["get-user", id] => {
            let id = id.parse().map_err(|_| format!("the user id must be a number, got {id:?}\n{USAGE}"))?;
            let reply = client.get_user(request(GetUserRequest { id })?).await.map_err(status)?;
            print_request_id(reply.metadata());
            println!("{:?}", reply.into_inner());
        }
        ["who-am-i"] => {
            let reply = client.who_am_i(request(WhoAmIRequest {})?).await.map_err(status)?;
            print_request_id(reply.metadata());
            println!("{:?}", reply.into_inner());
        }
        ["count-up", n] => {
            let n = n.parse().map_err(|_| format!("n must be a number, got {n:?}\n{USAGE}"))?;
            let reply = client.count_up(request(CountUpRequest { n })?).await.map_err(status)?;
            print_request_id(reply.metadata());
            let mut ticks = reply.into_inner();
            while let Some(tick) = ticks.message().await.map_err(status)? {
                println!("{tick:?}");
            }
        }
        _ => return Err(USAGE.to_owned()),
    }
    Ok(())
}

/// The message with the metadata the environment asks for.
fn request<T>(message: T) -> Result<tonic::Request<T>, String> {
    let mut request = tonic::Request::new(message);
    if let Ok(token) = std::env::var("TOKEN") {
        let value =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| "TOKEN is not a valid header value")?;
        request.metadata_mut().insert("authorization", value);
    }
    if let Ok(id) = std::env::var("REQUEST_ID") {
        let value = MetadataValue::try_from(id).map_err(|_| "REQUEST_ID is not a valid header value")?;
        request.metadata_mut().insert("x-request-id", value);
    }
    Ok(request)
}

fn print_request_id(metadata: &MetadataMap) {
    if let Some(id) = metadata.get("x-request-id").and_then(|id| id.to_str().ok()) {
        println!("x-request-id: {id}");
    }
}

/// A gRPC error, as the client saw it (its request id too: errors carry it).
fn status(status: tonic::Status) -> String {
    let id = status.metadata().get("x-request-id").and_then(|id| id.to_str().ok()).unwrap_or("none");
    format!("error: {:?}: {} (x-request-id: {id})", status.code(), status.message())
}
