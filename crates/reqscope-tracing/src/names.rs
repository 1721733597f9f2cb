/// The key names of a log line.
///
/// The defaults are the contract of reqscope's log lines; switch to
/// [`FieldNames::camel_case`] for pipelines that expect `requestId`, or set any field.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FieldNames {
    /// RFC 3339 UTC time of the event.
    pub timestamp: &'static str,
    /// `TRACE` … `ERROR`.
    pub level: &'static str,
    /// The event's target (usually its module path).
    pub target: &'static str,
    /// The event's message.
    pub message: &'static str,
    /// The request id.
    pub request_id: &'static str,
    /// The W3C trace id (OpenTelemetry's name for trace context in logs).
    pub trace_id: &'static str,
    /// This service's span id within the trace.
    pub span_id: &'static str,
    /// The authenticated user.
    pub user_id: &'static str,
    /// The user's organisation.
    pub org_id: &'static str,
    /// The HTTP method.
    pub method: &'static str,
    /// The request path.
    pub path: &'static str,
    /// The matched route template.
    pub route: &'static str,
    /// The client's address.
    pub client_ip: &'static str,
    /// The user's roles.
    pub roles: &'static str,
    /// Requests left in the rate-limit window.
    pub rate_limit_remaining: &'static str,
    /// Seconds until the rate-limit budget resets.
    pub rate_limit_reset: &'static str,
    /// The name of the job a line was written by.
    pub job: &'static str,
    /// The job's id.
    pub job_id: &'static str,
    /// Which attempt at the job this is, from 1.
    pub attempt: &'static str,
    /// `true` on a line written only because its request failed: a DEBUG line kept until an
    /// error (see [`RequestLevelFilter::keep_until_error`](crate::RequestLevelFilter::keep_until_error)).
    pub buffered: &'static str,
    /// On the line that wrote a request's kept lines (its first ERROR line): how many of
    /// the oldest were dropped to stay within the request's bounds.
    pub buffered_dropped: &'static str,
}

impl Default for FieldNames {
    fn default() -> Self {
        FieldNames {
            timestamp: "timestamp",
            level: "level",
            target: "target",
            message: "message",
            request_id: "request_id",
            trace_id: "trace_id",
            span_id: "span_id",
            user_id: "user_id",
            org_id: "org_id",
            method: "method",
            path: "path",
            route: "route",
            client_ip: "client_ip",
            roles: "roles",
            rate_limit_remaining: "rate_limit_remaining",
            rate_limit_reset: "rate_limit_reset",
            job: "job",
            job_id: "job_id",
            attempt: "attempt",
            buffered: "buffered",
            buffered_dropped: "buffered_dropped",
        }
    }
}

impl FieldNames {
    /// The key for an event field or custom context field named `name`, as far as the stamped
    /// keys decide: the name itself, or `fields.<name>` when it is one of them — so that no
    /// field can overwrite (or forge) the stamped `request_id`, `level`, … A line may prefix
    /// a key further to keep every key unique (see the [crate docs](crate)).
    pub fn field_key<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        if self.all().contains(&name) {
            std::borrow::Cow::Owned(format!("fields.{name}"))
        } else {
            std::borrow::Cow::Borrowed(name)
        }
    }

    /// Every stamped key.
    pub(crate) fn all(&self) -> [&'static str; 21] {
        [
            self.timestamp,
            self.level,
            self.target,
            self.message,
            self.request_id,
            self.trace_id,
            self.span_id,
            self.user_id,
            self.org_id,
            self.method,
            self.path,
            self.route,
            self.client_ip,
            self.roles,
            self.rate_limit_remaining,
            self.rate_limit_reset,
            self.job,
            self.job_id,
            self.attempt,
            self.buffered,
            self.buffered_dropped,
        ]
    }

    /// camelCase keys: `requestId`, `userId`, `rateLimitRemaining`, …
    pub fn camel_case() -> Self {
        FieldNames {
            request_id: "requestId",
            trace_id: "traceId",
            span_id: "spanId",
            user_id: "userId",
            org_id: "orgId",
            client_ip: "clientIp",
            rate_limit_remaining: "rateLimitRemaining",
            rate_limit_reset: "rateLimitReset",
            job_id: "jobId",
            buffered_dropped: "bufferedDropped",
            ..FieldNames::default()
        }
    }
}
