//! Background jobs: the welcome email each new user gets, sent after `POST /users` answered.
//!
//! ```text
//! cargo run --example api                                                     # embedded queue, worker in the server
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example api      # RabbitMQ …
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example worker   # … and a worker process
//! ```
//!
//! `POST /users` answers 201 only once the queue holds the job: the embedded queue took it, or
//! RabbitMQ confirmed it (publisher confirms, a durable queue `welcome_email`, persistent
//! messages). A queue that does not take it within [`ENQUEUE_TIMEOUT`] makes the request fail
//! with 503 `queue_unavailable` (and the user is not kept), never wait longer.
//!
//! A message is the request's context carried as headers ([`reqscope::carry`]), a message id
//! (a new UUID), the attempt and the JSON payload ([`WelcomeEmail`]) — the same on both queues,
//! so that one worker path serves both: it restores the context from the headers (validated;
//! a message whose carried context does not validate still runs, in a context of its own, with
//! one WARN line giving the reason) and runs the job inside it. Every line of the job carries
//! the request's id, user and trace (with a span of the job's own), and `job`, `job_id`,
//! `attempt`; one `reqscope::job` line ends each attempt.
//!
//! A failed attempt is retried, [`MAX_ATTEMPTS`] attempts in all: sent again with the attempt
//! counted up (RabbitMQ: republished, confirmed, and only then the failed delivery acked).
//! After the last one the job is dropped with an ERROR line. Delivery is at least once: a job
//! whose delivery was not acked (a worker or connection lost half-way) runs again.
//!
//! The embedded queue is an in-process channel, its worker a task of the server: it keeps
//! nothing across a restart, which is what RabbitMQ is for. With RabbitMQ, the publisher drops
//! a broken connection and connects again on the next publish (within the same bound); the
//! consumer reconnects with backoff and carries on. The example sends no mail: a line stands
//! for it, and an address at `fail.example` fails, to show the retries.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use http::HeaderMap;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use reqscope::RequestContext;
use reqscope::carry::{Carried, InvalidCarriedContext};
use reqscope::job::Job;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore, mpsc};

/// The job's name, and the name of its RabbitMQ queue.
pub const WELCOME_EMAIL: &str = "welcome_email";

/// Attempts at a job, the first included.
pub const MAX_ATTEMPTS: u32 = 3;

/// The longest a request waits for the queue to take its job (RabbitMQ: connecting included).
pub const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(3);

/// Jobs one worker runs at a time (RabbitMQ: the consumer's prefetch).
pub const CONCURRENCY: u16 = 32;

/// Jobs the embedded queue holds before a request has to wait.
const EMBEDDED_CAPACITY: usize = 1024;

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The consumer's wait before reconnecting, doubled after each failure up to the maximum.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The payload of a `welcome_email` job.
#[derive(Debug, Serialize, Deserialize)]
pub struct WelcomeEmail {
    pub user_id: i64,
    pub email: String,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum QueueUnavailable {
    /// The queue did not take it within [`ENQUEUE_TIMEOUT`].
    Timeout,
    /// The embedded queue's worker has stopped.
    Closed,
    /// RabbitMQ could not be reached, or the connection broke.
    Broker(lapin::Error),
    /// RabbitMQ answered with a nack, or returned the message as unroutable.
    Refused,
}

impl fmt::Display for QueueUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueUnavailable::Timeout => write!(f, "the queue did not take the job within {ENQUEUE_TIMEOUT:?}"),
            QueueUnavailable::Closed => f.write_str("the embedded queue's worker has stopped"),
            QueueUnavailable::Broker(_) => f.write_str("RabbitMQ is unreachable"),
            QueueUnavailable::Refused => f.write_str("RabbitMQ refused the job"),
        }
    }
}

impl std::error::Error for QueueUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueueUnavailable::Broker(error) => Some(error),
            _ => None,
        }
    }
}

/// Why the job failed. The messages name no payload value: they end up on the job's line.
#[derive(Debug)]
pub enum JobError {
    /// The payload is not a [`WelcomeEmail`].
    Payload,
    /// The mail server refused the address.
    Refused,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobError::Payload => "the payload is not a welcome email ({\"user_id\":…,\"email\":…})",
            JobError::Refused => "the mail server refused the address",
        })
    }
}

