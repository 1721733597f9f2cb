//! `bench-server grpc-load`: the gRPC rows' load client, wrk's role for tonic. `calls`
//! concurrent unary `GetUser` calls, spread over `connections` HTTP/2 connections, each
//! call sent as soon as the one before it answered, for `seconds`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqscope_example_proto::GetUserRequest;
use reqscope_example_proto::users_client::UsersClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::latency;

pub async fn run(
    addr: SocketAddr,
    seconds: u64,
    calls: usize,
    connections: usize,
    token: String,
) -> Result<(), String> {
    let bearer: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| "bad TOKEN")?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        // One `connect` per channel: each is an HTTP/2 connection of its own.
        channels.push(endpoint.connect().await.map_err(|e| format!("cannot connect to {addr}: {e}"))?);
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(calls);
    for n in 0..calls {
        let client = UsersClient::new(channels[n % channels.len()].clone());
        tasks.push(tokio::spawn(caller(client, bearer.clone(), deadline)));
    }
    let mut micros = Vec::new();
    for task in tasks {
        micros.extend(task.await.map_err(|e| e.to_string())??);
    }
    latency::report("calls", seconds, &mut micros);
    Ok(())
}

/// One caller's loop: the latency of each call it completed, in µs.
async fn caller(
    mut client: UsersClient<Channel>,
    bearer: MetadataValue<Ascii>,
    deadline: Instant,
) -> Result<Vec<f64>, String> {
    let mut micros = Vec::new();
    while Instant::now() < deadline {
        let mut request = tonic::Request::new(GetUserRequest { id: 42 });
        // The same header as wrk's and h2load's requests: only the auth row checks it.
        request.metadata_mut().insert("authorization", bearer.clone());
        let started = Instant::now();
        let user = client.get_user(request).await.map_err(|status| format!("GetUser failed: {status}"))?;
        if user.get_ref().id != 42 {
            return Err("GetUser answered another user".to_owned());
        }
        micros.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(micros)
}
