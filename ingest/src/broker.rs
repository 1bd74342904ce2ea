//! The embedded MQTT broker (rumqttd, pinned `=0.20.0`), configured in code from our
//! configuration, and the local link the pipeline reads uplinks from.
//!
//! How we live with rumqttd's sharp edges (DESIGN §2, §6, §7):
//! - it PUBACKs a QoS 1 publish before anyone has read it and keeps it only in memory,
//!   so a PUBACK means nothing to a meter: the ack topic, sent after the durable
//!   write, is what makes delivery end to end;
//! - when the local link falls behind, the router skips messages silently (a "cursor
//!   jump"); we subscribe to its alerts and count them in
//!   `meterflow_broker_skipped_total` — the meters resend what was skipped;
//! - it has no topic ACLs and does not say who published; the payload MAC and the
//!   topic checks in the shard worker stand in;
//! - a bind failure is only logged inside its server thread, so we check the port is
//!   free before and that it answers after;
//! - TLS runs unbounded in its accept loop: we build it without TLS and terminate TLS
//!   in front (DESIGN §7);
//! - it never sets `TCP_NODELAY` on accepted sockets, so acks waited behind Nagle;
//!   we set it on its listening socket, which accepted sockets inherit (`nodelay`);
//! - every subscribed filter gets a commit log sized like the uplink one; ack and
//!   alert filters get small ones here (see `rumqttd_config`).
//!
//! The local link subscribes to `meters/+/+/up` before `start()` (which never
//! returns, so it gets its own thread).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meterflow_model::topic::{ACK_FILTER, ALERTS_FILTER, UPLINK_FILTER};
use rumqttd::alerts::AlertsLink;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Alert, Broker};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::metrics::PipelineMetrics;
use crate::tenants::Tenants;

/// Client id of the pipeline's own link into the router.
const LINK_CLIENT_ID: &str = "meterflow-ingest";
/// Client id of the notifier's link.
const ALERTS_CLIENT_ID: &str = "meterflow-alerts";
/// Commit log of one ack-topic filter: rumqttd's minimum segment (smaller panics).
const ACK_LOG_BYTES: usize = 1024;
/// Commit log of one alert-topic filter, per segment (two kept): alert notifications
/// are rare, so a megabyte holds thousands for a subscriber that reconnects.
const ALERTS_LOG_BYTES: usize = 1024 * 1024;
/// How long the broker gets to start listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Broker connection limit above our own payload limit: payloads up to twice the
/// limit reach the pipeline and become `payload_too_large` dead letters; beyond that
/// rumqttd drops the connection itself.
fn broker_max_payload(config: &Config) -> usize {
    config.limits.max_payload_bytes * 2 + 1024
}

/// The running broker's handles.
pub struct EmbeddedBroker {
    /// Publishes acks into the router.
    pub link_tx: LinkTx,
    /// Publishes alert notifications (`alerts/{tenant}/{meter}`) into the router: a
    /// link of its own so the notifier never contends with the ack publisher.
    pub alerts_tx: LinkTx,
    /// Uplinks forwarded by the router.
    pub link_rx: LinkRx,
    pub listen: SocketAddr,
}

/// Builds rumqttd's configuration. rumqttd's config types keep some fields private,
/// so it is assembled as the same structure its TOML would have.
fn rumqttd_config(config: &Config) -> anyhow::Result<rumqttd::Config> {
    let m = &config.mqtt;
    let value = serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": m.max_connections,
            // Outgoing packets queued per connection: the meter side only gets acks.
            "max_outgoing_packet_count": 200,
            "max_segment_size": m.segment_bytes,
            "max_segment_count": m.max_segments,
            // rumqttd keeps a commit log per subscribed filter, sized by the two
            // settings above unless overridden here. Every meter subscribes to its own
            // ack topic, so with the defaults each meter's log could grow to 256 MiB of
            // acks already delivered. Acks are cumulative: a connection that falls
            // behind may skip to the newest, so one minimal segment per ack filter
            // (~30 acks) loses nothing and bounds the broker's memory per meter.
            // Alert subscriptions get a modest log of their own for the same reason.
            "custom_segment": {
                (ACK_FILTER): { "max_segment_size": ACK_LOG_BYTES, "max_segment_count": 1 },
                (ALERTS_FILTER): {
                    "max_segment_size": ALERTS_LOG_BYTES,
                    "max_segment_count": 2,
                },
            },
        },
        "v4": { "1": {
            "name": "mqtt-v4",
            "listen": m.listen.to_string(),
            "next_connection_delay_ms": 0,
            "connections": {
                "connection_timeout_ms": u64::from(m.connect_timeout_s) * 1000,
                "max_payload_size": broker_max_payload(config),
                "max_inflight_count": 100,
                "dynamic_filters": true,
            },
        }},
        // Makes the router push its alerts (cursor jumps) every second. Both kinds
        // must be set: rumqttd's timer unwraps the meters interval even when only
        // alerts are configured, and the panic would silently stop the alerts.
        "metrics": {
            "alerts": { "push_interval": 1 },
            "meters": { "push_interval": 60 },
        },
    });
    let mut broker: rumqttd::Config =
        serde_json::from_value(value).context("building the broker configuration")?;
    if config.mqtt_auth_enabled() {
        let tenants = Arc::new(Tenants::from_config(config));
        for server in broker
            .v4
            .iter_mut()
            .flat_map(|servers| servers.values_mut())
        {
            let tenants = tenants.clone();
            server.set_auth_handler(move |client_id, user, pass| {
                let ok = tenants.check_login(&client_id, &user, &pass);
                if !ok {
                    warn!(client_id, "mqtt login refused");
                }
                async move { ok }
            });
        }
    }
    Ok(broker)
}

