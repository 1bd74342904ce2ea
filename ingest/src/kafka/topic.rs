//! The uplink topic, checked (or created) when an endpoint or processor starts: its
//! partition count must be `kafka.partitions`, because endpoints place each meter by
//! it and processors forget meters by it.

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

/// Creates the topic when missing; fails when it has another partition count or the
/// brokers do not answer.
pub async fn ensure(config: &KafkaConfig) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(config).create().context("kafka client")?;
    let topic = NewTopic::new(
        &config.topic,
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
                "uplink topic created"
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("kafka topic {name}: cannot create it: {code}"),
        }
    }
    let brokers = config.brokers.clone();
    let name = config.topic.clone();
    let found = tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&name), METADATA_TIMEOUT)
            .with_context(|| format!("kafka.brokers {brokers}: no metadata"))?;
        anyhow::Ok(
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .map_or(0, |t| t.partitions().len()),
        )
    })
    .await??;
    if found != config.partitions as usize {
        bail!(
            "kafka topic {} has {found} partitions but kafka.partitions is {}: they must agree \
             (endpoints place each meter by it); fix the setting or the topic",
            config.topic,
            config.partitions
        );
    }
    Ok(())
}
