//! The context carried out of a request — as headers, through a queue of the test's own — and
//! restored by a job; and the channel envelope across threads.

use axum::Router;
use axum::routing::get;
use http::HeaderMap;
use reqscope::carry::Carried;
use reqscope::job::Job;
use reqscope::{RequestContext, RequestContextLayer};
use tokio::sync::mpsc;

use crate::support::{access_lines_of, fetch, lines_of, lines_where, logs, serve, wait_until};

/// A queue as a broker would hold it: headers and a payload, no Rust values.
type Queued = (HeaderMap, u32);

/// A worker for every request, started outside any of them; a payload of 0 fails, 99 panics.
fn start_worker(mut inbox: mpsc::Receiver<Queued>) {
    tokio::spawn(async move {
        while let Some((headers, n)) = inbox.recv().await {
            let job = Job::new("carry_test").with_id(format!("job-{n}")).with_attempt(2);
            let run = job.run(Carried::from_headers(&headers), async move {
                tokio::task::yield_now().await;
                let has_device = RequestContext::with(|ctx| ctx.hidden_field("device_id").is_some());
                tracing::info!(order = n, has_device_id = has_device, "job ran");
                match n {
                    0 => Err("the payment service said no"),
                    99 => panic!("job {n} exploded"),
                    _ => Ok(()),
                }
            });
            // A panicking job unwinds out of `run`: the worker survives in a task of its own.
            let _ = tokio::spawn(run).await;
        }
    });
}

