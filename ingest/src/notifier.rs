//! Alert notifications for integrations (DESIGN §4): every alert event the sink has
//! made durable passes the tenant's [`NotificationPolicy`] — a token bucket with
//! priorities (burst, backflow, tamper before leak before battery) that coalesces
//! repeats of an episode — and what it lets through is published on MQTT
//! `alerts/{tenant}/{meter}` and, when the tenant has a `webhook_url`, POSTed there.
//! A processor (distributed mode) has no MQTT subscribers: it appends the notification
//! to the events topic ([`EventLog`]) instead, and every endpoint publishes it to its
//! own subscribers with [`publish_alert`], as this process would.
//!
//! Nothing here can slow ingestion down: the sink hands events over with `try_send`
//! (a full queue drops the notification, counted — the episode itself is stored and
//! in the hot cache regardless), and webhooks are delivered by their own thread, retried
//! with backon's exponential backoff and jitter while the receiver's failure is
//! transient (unreachable, timed out, 5xx, 408, 429 — not any other 4xx), so a slow
//! receiver only delays webhooks. The Redis stream
//! `mf:{t}:alerts` is written by the cache writer with every event: it is the
//! dashboards' feed, not a push channel.

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use backon::BlockingRetryable;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use meterflow_model::MeterKey;
use meterflow_model::alert::AlertEvent;
use meterflow_model::processing::ProcessorsConfig;
use meterflow_processors::notify::{Notification, NotificationPolicy};
use meterflow_storage::resilience::RetryConfig;
use metrics::Counter;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::redacted_url;
use crate::endpoint::registry::Registry;
use crate::kafka::EventLog;

/// Alert events waiting for the policy. Alerts are rare next to readings; 10,000
/// covers a storm across a large fleet while bounding memory.
pub const ALERT_QUEUE: usize = 10_000;
/// Notifications waiting for webhook delivery.
const WEBHOOK_QUEUE: usize = 10_000;
/// Webhook attempts per notification: retries after about 1 s, 2 s, 4 s and 8 s (each
/// between half and all of that, jittered) — 7.5-15 s of a receiver's outage is ridden
/// out; longer outages drop (counted, logged). Short, because the delivery thread is
/// one queue: a receiver that stays down must not hold the others' notifications.
const WEBHOOK_RETRY: RetryConfig = RetryConfig {
    max_attempts: 5,
    initial_backoff_ms: 1_000,
    max_backoff_ms: 8_000,
};
/// Per-request timeout: a webhook that hangs must not hold the queue for long.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the notifier sleeps without checking the policy's buckets.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Counters of what happened to notifications.
#[derive(Clone)]
pub struct NotifierMetrics {
    pub published: Counter,
    pub dropped: Counter,
    pub webhook_failed: Counter,
}

pub struct Notifier {
    pub inbox: Receiver<AlertEvent>,
    pub policy: NotificationPolicy,
    /// The endpoint's alert subscribers (integrations, meters on their own topic);
    /// none in a processor.
    pub subscribers: std::sync::Arc<Registry>,
    /// Tenant id → webhook URL.
    pub webhooks: HashMap<String, String>,
    /// The events topic, in a processor: the endpoints' subscribers are reached there.
    pub events: Option<std::sync::Arc<dyn EventLog>>,
    pub metrics: NotifierMetrics,
}

impl Notifier {
    pub fn new(
        inbox: Receiver<AlertEvent>,
        config: &ProcessorsConfig,
        subscribers: std::sync::Arc<Registry>,
        webhooks: HashMap<String, String>,
        events: Option<std::sync::Arc<dyn EventLog>>,
        metrics: NotifierMetrics,
    ) -> Self {
        Self {
            inbox,
            policy: NotificationPolicy::from_config(config),
            subscribers,
            webhooks,
            events,
            metrics,
        }
    }