/// The job: a welcome email for a new user, run inside the carried request context.
pub async fn send_welcome_email(payload: &[u8]) -> Result<(), JobError> {
    let email: WelcomeEmail = serde_json::from_slice(payload).map_err(|_| JobError::Payload)?;
    // Whether the request named its device; the id itself is hidden, on no line.
    let has_device_id = RequestContext::with(|ctx| ctx.hidden_field("device_id").is_some()).unwrap_or(false);
    // The address is not logged: the user id says who it was for.
    if email.email.to_ascii_lowercase().ends_with("@fail.example") {
        tracing::error!(user = email.user_id, has_device_id, "welcome email failed");
        return Err(JobError::Refused);
    }
    tracing::info!(user = email.user_id, has_device_id, "welcome email sent");
    Ok(())
}

/// Where requests put their jobs: the embedded queue or RabbitMQ. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Embedded(mpsc::Sender<Message>),
    RabbitMq(Publisher),
}

/// A message of the embedded queue: what a RabbitMQ message carries, in memory.
struct Message {
    headers: HeaderMap,
    id: String,
    attempt: u32,
    payload: Vec<u8>,
}

impl Jobs {
    /// The embedded queue; its worker runs as a task of the current runtime.
    pub fn embedded() -> Jobs {
        let (sender, receiver) = mpsc::channel(EMBEDDED_CAPACITY);
        // A weak sender for the retries, so that the worker ends with the last `Jobs`.
        tokio::spawn(embedded_worker(receiver, sender.downgrade()));
        Jobs { backend: Backend::Embedded(sender) }
    }

    /// Jobs published to `queue`; some worker consumes them ([`Queue::work`]).
    pub fn rabbitmq(queue: Queue) -> Jobs {
        Jobs { backend: Backend::RabbitMq(Publisher::new(queue)) }
    }

    /// Queues a welcome email, carrying the current request's context; `Ok` once the queue
    /// holds it, an error after at most [`ENQUEUE_TIMEOUT`].
    pub async fn welcome_email(&self, email: &WelcomeEmail) -> Result<(), QueueUnavailable> {
        let payload = serde_json::to_vec(email).expect("a number and a string always serialize");
        let id = uuid::Uuid::new_v4().to_string();
        match &self.backend {
            Backend::Embedded(sender) => {
                let headers = RequestContext::current().map(|ctx| ctx.carry().to_headers()).unwrap_or_default();
                let message = Message { headers, id, attempt: 1, payload };
                sender.send_timeout(message, ENQUEUE_TIMEOUT).await.map_err(|error| match error {
                    mpsc::error::SendTimeoutError::Timeout(_) => QueueUnavailable::Timeout,
                    mpsc::error::SendTimeoutError::Closed(_) => QueueUnavailable::Closed,
                })
            }
            Backend::RabbitMq(publisher) => {
                let properties = BasicProperties::default()
                    .with_message_id(id.into())
                    .with_delivery_mode(PERSISTENT)
                    .with_content_type("application/json".into());
                publisher.publish(reqscope::amqp::properties(properties), &payload).await
            }
        }
    }

    /// Connects to RabbitMQ now rather than at the first job, so that a start without the
    /// broker is reported at once; always `Ok` for the embedded queue.
    pub async fn connect(&self) -> Result<(), QueueUnavailable> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::RabbitMq(publisher) => match tokio::time::timeout(ENQUEUE_TIMEOUT, publisher.link()).await {
                Ok(linked) => linked.map(drop).map_err(QueueUnavailable::Broker),
                Err(_) => Err(QueueUnavailable::Timeout),
            },
        }
    }
}

/// The jobs from `AMQP_URL` (unset: the embedded queue) and `WORKER` (`1`: this process
/// consumes from RabbitMQ too); see the server's docs.
pub async fn from_env() -> Result<Jobs, String> {
    let worker = match std::env::var("WORKER") {
        Err(std::env::VarError::NotPresent) => false,
        Ok(value) if value == "0" => false,
        Ok(value) if value == "1" => true,
        Ok(value) => {
            return Err(format!("WORKER must be 1 (run RabbitMQ jobs in this process too) or 0, got {value:?}"));
        }
        Err(std::env::VarError::NotUnicode(_)) => return Err("WORKER must be 1 or 0".to_owned()),
    };
    let Some(url) = std::env::var("AMQP_URL").ok().filter(|url| !url.is_empty()) else {
        tracing::info!(queue = "embedded", "jobs run in this process");
        return Ok(Jobs::embedded());
    };
    let queue = Queue::new(&url, WELCOME_EMAIL).map_err(|error| format!("AMQP_URL {error}"))?;
    let jobs = Jobs::rabbitmq(queue.clone());
    match jobs.connect().await {
        Ok(()) => tracing::info!(queue = queue.name(), worker, "jobs go through RabbitMQ"),
        Err(error) => tracing::warn!(
            queue = queue.name(), worker, error = %ErrorChain(&error),
            "RabbitMQ is unreachable: POST /users answers 503 until it is"
        ),
    }
    if worker {
        tokio::spawn(queue.work());
    }
    Ok(jobs)
}

