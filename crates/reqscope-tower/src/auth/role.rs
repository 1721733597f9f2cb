//! Require a role of the authenticated user: 403 JSON (gRPC: `PERMISSION_DENIED`) otherwise.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::reject::{self, Reason};
use super::{AuthFuture, Claims};
use crate::error_response::{ByContentType, ErrorCode, ErrorReply, MakeErrorResponse, RespondWithError, ResponseBody};

/// Lets a request through only if its verified token grants `role`. Without a verified token:
/// 401 `missing`; with a token lacking the role: 403
/// `{"error":"forbidden","message":"requires role <role>","request_id":…}` — for a gRPC
/// request `UNAUTHENTICATED` and `PERMISSION_DENIED` with the same messages (see
/// [`RequireRoleLayer::error_response`]). Place it inside
/// [`AuthLayer`](super::AuthLayer), e.g. with axum's `route_layer` on one route.
///
/// The decision is made from the [`Claims`] that `AuthLayer` put into the request's
/// extensions ([`Claims::roles`]: the roles claim, or `scope` when
/// [`AuthLayer::roles_from_scope`](super::AuthLayer::roles_from_scope) is on) — never from the
/// request context's roles, which any code may change with `RequestContext::set_roles` for its
/// log lines.
#[derive(Clone, Debug)]
pub struct RequireRoleLayer<M = ByContentType> {
    role: Arc<str>,
    realm: Arc<str>,
    errors: M,
}

impl RequireRoleLayer {
    /// Requires `role`.
    pub fn new(role: impl Into<Arc<str>>) -> Self {
        RequireRoleLayer { role: role.into(), realm: Arc::from("api"), errors: ByContentType }
    }
}

impl<M> RequireRoleLayer<M> {
    /// The `realm` of the 401's `WWW-Authenticate` (default `api`, as [`AuthLayer`](super::AuthLayer)'s).
    pub fn realm(mut self, realm: &str) -> Self {
        self.realm = Arc::from(realm.replace(['"', '\\'], ""));
        self
    }

    /// Answers refusals with `errors`' responses instead of [`ByContentType`]'s.
    pub fn error_response<N: MakeErrorResponse>(self, errors: N) -> RequireRoleLayer<N> {
        RequireRoleLayer { role: self.role, realm: self.realm, errors }
    }
}

impl<S, M: Clone> Layer<S> for RequireRoleLayer<M> {
    type Service = RequireRole<S, M>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireRole { inner, role: Arc::clone(&self.role), realm: Arc::clone(&self.realm), errors: self.errors.clone() }
    }
}

/// The service made by [`RequireRoleLayer`].
#[derive(Clone, Debug)]
pub struct RequireRole<S, M = ByContentType> {
    inner: S,
    role: Arc<str>,
    realm: Arc<str>,
    errors: M,
}

impl<S, M, ReqBody, ResBody> Service<Request<ReqBody>> for RequireRole<S, M>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: MakeErrorResponse,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Only AuthLayer can make a `Claims`: its presence means the token was verified.
        let verified = request.extensions().get::<Claims>().map(|claims| claims.has_role(&self.role));
        if verified == Some(true) {
            return AuthFuture::inner(self.inner.call(request));
        }
        let reply = if verified.is_some() {
            tracing::warn!(target: "reqscope::auth", role = &*self.role, "required role missing");
            ErrorReply::new(ErrorCode::PermissionDenied, "forbidden", format!("requires role {}", self.role))
        } else {
            reject::unauthorized(Reason::Missing, &self.realm)
        };
        AuthFuture::ready(self.errors.for_request(&request).respond(&reply))
    }
}
