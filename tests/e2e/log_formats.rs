//! The example server with `LOG_FORMAT=ecs` and `LOG_FORMAT=gcp`, as a user runs it: every
//! line on stdout, from the first start-up line to the last, in the chosen format; requests
//! over a real socket and the lines they write.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::example_binary::{KillOnDrop, example_path, failed_start, mint_token, stop, until_stdout_ends, wait_for};
use crate::support::fetch;

/// The trace the requests continue (sampled).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The example server in `format`, on a free port, with its stdout read line by line.
struct Server {
    child: KillOnDrop,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
    addr: SocketAddr,
}

/// Starts the example with `LOG_FORMAT=format` and `env`; waits for its `listening` line,
/// whose address `addr_of` reads.
async fn start(format: &str, env: &[(&str, &str)], addr_of: fn(&Value) -> Option<&str>) -> Server {
    let mut command = Command::new(example_path("api"));
    command
        .env("ADDR", "127.0.0.1:0")
        .env("JWT_SECRET", std::str::from_utf8(crate::support::TEST_SECRET).unwrap())
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", format);
    for name in [
        "GOOGLE_CLOUD_PROJECT",
        "LOG_BAGGAGE_KEYS",
        "LOG_REDACT",
        "LOG_HEADERS",
        "SENTRY_DSN",
        "REDIS_URL",
        "RATE_LIMIT_PER_MINUTE",
        "DATABASE_URL",
        "AMQP_URL",
        "WORKER",
        "ACCESS_LOG_SKIP",
        "ACCESS_LOG_SAMPLE",
        "SLOW_REQUEST_MS",
        "RUST_BACKTRACE",
        "LOG_ON_ERROR",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = KillOnDrop(Some(command.spawn().expect("the api example is built by `cargo test`")));
    let stdout = BufReader::new(child.0.as_mut().unwrap().stdout.take().unwrap());
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            sink.lock().unwrap().push(line.unwrap());
        }
    });
    let listening = || {
        lines.lock().unwrap().iter().find_map(|line| {
            let value: Value = serde_json::from_str(line).ok()?;
            (value["message"] == "listening").then(|| addr_of(&value).map(str::to_owned)).flatten()
        })
    };
    wait_for("the listening line", || listening().is_some()).await;
    let addr = listening().unwrap().parse().unwrap();
    Server { child, lines, reader, addr }
}

impl Server {
    /// The lines so far, parsed.
    fn parsed(&self) -> Vec<Value> {
        self.lines.lock().unwrap().iter().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    /// Stops the server (SIGTERM, a clean exit) and returns every line it wrote.
    async fn stop(self) -> Vec<String> {
        stop(self.child).await;
        until_stdout_ends(self.reader).await;
        self.lines.lock().unwrap().clone()
    }
}

/// A line's keys and values in the order written; panics on a line that is not one JSON
/// object with unique keys.
fn ordered(line: &str) -> Vec<(String, Value)> {
    struct Ordered(Vec<(String, Value)>);
    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                    let mut entries: Vec<(String, Value)> = Vec::new();
                    while let Some((key, value)) = map.next_entry::<String, Value>()? {
                        if entries.iter().any(|(k, _)| *k == key) {
                            return Err(serde::de::Error::custom(format_args!("duplicate key {key:?}")));
                        }
                        entries.push((key, value));
                    }
                    Ok(Ordered(entries))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }
    match serde_json::from_str::<Ordered>(line) {
        Ok(Ordered(entries)) => entries,
        Err(e) => panic!("stdout line is not one JSON object with unique keys ({e}): {line}"),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as both formats write it.
fn is_rfc3339_utc(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() == 27
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && digits(11..13)
        && digits(14..16)
        && digits(17..19)
        && digits(20..26)
        && (b[4], b[7], b[10], b[13], b[16], b[19], b[26]) == (b'-', b'-', b'T', b':', b':', b'.', b'Z')
}

/// Checks an ECS line against the ecs-logging spec (`tests/fixtures/ecs-logging-spec.json`):
/// its required fields, the order of the fields with an `index` (then `ecs.version`), the
/// type of every field of the spec it has, dotted top-level keys where the spec wants them,
/// labels as strings under names without `.`, `*` or `\`. Returns the line.
fn check_ecs_line(line: &str) -> Value {
    static SPEC: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ecs-logging-spec.json");
        let spec: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        spec["fields"].as_object().unwrap().clone()
    });
    let entries = ordered(line);
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let object: Map<String, Value> = entries.iter().cloned().collect();
    let mut indexed: Vec<(u64, &str)> = spec
        .iter()
        .filter_map(|(name, field)| Some((field.get("index")?.as_u64()?, name.as_str())))
        .filter(|(_, name)| object.contains_key(*name))
        .collect();
    indexed.sort_unstable();
    let first: Vec<&str> = indexed.iter().map(|(_, name)| *name).collect();
    assert_eq!(keys[..first.len()], first[..], "the spec's order: {line}");
    assert_eq!(keys.get(first.len()), Some(&"ecs.version"), "ecs.version right after them: {line}");
    for (name, field) in spec {
        if field["required"] == true {
            assert!(object.contains_key(name), "{name} is required: {line}");
        }
        if field["top_level_field"] == true {
            assert!(!object.contains_key(name.split('.').next().unwrap()), "{name} must be a dotted key: {line}");
        }
        let Some(value) = object.get(name) else { continue };
        match field["type"].as_str().unwrap() {
            "string" => assert!(value.is_string(), "{name} must be a string: {line}"),
            "integer" => assert!(value.is_i64() || value.is_u64(), "{name} must be an integer: {line}"),
            "datetime" => assert!(value.as_str().is_some_and(is_rfc3339_utc), "{name} must be a time: {line}"),
            "object" => assert!(value.is_object(), "{name} must be an object: {line}"),
            other => panic!("a type the check does not know: {other}"),
        }
    }
    for (key, value) in &object {
        if let Some(label) = key.strip_prefix("labels.") {
            assert!(!label.contains(['.', '*', '\\']), "{key}: no `.`, `*` or `\\` in a label's name: {line}");
            assert!(value.is_string(), "{key}: labels are strings: {line}");
        }
    }
    Value::Object(object)
}