/// Starts the broker and the pipeline's link into it.
pub fn start(config: &Config, metrics: PipelineMetrics) -> anyhow::Result<EmbeddedBroker> {
    let listen = config.mqtt.listen;
    // rumqttd only logs a bind error from its own thread; find out here instead.
    drop(TcpListener::bind(listen).with_context(|| {
        format!("mqtt.listen {listen} is not free (another meterflow or MQTT broker running?)")
    })?);

    let mut broker = Broker::new(rumqttd_config(config)?);
    let (mut link_tx, link_rx) = broker
        .link(LINK_CLIENT_ID)
        .context("linking the pipeline to the broker")?;
    link_tx
        .subscribe(UPLINK_FILTER)
        .context("subscribing to uplinks")?;
    // Subscribed to nothing, so its receiving side never fills: it only publishes.
    let (alerts_tx, _alerts_rx) = broker
        .link(ALERTS_CLIENT_ID)
        .context("linking the notifier to the broker")?;
    let alerts = broker.alerts().context("subscribing to broker alerts")?;
    thread::Builder::new()
        .name("mqtt-alerts".into())
        .spawn(move || count_skips(alerts, metrics))?;
    thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                error!(error = %e, "mqtt broker stopped");
            }
        })?;
    wait_until_listening(listen)?;
    // Expected to fail under a container runtime's default seccomp profile (see
    // docs/operations.md), so not a warning.
    if let Err(error) = crate::nodelay::set_on_listener(listen) {
        info!(%error, "TCP_NODELAY not set on the broker's listener: acks may wait for the meters' delayed ACKs behind Nagle");
    }
    Ok(EmbeddedBroker {
        link_tx,
        alerts_tx,
        link_rx,
        listen,
    })
}

fn wait_until_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the mqtt broker did not start listening on {addr} within {LISTEN_TIMEOUT:?}; see the log above"
    )
}

/// Counts messages the router skipped for the pipeline's link.
fn count_skips(alerts: AlertsLink, metrics: PipelineMetrics) {
    while let Ok(batch) = alerts.router_rx.recv() {
        for alert in batch {
            record_alert(&alert, &metrics);
        }
    }
}

/// rumqttd does not export its alert kind type, only its serde form:
/// `{"CursorJump": {"filter": "...", "lost": N}}`.
fn record_alert(alert: &Alert, metrics: &PipelineMetrics) {
    let Ok(kind) = serde_json::to_value(&alert.kind) else {
        return;
    };
    if let Some(jump) = kind.get("CursorJump") {
        let lost = jump.get("lost").and_then(|l| l.as_u64()).unwrap_or(0);
        let filter = jump.get("filter").and_then(|f| f.as_str()).unwrap_or("");
        metrics.broker_skipped.increment(lost);
        warn!(
            client_id = alert.client_id,
            filter, lost, "broker skipped uplinks: the pipeline fell behind; meters will resend"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_and_alert_logs_are_small_and_the_uplink_log_follows_the_config() {
        let config = Config::default();
        let broker = rumqttd_config(&config).unwrap();
        let router = &broker.router;
        assert_eq!(router.max_segment_size, config.mqtt.segment_bytes);
        assert_eq!(router.max_segment_count, config.mqtt.max_segments);
        let custom = router.custom_segment.as_ref().unwrap();
        let ack = &custom[ACK_FILTER];
        assert_eq!((ack.max_segment_size, ack.max_segment_count), (1024, 1));
        let alerts = &custom[ALERTS_FILTER];
        assert_eq!(alerts.max_segment_count, 2);
        // rumqttd applies an override to every filter its key matches as a topic: each
        // meter's ack filter, never the uplink filter.
        assert!(rumqttd::protocol::matches(
            "meters/demo/m000001/ack",
            ACK_FILTER
        ));
        assert!(!rumqttd::protocol::matches(UPLINK_FILTER, ACK_FILTER));
        assert!(!rumqttd::protocol::matches(UPLINK_FILTER, ALERTS_FILTER));
    }
}
