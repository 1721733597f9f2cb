//! What a team writes by hand before reaching for a library: a `task_local!` request id set
//! by a middleware, and a small tracing layer that writes it on each event as JSON.

use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use reqscope::logging::NonBlocking;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;

tokio::task_local! {
    static REQUEST_ID: String;
}

pub fn router(routes: Router) -> Router {
    routes.layer(middleware::from_fn(with_request_id))
}

async fn with_request_id(request: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let header = axum::http::HeaderValue::from_str(&id).ok();
    let mut response = REQUEST_ID.scope(id, next.run(request)).await;
    if let Some(header) = header {
        response.headers_mut().insert("x-request-id", header);
    }
    response
}

pub struct JsonLayer {
    writer: NonBlocking,
}

impl JsonLayer {
    pub fn new(writer: NonBlocking) -> Self {
        JsonLayer { writer }
    }
}

#[derive(Default)]
struct Collect {
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.insert(field.name().to_owned(), format!("{value:?}").into());
        }
    }
}

impl<S: Subscriber> Layer<S> for JsonLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut collect = Collect::default();
        event.record(&mut collect);
        let mut line = serde_json::Map::new();
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        line.insert("timestamp".into(), millis.into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        line.insert("message".into(), collect.message.into());
        if let Ok(id) = REQUEST_ID.try_with(Clone::clone) {
            line.insert("request_id".into(), id.into());
        }
        line.extend(collect.fields);
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        let _ = self.writer.make_writer().write_all(&bytes);
    }
}
