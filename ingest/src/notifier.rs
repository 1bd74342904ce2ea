//! Alert notifications for integrations (DESIGN §4): every alert event the sink has
//! made durable passes the tenant's [`NotificationPolicy`] — a token bucket with
//! priorities (burst, backflow, tamper before leak before battery) that coalesces
//! repeats of an episode — and what it lets through is published on MQTT
//! `alerts/{tenant}/{meter}` and, when the tenant has a `webhook_url`, POSTed there.
//!
//! Nothing here can slow ingestion down: the sink hands events over with `try_send`
//! (a full queue drops the notification, counted — the episode itself is stored and
//! in the hot cache regardless), and webhooks are delivered by their own thread with
//! retries and backoff, so a slow receiver only delays webhooks. The Redis stream
//! `mf:{t}:alerts` is written by the cache writer with every event: it is the
//! dashboards' feed, not a push channel.

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use meterflow_model::alert::AlertEvent;
use meterflow_model::processing::ProcessorsConfig;
use meterflow_model::{MeterId, MeterKey, TenantId};
use meterflow_processors::notify::{Notification, NotificationPolicy};
use metrics::Counter;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::endpoint::registry::Registry;

/// Alert events waiting for the policy. Alerts are rare next to readings; 10,000
/// covers a storm across a large fleet while bounding memory.
pub const ALERT_QUEUE: usize = 10_000;
/// Notifications waiting for webhook delivery.
const WEBHOOK_QUEUE: usize = 10_000;
/// Webhook attempts per notification: 1 s, 2 s, 4 s, 8 s apart — about 15 s of a
/// receiver's outage is ridden out; longer outages drop (counted, logged).
const WEBHOOK_ATTEMPTS: u32 = 5;
const WEBHOOK_FIRST_RETRY: Duration = Duration::from_secs(1);
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
    /// The endpoint's alert subscribers (integrations, meters on their own topic).
    pub subscribers: std::sync::Arc<Registry>,
    /// Tenant id → webhook URL.
    pub webhooks: HashMap<String, String>,
    pub metrics: NotifierMetrics,
}

impl Notifier {
    pub fn new(
        inbox: Receiver<AlertEvent>,
        config: &ProcessorsConfig,
        subscribers: std::sync::Arc<Registry>,
        webhooks: HashMap<String, String>,
        metrics: NotifierMetrics,
    ) -> Self {
        Self {
            inbox,
            policy: NotificationPolicy::from_config(config),
            subscribers,
            webhooks,
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
        if let (Ok(tenant), Ok(meter)) = (
            TenantId::try_from(event.tenant.as_str()),
            MeterId::try_from(event.meter.as_str()),
        ) {
            let key = MeterKey::new(tenant, meter);
            let (delivered, dropped) = self
                .subscribers
                .publish_alert(&key, bytes::Bytes::from(body.clone()));
            self.metrics.published.increment(delivered as u64);
            self.metrics.dropped.increment(dropped as u64);
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

/// The JSON sent to integrations: the event plus how many repeats it stands for.
pub fn payload(notification: &Notification) -> Vec<u8> {
    let mut value = serde_json::to_value(&notification.event).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("coalesced".into(), notification.coalesced.into());
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// POSTs each notification, retrying with exponential backoff.
fn deliver_webhooks(inbox: Receiver<(String, Vec<u8>)>, failed: Counter) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(WEBHOOK_TIMEOUT))
        .build()
        .into();
    while let Ok((url, body)) = inbox.recv() {
        let mut delay = WEBHOOK_FIRST_RETRY;
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            let result = agent
                .post(&url)
                .header("content-type", "application/json")
                .send(&body[..]);
            match result {
                Ok(response) if response.status().is_success() => break,
                outcome => {
                    let reason = match outcome {
                        Ok(response) => format!("status {}", response.status()),
                        Err(e) => e.to_string(),
                    };
                    if attempt == WEBHOOK_ATTEMPTS {
                        failed.increment(1);
                        warn!(url, reason, attempts = attempt, "webhook delivery given up");
                    } else {
                        info!(url, reason, attempt, "webhook delivery failed; retrying");
                        thread::sleep(delay);
                        delay *= 2;
                    }
                }
            }
        }
    }
}