    pub fn spawn(self) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("notifier".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let (webhook_tx, webhook_rx) = bounded(WEBHOOK_QUEUE);
        let failed = self.metrics.webhook_failed.clone();
        if !self.webhooks.is_empty()
            && let Err(e) = thread::Builder::new()
                .name("webhooks".into())
                .spawn(move || deliver_webhooks(webhook_rx, failed))
        {
            warn!(error = %e, "cannot start the webhook thread; webhooks are off");
        }
        let mut wait = IDLE_POLL;
        let mut ready = Vec::new();
        loop {
            match self.inbox.recv_timeout(wait) {
                Ok(event) => self.policy.offer(event, now_ms()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = now_ms();
            let next = self.policy.poll(now, &mut ready);
            for notification in ready.drain(..) {
                self.deliver(notification, &webhook_tx);
            }
            wait = next.map_or(IDLE_POLL, |at| {
                Duration::from_millis((at - now).clamp(1, 1_000) as u64)
            });
        }
    }

    fn deliver(&mut self, notification: Notification, webhooks: &Sender<(String, Vec<u8>)>) {
        let event = &notification.event;
        let body = payload(&notification);
        if let Ok(key) = MeterKey::parse(event.tenant.as_bytes(), event.meter.as_bytes()) {
            match &self.events {
                Some(events) => events.alert(&key, &body),
                None => publish_alert(
                    &self.subscribers,
                    &key,
                    bytes::Bytes::from(body.clone()),
                    &self.metrics,
                ),
            }
        }
        if let Some(url) = self.webhooks.get(&event.tenant) {
            match webhooks.try_send((url.clone(), body)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.metrics.dropped.increment(1);
                    warn!(
                        tenant = event.tenant,
                        "webhook queue full: notification dropped (the alert is stored)"
                    );
                }
            }
        }
    }
}

/// Publishes a notification's JSON to the MQTT subscribers of `meter`'s alert topic
/// connected to this process, counting who got it and who was too far behind.
pub fn publish_alert(
    subscribers: &Registry,
    meter: &MeterKey,
    payload: bytes::Bytes,
    metrics: &NotifierMetrics,
) {
    let (delivered, dropped) = subscribers.publish_alert(meter, payload);
    metrics.published.increment(delivered as u64);
    metrics.dropped.increment(dropped as u64);
}

/// The JSON sent to integrations: the event plus how many repeats it stands for.
pub fn payload(notification: &Notification) -> Vec<u8> {
    let mut value = serde_json::to_value(&notification.event).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("coalesced".into(), notification.coalesced.into());
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Why one webhook POST failed.
#[derive(Debug, thiserror::Error)]
enum WebhookFailure {
    /// The receiver answered with a status that is not 2xx.
    #[error("status {0}")]
    Status(u16),
    /// No answer: connection, DNS, TLS, timeout or protocol trouble.
    #[error(transparent)]
    Transport(ureq::Error),
}

impl WebhookFailure {
    /// Whether the receiver may take the notification later: it was unreachable,
    /// slow, failing (5xx) or asked to come back (408, 429). Another 4xx refuses this
    /// request, and would refuse it again.
    fn is_transient(&self) -> bool {
        match self {
            WebhookFailure::Status(status) => *status >= 500 || matches!(status, 408 | 429),
            WebhookFailure::Transport(error) => matches!(
                error,
                ureq::Error::Io(_)
                    | ureq::Error::Timeout(_)
                    | ureq::Error::HostNotFound
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::Protocol(_)
            ),
        }
    }
}

/// One POST of `body` to `url`.
fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<(), WebhookFailure> {
    match agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
    {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(WebhookFailure::Status(response.status().as_u16())),
        Err(ureq::Error::StatusCode(status)) => Err(WebhookFailure::Status(status)),
        Err(error) => Err(WebhookFailure::Transport(error)),
    }
}

/// POSTs each notification, retrying per [`WEBHOOK_RETRY`] while the failure is
/// transient.
fn deliver_webhooks(inbox: Receiver<(String, Vec<u8>)>, failed: Counter) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(WEBHOOK_TIMEOUT))
        .build()
        .into();
    while let Ok((url, body)) = inbox.recv() {
        // A webhook URL may carry a password.
        let shown = redacted_url(&url);
        let mut attempt = 1u32;
        let delivered = (|| post(&agent, &url, &body))
            .retry(WEBHOOK_RETRY.backoff())
            .sleep(thread::sleep)
            .when(WebhookFailure::is_transient)
            .notify(|reason, delay: Duration| {
                info!(url = shown, %reason, attempt, retry_in_ms = delay.as_millis() as u64, "webhook delivery failed; retrying");
                attempt += 1;
            })
            .call();
        if let Err(reason) = delivered {
            failed.increment(1);
            warn!(url = shown, %reason, attempts = attempt, "webhook delivery given up");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_failures_that_may_heal_are_retried_refusals_are_not() {
        for status in [500, 502, 503, 408, 429] {
            assert!(WebhookFailure::Status(status).is_transient(), "{status}");
        }
        for status in [400, 401, 403, 404, 410, 422] {
            assert!(!WebhookFailure::Status(status).is_transient(), "{status}");
        }
        assert!(WebhookFailure::Transport(ureq::Error::ConnectionFailed).is_transient());
        assert!(WebhookFailure::Transport(ureq::Error::HostNotFound).is_transient());
        assert!(!WebhookFailure::Transport(ureq::Error::BadUri("x".into())).is_transient());
    }

    #[test]
    fn webhook_retries_are_bounded() {
        use backon::BackoffBuilder;
        let delays: Vec<Duration> = WEBHOOK_RETRY.backoff().build().collect();
        assert_eq!(delays.len(), 4);
        let total: Duration = delays.iter().sum();
        assert!(
            total >= Duration::from_millis(7_500) && total <= Duration::from_secs(15),
            "{total:?}"
        );
    }
}