/// A RabbitMQ queue of welcome emails: where it is, its name. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    uri: Arc<AMQPUri>,
    name: Arc<str>,
    arguments: FieldTable,
}

impl Queue {
    /// The queue `name` on the broker at `url` (`amqp://user:password@host:port/vhost`); an
    /// error that does not repeat the URL (it may hold a password) when it is not one.
    pub fn new(url: &str, name: &str) -> Result<Queue, String> {
        let usage = "must be an amqp:// URL such as amqp://guest:guest@127.0.0.1:5672/%2f";
        let uri: AMQPUri = url.parse().map_err(|_| usage.to_owned())?;
        if uri.scheme == AMQPScheme::AMQPS {
            return Err(format!("{usage}: amqps:// needs lapin's TLS features, which the example does not enable"));
        }
        Ok(Queue { uri: Arc::new(uri), name: name.into(), arguments: FieldTable::default() })
    }

    /// A queue the broker deletes once nobody has used it for `idle` (queues made for a test).
    #[allow(dead_code)] // the example's own queue stays
    pub fn expire_after(mut self, idle: Duration) -> Queue {
        let millis = i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
        self.arguments.insert("x-expires".into(), AMQPValue::LongLongInt(millis));
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection with one channel, the queue declared on it (durable).
    async fn open(&self, confirms: bool) -> Result<Link, lapin::Error> {
        let properties =
            ConnectionProperties::default().with_connection_name(format!("reqscope example: {}", self.name).into());
        let connection = Connection::connect_uri((*self.uri).clone(), properties).await?;
        let channel = connection.create_channel().await?;
        if confirms {
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel.queue_declare(self.name.as_ref().into(), durable, self.arguments.clone()).await?;
        Ok(Link { _connection: connection, channel })
    }

    /// Consumes the queue for ever: runs each job ([`CONCURRENCY`] at a time), acks it once it
    /// ran (after queueing its retry, if it failed). When the broker goes away, waits (100 ms,
    /// doubling up to 5 s) and connects again.
    pub async fn work(self) {
        let retries = Publisher::new(self.clone());
        let mut backoff = MIN_BACKOFF;
        loop {
            let reason = match tokio::time::timeout(ENQUEUE_TIMEOUT, self.open(false)).await {
                Ok(Ok(link)) => {
                    backoff = MIN_BACKOFF;
                    match self.consume(&link, &retries).await {
                        Ok(()) => "the broker cancelled the consumer".to_owned(),
                        Err(error) => ErrorChain(&error).to_string(),
                    }
                }
                Ok(Err(error)) => ErrorChain(&error).to_string(),
                Err(_) => format!("no connection within {ENQUEUE_TIMEOUT:?}"),
            };
            tracing::warn!(
                queue = %self.name, error = %reason, retry_in_ms = backoff.as_millis() as u64,
                "not consuming; connecting again"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn consume(&self, link: &Link, retries: &Publisher) -> Result<(), lapin::Error> {
        link.channel.basic_qos(CONCURRENCY, BasicQosOptions::default()).await?;
        let mut deliveries = link
            .channel
            .basic_consume(self.name.as_ref().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        tracing::info!(queue = %self.name, prefetch = CONCURRENCY, "consuming");
        while let Some(delivery) = deliveries.next().await {
            tokio::spawn(handle(delivery?, retries.clone()));
        }
        Ok(())
    }
}

/// One connection and its channel; the connection closes when the last clone of either goes.
struct Link {
    _connection: Connection,
    channel: Channel,
}

/// Publishes with confirms over one shared connection, made on first use and made again after
/// it broke.
#[derive(Clone)]
struct Publisher {
    queue: Queue,
    link: Arc<Mutex<Option<Arc<Link>>>>,
}

impl Publisher {
    fn new(queue: Queue) -> Publisher {
        Publisher { queue, link: Arc::default() }
    }

    /// The connection, made now if there is none or it broke (one connect at a time).
    async fn link(&self) -> Result<Arc<Link>, lapin::Error> {
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref().filter(|link| link.channel.status().connected()) {
            return Ok(Arc::clone(link));
        }
        *slot = None;
        let link = Arc::new(self.queue.open(true).await?);
        *slot = Some(Arc::clone(&link));
        Ok(link)
    }

    /// Publishes and waits for the broker's confirm, for at most [`ENQUEUE_TIMEOUT`].
    async fn publish(&self, properties: BasicProperties, payload: &[u8]) -> Result<(), QueueUnavailable> {
        let mut used = None;
        let publish = async {
            let link = self.link().await.map_err(QueueUnavailable::Broker)?;
            used = Some(Arc::clone(&link));
            // Mandatory: a message no queue would take comes back instead of vanishing.
            let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
            let confirm = link
                .channel
                .basic_publish("".into(), self.queue.name.as_ref().into(), options, payload, properties)
                .await
                .map_err(QueueUnavailable::Broker)?;
            match confirm.await.map_err(QueueUnavailable::Broker)? {
                Confirmation::Ack(None) => Ok(()),
                _ => Err(QueueUnavailable::Refused),
            }
        };
        let published = tokio::time::timeout(ENQUEUE_TIMEOUT, publish).await.unwrap_or(Err(QueueUnavailable::Timeout));
        if published.is_err() {
            // Whatever went wrong, the next publish starts on a fresh connection.
            if let Some(failed) = used {
                let mut slot = self.link.lock().await;
                if slot.as_ref().is_some_and(|link| Arc::ptr_eq(link, &failed)) {
                    *slot = None;
                }
            }
        }
        published
    }
}

/// What a worker does after an attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    Done,
    Retry,
    GaveUp,
}

/// Runs one attempt of the job inside its carried context. A panic counts as a failure, as
/// an error does (the job's end line tells which).
async fn perform(job: Job, carried: Result<Carried, InvalidCarriedContext>, payload: &[u8]) -> Next {
    let attempt = job.attempt();
    let mut ran_in = None;
    let work = async {
        ran_in = RequestContext::current();
        send_welcome_email(payload).await
    };
    let result = std::panic::AssertUnwindSafe(job.run(carried, work)).catch_unwind().await;
    if matches!(result, Ok(Ok(()))) {
        return Next::Done;
    }
    if attempt < MAX_ATTEMPTS {
        return Next::Retry;
    }
    // In the job's context, so that the line names the request it was for.
    let gave_up = || tracing::error!(attempts = attempt, "welcome email dropped: gave up after the last attempt");
    match ran_in {
        Some(ctx) => RequestContext::scope_sync(ctx, gave_up),
        None => gave_up(),
    }
    Next::GaveUp
}

/// A failed attempt waits a little longer after each attempt before it is retried.
fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(100 * u64::from(attempt))
}

async fn embedded_worker(mut receiver: mpsc::Receiver<Message>, retries: mpsc::WeakSender<Message>) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY.into()));
    while let Some(message) = receiver.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let retries = retries.clone();
        tokio::spawn(async move {
            let job = Job::new(WELCOME_EMAIL).with_id(message.id.as_str()).with_attempt(message.attempt);
            let next = perform(job, Carried::from_headers(&message.headers), &message.payload).await;
            // Freed first: a retry may wait for room in the queue, which this worker makes.
            drop(slot);
            if next == Next::Retry {
                tokio::time::sleep(retry_delay(message.attempt)).await;
                let retry = Message { attempt: message.attempt + 1, ..message };
                match retries.upgrade() {
                    Some(sender) if sender.send(retry).await.is_ok() => {}
                    _ => tracing::warn!(job = WELCOME_EMAIL, "the embedded queue has stopped: a retry is lost"),
                }
            }
        });
    }
}

/// Runs a RabbitMQ delivery's job; acks it once it ran, after its retry is queued. A retry
/// that cannot be queued sends the delivery back instead, to run again.
async fn handle(delivery: Delivery, retries: Publisher) {
    let properties = &delivery.properties;
    let job = reqscope::amqp::job(WELCOME_EMAIL, properties);
    let attempt = job.attempt();
    let next = perform(job, reqscope::amqp::carried(properties), &delivery.data).await;
    if next == Next::Retry {
        tokio::time::sleep(retry_delay(attempt)).await;
        if let Err(error) = retries.publish(reqscope::amqp::retry_properties(properties), &delivery.data).await {
            tracing::warn!(error = %ErrorChain(&error), "the retry could not be queued: the delivery goes back to the queue");
            let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
            if let Err(error) = delivery.nack(requeue).await {
                tracing::warn!(error = %error, "cannot send the delivery back; RabbitMQ redelivers it when the channel closes");
            }
            return;
        }
    }
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %error, "cannot ack the delivery; RabbitMQ will deliver it again");
    }
}

/// An error and its sources, `: `-separated, for one log field.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
