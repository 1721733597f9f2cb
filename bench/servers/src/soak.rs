//! The soak client of `bench/soak.sh`: a long run of mixed requests against the example
//! server, every answer checked, the server's memory sampled as it goes.
//!
//! Each request is one of the kinds below, in a fixed cycle of 100; it carries
//! `x-request-id: soak-<n>` (except the kind that sends an invalid id) so that the script can
//! check afterwards that every line of request `n` belongs to it. At the end it prints, per
//! kind, one `expect kind=<kind> requests=<sent> unexpected=<count> path=<path>` line for the
//! script's line count check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// One kind of request: its share of every 100, its path, and the status it must get.
pub struct Kind {
    pub name: &'static str,
    pub share: u64,
    pub path: &'static str,
    pub status: u16,
}

pub const KINDS: &[Kind] = &[
    Kind { name: "health", share: 38, path: "/health", status: 200 },
    Kind { name: "user", share: 15, path: "/users/2", status: 200 },
    Kind { name: "me", share: 10, path: "/users/me", status: 200 },
    Kind { name: "bad-token", share: 7, path: "/users/me", status: 401 },
    Kind { name: "invalid-id", share: 8, path: "/health", status: 200 },
    Kind { name: "fanout", share: 5, path: "/fanout", status: 200 },
    Kind { name: "stream", share: 1, path: "/stream", status: 200 },
    Kind { name: "not-found", share: 6, path: "/nope", status: 404 },
    Kind { name: "bad-user-id", share: 4, path: "/users/abc", status: 400 },
    Kind { name: "chain", share: 6, path: "/chain?hops=1", status: 200 },
];

fn kind_of(n: u64) -> usize {
    let mut at = n % 100;
    for (i, kind) in KINDS.iter().enumerate() {
        if at < kind.share {
            return i;
        }
        at -= kind.share;
    }
    0
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `total` requests over `connections` keep-alive connections.
pub async fn run(addr: SocketAddr, total: u64, connections: usize, pid: u32, token: String) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let sent: Arc<Vec<AtomicU64>> = Arc::new(KINDS.iter().map(|_| AtomicU64::new(0)).collect());
    let wrong: Arc<Vec<AtomicU64>> = Arc::new(KINDS.iter().map(|_| AtomicU64::new(0)).collect());
    let token = Arc::new(token);
    let started = Instant::now();

    let sampler = {
        let next = next.clone();
        tokio::spawn(async move {
            loop {
                let done = next.load(Ordering::Relaxed).min(total);
                if done >= total {
                    return;
                }
                if let Some(kib) = rss_kib(pid) {
                    println!("rss requests={done} kib={kib} elapsed_s={:.0}", started.elapsed().as_secs_f64());
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };

    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (next, sent, wrong, token) = (next.clone(), sent.clone(), wrong.clone(), token.clone());
            tokio::spawn(async move {
                let mut sender = None;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return;
                    }
                    let k = kind_of(n);
                    sent[k].fetch_add(1, Ordering::Relaxed);
                    if !one_request(addr, &mut sender, n, k, &token).await {
                        wrong[k].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.map_err(|e| e.to_string())?;
    }
    // Timed when the last answer is in, not at the sampler's next tick.
    let elapsed = started.elapsed().as_secs_f64();
    sampler.abort();
    if let Some(kib) = rss_kib(pid) {
        println!("rss requests={total} kib={kib} elapsed_s={elapsed:.0}");
    }

    println!(
        "done requests={total} connections={connections} elapsed_s={elapsed:.1} req_per_s={:.0}",
        total as f64 / elapsed
    );
    for (k, kind) in KINDS.iter().enumerate() {
        println!(
            "expect kind={} requests={} unexpected={} path={}",
            kind.name,
            sent[k].load(Ordering::Relaxed),
            wrong[k].load(Ordering::Relaxed),
            kind.path
        );
    }
    Ok(())
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

/// Sends request `n` of kind `k`; true when the answer is the intended one.
async fn one_request(addr: SocketAddr, sender: &mut Option<Sender>, n: u64, k: usize, token: &str) -> bool {
    let kind = &KINDS[k];
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else { return false };
        let Ok((s, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else { return false };
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let Some(s) = sender.as_mut() else { return false };
    if s.ready().await.is_err() {
        *sender = None;
        return false;
    }
    let id = format!("soak-{n}");
    let mut request = hyper::Request::get(kind.path).header("host", addr.to_string());
    request = match kind.name {
        "invalid-id" => request.header("x-request-id", "not valid!"),
        _ => request.header("x-request-id", &id),
    };
    request = match kind.name {
        "me" => request.header("authorization", format!("Bearer {token}")),
        "bad-token" => request.header("authorization", "Bearer not.a.token"),
        _ => request,
    };
    let Ok(request) = request.body(Empty::new()) else { return false };
    let Ok(response) = s.send_request(request).await else {
        *sender = None;
        return false;
    };
    let status = response.status().as_u16();
    let echoed = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let Ok(body) = response.into_body().collect().await else {
        *sender = None;
        return false;
    };
    let id_ok = match kind.name {
        "invalid-id" => echoed.is_some_and(|e| e != "not valid!" && e.len() == 36),
        _ => echoed.as_deref() == Some(id.as_str()),
    };
    status == kind.status && id_ok && !body.to_bytes().is_empty()
}