fn carrying_app(queue: mpsc::Sender<Queued>) -> Router {
    let handler = move |axum::extract::Path(n): axum::extract::Path<u32>| {
        let queue = queue.clone();
        async move {
            let headers = RequestContext::with(|ctx| {
                ctx.set_user_id(format!("user-{n}"));
                ctx.set_field("tenant", "acme");
                ctx.set_hidden_field("device_id", "device-secret-91c2");
                ctx.set_baggage("session", format!("s-{n}")).unwrap();
                ctx.carry().to_headers()
            })
            .expect("inside a request");
            queue.send((headers, n)).await.expect("the worker runs");
            "queued"
        }
    };
    Router::new().route("/carry/{n}", get(handler)).layer(RequestContextLayer::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_logs_with_the_request_that_carried_it() {
    let (queue, inbox) = mpsc::channel(64);
    start_worker(inbox);
    let addr = serve(carrying_app(queue)).await;
    let requests: Vec<_> = (1..=20u32)
        .map(|n| {
            tokio::spawn(async move {
                let id = format!("carry-{n}");
                assert_eq!(
                    fetch(addr, &format!("/carry/{n}"), &[("x-request-id", id.as_bytes())]).await.body,
                    "queued"
                );
                (n, id)
            })
        })
        .collect();
    for request in requests {
        let (n, id) = request.await.unwrap();
        let access = access_lines_of(&id).await;
        wait_until("the job's end line", || lines_of(&id).iter().any(|l| l["target"] == "reqscope::job")).await;
        let lines = lines_of(&id);
        let ran: Vec<_> = lines.iter().filter(|l| l["message"] == "job ran").collect();
        assert_eq!(ran.len(), 1, "{id}: {lines:#?}");
        let ran = ran[0];
        assert_eq!(ran["order"], n, "{id}: its own job, no other");
        assert_eq!(ran["user_id"], format!("user-{n}"));
        assert_eq!(ran["tenant"], "acme", "custom fields travel");
        assert_eq!(ran["has_device_id"], true, "hidden fields travel");
        assert_eq!(ran["baggage.session"], format!("s-{n}"), "baggage travels, and the allow-listed key is written");
        assert_eq!(
            (&ran["job"], &ran["job_id"], &ran["attempt"]),
            (&"carry_test".into(), &format!("job-{n}").into(), &2.into())
        );
        assert_eq!(ran["trace_id"], access[0]["trace_id"], "the same trace");
        assert_ne!(ran["span_id"], access[0]["span_id"], "a span of its own");
        let end = lines.iter().find(|l| l["target"] == "reqscope::job").unwrap();
        assert_eq!(
            (&end["level"], &end["message"], &end["outcome"]),
            (&"INFO".into(), &"job completed".into(), &"ok".into())
        );
        let (duration, queued) = (end["duration_ms"].as_f64().unwrap(), end["queue_ms"].as_f64().unwrap());
        // Both are bounded by this test's own run time.
        assert!((0.0..10_000.0).contains(&duration) && (0.0..10_000.0).contains(&queued), "{end}");
        assert_eq!(end["user_id"], format!("user-{n}"));
    }
    assert!(!logs().contents().contains("device-secret-91c2"), "the hidden value is on no line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_panicking_job_says_so_with_the_request() {
    let (queue, inbox) = mpsc::channel(8);
    start_worker(inbox);
    let addr = serve(carrying_app(queue)).await;
    for (n, outcome) in [(0, "error"), (99, "panic")] {
        let id = format!("carry-fails-{n}");
        fetch(addr, &format!("/carry/{n}"), &[("x-request-id", id.as_bytes())]).await;
        wait_until("the job's end line", || lines_of(&id).iter().any(|l| l["target"] == "reqscope::job")).await;
        let end = lines_of(&id).into_iter().find(|l| l["target"] == "reqscope::job").unwrap();
        assert_eq!(
            (&end["level"], &end["message"], &end["outcome"]),
            (&"ERROR".into(), &"job failed".into(), &outcome.into())
        );
        assert_eq!(end["user_id"], format!("user-{n}"));
        match outcome {
            "error" => assert_eq!(end["error"], "the payment service said no"),
            _ => assert_eq!(end["panic"], "job 99 exploded"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_carried_context_is_reported_once_and_the_job_still_runs() {
    logs();
    let mut headers = HeaderMap::new();
    headers.insert("x-request-id", "carry-bad-1".parse().unwrap());
    headers.insert("reqscope-context", "v=1,user_id=forged%0Auser-secret-5d1e".parse().unwrap());
    let ran = Job::new("carry_test")
        .with_id("bad-1")
        .run(Carried::from_headers(&headers), async {
            tracing::info!(probe = "carry-bad-1", "job without its request");
            Ok::<_, std::convert::Infallible>(RequestContext::try_current().unwrap().id().clone())
        })
        .await
        .unwrap();
    assert_ne!(ran.as_str(), "carry-bad-1", "a context of its own");
    let lines = lines_of(ran.as_str());
    let warnings: Vec<_> = lines.iter().filter(|l| l["level"] == "WARN").collect();
    assert_eq!(warnings.len(), 1, "{lines:#?}");
    assert_eq!(warnings[0]["reason"], "the carried reqscope-context member 'user_id' is invalid");
    assert_eq!(warnings[0]["job_id"], "bad-1");
    assert!(lines.iter().any(|l| l["probe"] == "carry-bad-1"), "the job ran: {lines:#?}");
    assert!(!logs().contents().contains("user-secret-5d1e"), "the rejected value is on no line");
}

/// The envelope carries the sender's context to a plain std thread too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_crosses_threads() {
    let (sender, inbox) = std::sync::mpsc::channel::<reqscope::Envelope<u32>>();
    std::thread::spawn(move || {
        for envelope in inbox {
            envelope.open(|n| tracing::info!(order = n, "thread ran the job"));
        }
    });
    let handler = move |axum::extract::Path(n): axum::extract::Path<u32>| {
        let sender = sender.clone();
        async move {
            sender.send(reqscope::Envelope::new(n)).expect("the thread runs");
            "sent"
        }
    };
    let addr = serve(Router::new().route("/thread/{n}", get(handler)).layer(RequestContextLayer::new())).await;
    for n in 0..10u32 {
        fetch(addr, &format!("/thread/{n}"), &[("x-request-id", format!("thread-{n}").as_bytes())]).await;
    }
    wait_until("ten thread lines", || lines_where(|l| l["message"] == "thread ran the job").len() >= 10).await;
    for n in 0..10u32 {
        let ran: Vec<_> =
            lines_of(&format!("thread-{n}")).into_iter().filter(|l| l["message"] == "thread ran the job").collect();
        assert_eq!(ran.len(), 1);
        assert_eq!(ran[0]["order"], n);
    }
}
