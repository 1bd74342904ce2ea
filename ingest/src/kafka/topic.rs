//! meterflow's topics, checked (or created) when an endpoint or processor starts: the
//! uplink topic (`kafka.topic`) and the events topic (`kafka.events_topic`). Their
//! partition count must be `kafka.partitions`, because each meter is placed by it
//! (endpoints place its uplinks, processors its events) and processors forget meters
//! by it.

use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use tracing::info;

use super::config::KafkaConfig;

/// How long start-up waits for the brokers to answer.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between metadata requests while a new topic propagates.
const METADATA_RETRY: Duration = Duration::from_millis(200);

/// The settings every client of meterflow's shares: the brokers and the
/// pass-through properties (TLS, SASL).
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// Creates `name` (one of the config's topics) when missing; fails when it has another
/// partition count than `kafka.partitions` or the brokers do not answer.
pub async fn ensure(config: &KafkaConfig, name: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(config).create().context("kafka client")?;
    let topic = NewTopic::new(
        name,
        i32::try_from(config.partitions).unwrap_or(i32::MAX),
        TopicReplication::Fixed(i32::from(config.replication_factor)),
    );
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let created = admin
        .create_topics([&topic], &options)
        .await
        .with_context(|| format!("kafka.brokers {}: no answer", config.brokers))?;
    for result in created {
        match result {
            Ok(name) => info!(
                topic = name,
                partitions = config.partitions,
                "kafka topic created"
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("kafka topic {name}: cannot create it: {code}"),
        }
    }
    let brokers = config.brokers.clone();
    let wanted = name.to_string();
    // A topic created a moment ago may not be in the brokers' metadata yet (it shows
    // with no partitions): ask again until it is, within the metadata timeout.
    let found = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + METADATA_TIMEOUT;
        loop {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(&wanted), METADATA_TIMEOUT)
                .with_context(|| format!("kafka.brokers {brokers}: no metadata"))?;
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == wanted)
                .map_or(0, |t| t.partitions().len());
            if found > 0 || std::time::Instant::now() >= deadline {
                return anyhow::Ok(found);
            }
            std::thread::sleep(METADATA_RETRY);
        }
    })
    .await??;
    if found != config.partitions as usize {
        bail!(
            "kafka topic {name} has {found} partitions but kafka.partitions is {}: they must \
             agree (each meter is placed by it); fix the setting or the topic",
            config.partitions
        );
    }
    Ok(())
}
