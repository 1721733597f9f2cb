//! Fields the example adds to every request's context, from what the request brought.
//!
//! - `tenant`: on authenticated routes, the verified token's `org_id`, as a custom field (on
//!   every later line of the request, the access line included) and as baggage (so that it
//!   travels on with every outgoing call).
//! - `device_id`: on every route, the `x-device-id` header (at most 128 bytes of UTF-8) as a
//!   hidden field: readable by the handlers, written to no line.

use axum::extract::Request;
use http::HeaderName;
use reqscope::{ContextField, RequestContext};
use tower::util::MapRequestLayer;

/// The tenant of an authenticated request: on every later line.
pub static TENANT: ContextField = ContextField::new("tenant");

/// The client's device: carried (into the welcome-email job too), never logged.
pub static DEVICE_ID: ContextField = ContextField::hidden("device_id");

/// The header a client names its device in.
pub const X_DEVICE_ID: HeaderName = HeaderName::from_static("x-device-id");

/// The longest `x-device-id` kept, in bytes.
pub const MAX_DEVICE_ID_BYTES: usize = 128;

/// A step: a plain function of the request, run as the request passes (no boxing).
pub type Step = fn(Request) -> Request;

/// Sets `tenant` from the org the auth layer put into the context; add it with `route_layer`
/// *before* the auth layer's, so that it runs after auth.
pub fn tenant_layer() -> MapRequestLayer<Step> {
    MapRequestLayer::new(tenant as Step)
}

/// Keeps `x-device-id` as the hidden field `device_id`; add it inside `RequestContextLayer`.
pub fn device_id_layer() -> MapRequestLayer<Step> {
    MapRequestLayer::new(device_id as Step)
}

fn tenant(request: Request) -> Request {
    RequestContext::with(|ctx| {
        if let Some(org) = ctx.read_patch(|patch| patch.org_id.clone()) {
            TENANT.set_on(ctx, org.clone());
            // An org id that is no valid baggage value cannot exist: values are encoded.
            let _ = ctx.set_baggage("tenant", &*org);
        }
    });
    request
}

fn device_id(request: Request) -> Request {
    let value = request.headers().get(X_DEVICE_ID).map(|value| value.as_bytes());
    if let Some(bytes) = value.filter(|bytes| bytes.len() <= MAX_DEVICE_ID_BYTES)
        && let Ok(device) = std::str::from_utf8(bytes)
    {
        DEVICE_ID.set(device);
    }
    request
}