/// Checks a Google Cloud line: one JSON object with unique keys, `time` (RFC 3339) and
/// `severity` (one of the four written) first, then `message` when there is one, the source
/// location, and every `logging.googleapis.com/` key of the kind the agent expects.
fn check_gcp_line(line: &str) -> Value {
    let entries = ordered(line);
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys[..2], ["time", "severity"], "{line}");
    if let Some(at) = keys.iter().position(|k| *k == "message") {
        assert_eq!(at, 2, "{line}");
    }
    let object: Map<String, Value> = entries.into_iter().collect();
    assert!(object["time"].as_str().is_some_and(is_rfc3339_utc), "{line}");
    assert!(["DEBUG", "INFO", "WARNING", "ERROR"].contains(&object["severity"].as_str().unwrap()), "{line}");
    let location = &object["logging.googleapis.com/sourceLocation"];
    assert!(location["function"].is_string(), "{line}");
    if let Some(number) = location.get("line") {
        assert!(number.as_str().is_some_and(|n| n.parse::<u32>().is_ok()), "line is a string of digits: {line}");
    }
    if let Some(trace) = object.get("logging.googleapis.com/trace") {
        assert!(trace.as_str().is_some_and(|t| t.starts_with("projects/") && t.contains("/traces/")), "{line}");
        assert!(object["logging.googleapis.com/spanId"].as_str().is_some_and(|s| s.len() == 16), "{line}");
        assert!(object["logging.googleapis.com/trace_sampled"].is_boolean(), "{line}");
    }
    if let Some(labels) = object.get("logging.googleapis.com/labels") {
        assert!(labels.as_object().unwrap().values().all(Value::is_string), "labels are strings: {line}");
    }
    Value::Object(object)
}

fn of_request<'a>(lines: &'a [Value], key: &str, id: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l[key] == id).collect()
}

#[tokio::test]
async fn with_log_format_ecs_every_line_of_the_example_follows_the_ecs_logging_spec() {
    let server = start("ECS", &[("LOG_ON_ERROR", "debug")], |line| line["labels.addr"].as_str()).await;
    let addr = server.addr;
    let bearer = format!("Bearer {}", mint_token("3"));
    let headers = [
        ("x-request-id", &b"ecs-me"[..]),
        ("authorization", bearer.as_bytes()),
        ("traceparent", TRACEPARENT),
        ("user-agent", b"e2e-agent/1"),
    ];
    assert_eq!(fetch(addr, "/users/me", &headers).await.status, 200);
    assert_eq!(fetch(addr, "/boom", &[("x-request-id", b"ecs-boom")]).await.status, 500);
    assert_eq!(
        fetch(addr, "/chain?hops=1", &[("x-request-id", b"ecs-chain"), ("traceparent", TRACEPARENT)]).await.status,
        200
    );
    let logged = |id: &str| {
        server.parsed().iter().filter(|l| l["http.request.id"] == id && l["log.logger"] == "reqscope::access").count()
    };
    wait_for("the access lines", || logged("ecs-me") == 1 && logged("ecs-boom") == 1 && logged("ecs-chain") == 2).await;
    let lines: Vec<Value> = server.stop().await.iter().map(|line| check_ecs_line(line)).collect();

    // Start-up: the migrations' statements, then `listening`, before any request.
    let listening = lines.iter().position(|l| l["message"] == "listening").unwrap();
    assert!(lines[..listening].iter().any(|l| l["log.logger"] == "sqlx::query"), "{:?}", &lines[..listening]);
    assert!(lines[..=listening].iter().all(|l| l.get("http.request.id").is_none()));
    assert!(lines.iter().all(|l| l["ecs.version"] == "8.11.0"));
    assert!(lines.iter().any(|l| l["message"] == "stopped"));

    let me = of_request(&lines, "http.request.id", "ecs-me");
    assert_eq!(me.len(), 3, "the handler's line, the query's and the access line: {me:?}");
    for line in &me {
        assert_eq!(line["trace.id"], TRACE_ID, "the trace sent");
        assert_eq!(line["user.id"], "3");
        assert_eq!(line["organization.id"], "acme");
        assert_eq!(line["labels.tenant"], "acme", "the example's custom field");
        assert_eq!(line["url.path"], "/users/me");
        assert_eq!(line["labels.route"], "/users/me");
        assert_eq!(line["client.ip"], "127.0.0.1");
        assert_eq!(line["transaction.id"], line["span.id"]);
        assert!(line["reqscope.rate_limit_remaining"].is_u64());
    }
    let access = me.iter().find(|l| l["log.logger"] == "reqscope::access").unwrap();
    assert_eq!(access["http.response.status_code"], 200);
    assert!(access["event.duration"].as_u64().is_some_and(|ns| ns > 0), "{access:?}");
    assert!(access["http.response.body.bytes"].as_u64().is_some_and(|b| b > 0), "{access:?}");
    assert_eq!(access["user_agent.original"], "e2e-agent/1");

    let boom = of_request(&lines, "http.request.id", "ecs-boom");
    let kept = boom.iter().find(|l| l["message"] == "about to fail").expect("the DEBUG line kept until the panic");
    assert_eq!(kept["log.level"], "DEBUG");
    assert_eq!(kept["reqscope.buffered"], true);
    let panic = boom.iter().find(|l| l["log.logger"] == "reqscope::panic").unwrap();
    assert_eq!(panic["log.level"], "ERROR");
    assert_eq!(panic["error.message"], "the /boom route panics on purpose");
    assert_eq!(panic["error.type"], "panic");
    assert!(panic["error.stack_trace"].as_str().unwrap().starts_with("examples/api/boom.rs:"), "{panic:?}");
    let failed = boom.iter().find(|l| l["log.logger"] == "reqscope::access").unwrap();
    assert_eq!(failed["log.level"], "ERROR");
    assert_eq!(failed["http.response.status_code"], 500);

    // The chain: the outgoing call's span is its own, its transaction the calling request's.
    let chain = of_request(&lines, "http.request.id", "ecs-chain");
    assert!(chain.iter().all(|l| l["trace.id"] == TRACE_ID), "{chain:?}");
    let outgoing = chain.iter().find(|l| l["log.logger"] == "reqscope::outgoing").unwrap();
    let caller = chain.iter().find(|l| l["log.logger"] == "api::chain").unwrap();
    assert_eq!(outgoing["transaction.id"], caller["span.id"]);
    assert_ne!(outgoing["span.id"], caller["span.id"]);
    assert_eq!(outgoing["reqscope.parent_span_id"], caller["span.id"]);
    assert!(outgoing["url.full"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{outgoing:?}");
    assert_eq!(outgoing["http.response.status_code"], 200);
}

#[tokio::test]
async fn with_log_format_gcp_the_example_writes_google_cloud_structured_lines() {
    let env = [("GOOGLE_CLOUD_PROJECT", "e2e-project")];
    let server = start("gcp", &env, |line| line["addr"].as_str()).await;
    let addr = server.addr;
    let bearer = format!("Bearer {}", mint_token("3"));
    let headers = [
        ("x-request-id", &b"gcp-me"[..]),
        ("authorization", bearer.as_bytes()),
        ("traceparent", TRACEPARENT),
        ("user-agent", b"e2e-agent/1"),
    ];
    assert_eq!(fetch(addr, "/users/me", &headers).await.status, 200);
    let boom = [("x-request-id", &b"gcp-boom"[..]), ("authorization", bearer.as_bytes())];
    assert_eq!(fetch(addr, "/boom", &boom).await.status, 500);
    let logged = |id: &str| {
        server.parsed().iter().any(|l| {
            l["logging.googleapis.com/labels"]["request_id"] == id
                && l["logging.googleapis.com/sourceLocation"]["function"] == "reqscope::access"
        })
    };
    wait_for("the access lines", || logged("gcp-me") && logged("gcp-boom")).await;
    let lines: Vec<Value> = server.stop().await.iter().map(|line| check_gcp_line(line)).collect();
    let request_id = |l: &Value| l.get("logging.googleapis.com/labels").map(|labels| labels["request_id"].clone());

    let listening = lines.iter().position(|l| l["message"] == "listening").unwrap();
    assert!(lines[..listening].iter().any(|l| l["logging.googleapis.com/sourceLocation"]["function"] == "sqlx::query"));
    assert!(lines[..=listening].iter().all(|l| request_id(l).is_none()));
    assert!(lines.iter().any(|l| l["message"] == "stopped"));

    let me: Vec<&Value> = lines.iter().filter(|l| request_id(l) == Some("gcp-me".into())).collect();
    assert_eq!(me.len(), 3, "the handler's line, the query's and the access line: {me:?}");
    for line in &me {
        assert_eq!(line["logging.googleapis.com/trace"], format!("projects/e2e-project/traces/{TRACE_ID}"));
        assert_eq!(line["logging.googleapis.com/trace_sampled"], true, "the flags sent");
        assert_eq!(line["logging.googleapis.com/labels"]["user_id"], "3");
        assert_eq!(line["logging.googleapis.com/labels"]["org_id"], "acme");
        assert_eq!(line["route"], "/users/me");
    }
    let access =
        me.iter().find(|l| l["logging.googleapis.com/sourceLocation"]["function"] == "reqscope::access").unwrap();
    let http = access["httpRequest"].as_object().unwrap();
    assert_eq!(http["requestMethod"], "GET");
    assert_eq!(http["requestUrl"], "/users/me");
    assert_eq!(http["status"], 200);
    assert_eq!(http["remoteIp"], "127.0.0.1");
    assert_eq!(http["userAgent"], "e2e-agent/1");
    assert!(http["responseSize"].as_str().is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0)), "{http:?}");
    let latency = http["latency"].as_str().unwrap();
    let seconds = latency.strip_suffix('s').unwrap();
    let decimals = seconds.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(seconds.parse::<f64>().is_ok_and(|s| s > 0.0) && [0, 3, 6, 9].contains(&decimals), "{latency}");
    assert!(access.get("status").is_none() && access.get("duration_ms").is_none(), "{access:?}");

    let boom: Vec<&Value> = lines.iter().filter(|l| request_id(l) == Some("gcp-boom".into())).collect();
    let panic =
        boom.iter().find(|l| l["logging.googleapis.com/sourceLocation"]["function"] == "reqscope::panic").unwrap();
    assert_eq!(panic["severity"], "ERROR");
    assert_eq!(panic["@type"], "type.googleapis.com/google.devtools.clouderrorreporting.v1beta1.ReportedErrorEvent");
    assert_eq!(panic["serviceContext"]["service"], "api");
    assert_eq!(panic["serviceContext"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(panic["context"]["user"], "3");
    assert_eq!(panic["context"]["httpRequest"]["url"], "/boom");
    assert_eq!(panic["context"]["reportLocation"]["filePath"], "examples/api/boom.rs");
    assert!(panic["context"]["reportLocation"]["lineNumber"].is_u64());
    assert_eq!(panic["panic"], "the /boom route panics on purpose");
    let failed = boom.iter().find(|l| l.get("httpRequest").is_some()).unwrap();
    assert_eq!(failed["severity"], "ERROR");
    assert_eq!(failed["httpRequest"]["status"], 500);
    assert!(failed.get("@type").is_none(), "an access line is not an error event: {failed:?}");
}

#[test]
fn an_unknown_log_format_stops_the_example_naming_the_four() {
    let stderr = failed_start(&[("LOG_FORMAT", "xml")]);
    assert!(stderr.contains("LOG_FORMAT must be `json`, `pretty`, `ecs` or `gcp`, got \"xml\""), "{stderr}");
}
