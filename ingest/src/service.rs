//! Wires the pipeline together and runs it: meter endpoint → shard workers → sink
//! (→ PUBACKs and acks, cache), plus the HTTP server. [`Service::start`] returns once everything
//! listens; [`Service::shutdown`] seals and drains what the shards hold;
//! [`Service::store_refused`] resolves if the sink had to stop.
//!
//! One tokio runtime per process: the caller's (the binary builds it), which runs the
//! endpoint and HTTP and, through its handle, the ScyllaDB and Redis clients. Shards,
//! the sink and the notifier are OS threads.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, bounded};
use meterflow_model::alert::AlertEvent;
use meterflow_processors::analytics::DistrictRollup;
use meterflow_processors::{ProcessorChain, TenantDirectory};
use meterflow_storage::StoreError;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::info;

use crate::backends;
use crate::cache_writer::CacheWriter;
use crate::config::Config;
use crate::dormant::{DormantMeters, MeterFilter};
use crate::endpoint::{
    self,
    handoff::{Handoff, ShardRouter},
};
use crate::http::{self, AppState};
use crate::kafka::EventLog;
use crate::kafka::lease::{self, OwnershipLease};
use crate::metrics::{self, EndpointMetrics, PipelineMetrics, TenantStored};
use crate::notifier::{ALERT_QUEUE, Notifier};
use crate::shard::{DurableBatches, ShardSettings, ShardWorker};
use crate::sink::Sink;
use crate::tenants::Tenants;

/// A running meterflow.
pub struct Service {
    /// The meter endpoint's listeners (not in `processor` mode).
    pub mqtt_addr: Option<std::net::SocketAddr>,
    pub mqtt_tls_addr: Option<std::net::SocketAddr>,
    pub http_addr: std::net::SocketAddr,
    /// Shards and sink (not in `endpoint` mode).
    pipeline: Option<Pipeline>,
    /// What feeds the pipeline in `processor` mode.
    #[cfg(feature = "kafka")]
    consumer: Option<crate::kafka::consumer::LogConsumer>,
    /// Where the endpoint hands uplinks in `endpoint` mode.
    #[cfg(feature = "kafka")]
    producer: Option<Arc<crate::kafka::producer::LogProducer>>,
    /// `processor` mode: where the sink and the notifier tell the endpoints.
    #[cfg(feature = "kafka")]
    events: Option<Arc<crate::kafka::events::EventProducer>>,
    /// `endpoint` mode: what the processors tell this endpoint's meters and subscribers.
    #[cfg(feature = "kafka")]
    event_feed: Option<crate::kafka::events::EventFeed>,
    http_task: tokio::task::JoinHandle<()>,
    /// The error of a group commit the store refused for good (the sink stopped).
    refused: oneshot::Receiver<StoreError>,
}

/// The shard workers and the sink.
struct Pipeline {
    /// The way into the shards; closed at shutdown. Connection tasks hold clones, so
    /// shards are stopped through `stop_shards`.
    router: ShardRouter,
    shard_threads: Vec<JoinHandle<()>>,
    sink_thread: JoinHandle<()>,
    stop_shards: Arc<AtomicBool>,
    /// Lists stored meters for the shards to watch.
    dormant: Arc<DormantMeters>,
}

/// What the pipeline shares with the rest of the service.
struct Shared {
    config: Config,
    store: Arc<dyn meterflow_storage::ReadingStore>,
    cache: Arc<dyn meterflow_storage::HotCache>,
    tenants: Arc<Tenants>,
    store_healthy: Arc<AtomicBool>,
    metrics: PipelineMetrics,
}

impl Service {
    /// Starts every part this process runs (`mode`): the endpoint and HTTP on the
    /// current tokio runtime (a multi-thread one: the store and cache clients run on
    /// it too), shards and the sink on OS threads.
    pub async fn start(config: Config) -> anyhow::Result<Service> {
        config.validate().map_err(|errors| {
            anyhow::anyhow!("invalid configuration:\n  {}", errors.join("\n  "))
        })?;
        let prometheus = metrics::install();
        let pipeline_metrics = PipelineMetrics::register();

        let opening = config.clone();
        // The store's and the cache's async clients run on this (the service's) runtime.
        let runtime = tokio::runtime::Handle::current();
        let contributor = backends::contributor(&config);
        if let Some(contributor) = &contributor {
            info!(
                contributor,
                "district, top and summary figures are written as this run's share"
            );
        }
        let (store, cache) = tokio::task::spawn_blocking(move || {
            let contributor = contributor.as_deref();
            anyhow::Ok((
                backends::open_store(&opening, &runtime, contributor)?,
                backends::open_cache(&opening, &runtime, contributor)?,
            ))
        })
        .await??;
        let shared = Shared {
            tenants: Arc::new(Tenants::from_config(&config)),
            store_healthy: Arc::new(AtomicBool::new(true)),
            config,
            store,
            cache,
            metrics: pipeline_metrics,
        };
        let config = &shared.config;

        let http_listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("http.listen {} is not free", config.http.listen))?;
        let http_addr = http_listener.local_addr()?;

        #[cfg(feature = "kafka")]
        let events = match config.mode.consumes_log() {
            true => Some(Arc::new(
                crate::kafka::events::EventProducer::connect(&config.kafka).await?,
            )),
            false => None,
        };
        #[cfg(feature = "kafka")]
        let event_log = events.clone().map(|e| e as Arc<dyn EventLog>);
        #[cfg(not(feature = "kafka"))]
        let event_log: Option<Arc<dyn EventLog>> = None;
        // Which stored meters the shards may hydrate unasked: every one in embedded
        // mode; in a processor, those of the partitions it owns at that moment.
        #[cfg(feature = "kafka")]
        let partitions = Arc::new(crate::kafka::consumer::OwnedPartitions::new(
            config.kafka.partitions,
        ));
        let owned: MeterFilter = match config.mode.consumes_log() {
            #[cfg(feature = "kafka")]
            true => {
                let partitions = partitions.clone();
                Arc::new(move |meter| partitions.owns(meter))
            }
            _ => Arc::new(|_| true),
        };
        let (refused_tx, refused) = oneshot::channel();
        let (pipeline, alerts) = match config.mode.runs_pipeline() {
            true => {
                let (pipeline, alerts) =
                    Pipeline::start(&shared, refused_tx, event_log.clone(), owned)?;
                (Some(pipeline), Some(alerts))
            }
            false => (None, None),
        };
        #[cfg(feature = "kafka")]
        let producer = match config.mode.appends_to_log() {
            true => Some(crate::kafka::producer::LogProducer::connect(&config.kafka).await?),
            false => None,
        };
        let endpoint = if config.mode.runs_endpoint() {
            let handoff = match (&pipeline, config.mode.appends_to_log()) {
                (Some(pipeline), false) => Handoff::Shards(pipeline.router.clone()),
                #[cfg(feature = "kafka")]
                _ => Handoff::Log(producer.clone().context("this mode has a producer")?),
                #[cfg(not(feature = "kafka"))]
                _ => anyhow::bail!("mode {} needs the kafka feature", config.mode.as_str()),
            };
            Some(
                endpoint::start(
                    config,
                    shared.tenants.clone(),
                    handoff,
                    EndpointMetrics::register(&shared.metrics),
                )
                .await?,
            )
        } else {
            None
        };
        #[cfg(feature = "kafka")]
        let event_feed = match (&endpoint, config.mode.appends_to_log()) {
            (Some(endpoint), true) => Some(
                crate::kafka::events::EventFeed::start(
                    &config.kafka,
                    endpoint.registry.clone(),
                    shared.metrics.acks.clone(),
                    shared.metrics.notifier(),
                )
                .await?,
            ),
            _ => None,
        };
        #[cfg(feature = "kafka")]
        let consumer = match (&pipeline, config.mode.consumes_log()) {
            (Some(pipeline), true) => Some(
                crate::kafka::consumer::LogConsumer::start(
                    &config.kafka,
                    pipeline.router.clone(),
                    pipeline.dormant.clone(),
                    partitions,
                )
                .await?,
            ),
            _ => None,
        };
        if let Some(alerts) = alerts {
            // Alert events go to webhooks, and to MQTT subscribers: of this process's
            // endpoint in embedded mode, of every endpoint's (this one's included)
            // through the events topic when the shards are fed from the log.
            let registry = match (&endpoint, &event_log) {
                (Some(endpoint), None) => endpoint.registry.clone(),
                _ => Default::default(),
            };
            let webhooks = config
                .effective_tenants()
                .into_iter()
                .filter_map(|t| Some((t.id.clone(), t.webhook_url.clone()?)))
                .collect();
            Notifier::new(
                alerts,
                &config.processors,
                registry,
                webhooks,
                event_log,
                shared.metrics.notifier(),
            )
            .spawn()?;
        }
        let app = http::router(AppState {
            store: shared.store.clone(),
            cache: shared.cache.clone(),
            tenants: shared.tenants.clone(),
            prometheus,
            store_healthy: shared.store_healthy.clone(),
            mqtt_probe: endpoint.as_ref().map(|endpoint| http::MqttProbe {
                addr: endpoint::probe::probe_addr(endpoint.listen),
                secret: endpoint.probe_secret.clone(),
            }),
            processing: Arc::new(config.processors.clone()),
            orders: order_handoff(
                config,
                pipeline.as_ref(),
                #[cfg(feature = "kafka")]
                producer.as_ref(),
            ),
        });
        let http_limits = http::ServeLimits {
            max_connections: config.http.max_connections,
            header_timeout: Duration::from_secs(config.http.header_timeout_s),
            idle_timeout: Duration::from_secs(config.http.idle_timeout_s),
        };
        let http_task = tokio::spawn(http::serve(http_listener, app, http_limits));
        info!(
            mode = config.mode.as_str(),
            mqtt = ?endpoint.as_ref().map(|e| e.listen),
            mqtt_tls = ?endpoint.as_ref().and_then(|e| e.tls_listen),
            max_connections = endpoint.as_ref().map(|e| e.max_connections),
            http = %http_addr,
            shards = pipeline.as_ref().map(|p| p.shard_threads.len()),
            store = config.store.backend,
            cache = crate::config::redacted_url(&config.cache.backend),
            "meterflow running"
        );
        Ok(Service {
            mqtt_addr: endpoint.as_ref().map(|e| e.listen),
            mqtt_tls_addr: endpoint.as_ref().and_then(|e| e.tls_listen),
            http_addr,
            pipeline,
            #[cfg(feature = "kafka")]
            consumer,
            #[cfg(feature = "kafka")]
            producer,
            #[cfg(feature = "kafka")]
            events,
            #[cfg(feature = "kafka")]
            event_feed,
            http_task,
            refused,
        })
    }

    /// Resolves with the store's error if the sink stopped because the store refused
    /// a group commit for good (a rejected statement, unreadable data): the service
    /// cannot make anything durable any more, and the caller should exit so that it is
    /// restarted. Never resolves otherwise.
    pub async fn store_refused(&mut self) -> StoreError {
        match (&mut self.refused).await {
            Ok(error) => error,
            // The sink stopped normally (shutdown), or this process has none.
            Err(_) => std::future::pending().await,
        }
    }

    /// Seals what the shards hold, waits until it is durable and acked (in `processor`
    /// mode: its offsets committed; in `endpoint` mode: the log has answered what was
    /// handed to it; in `combined` mode both), then stops. Uplinks not yet handed over are not taken: their
    /// meters get no PUBACK and resend them.
    pub fn shutdown(self) {
        #[cfg(feature = "kafka")]
        if let Some(consumer) = &self.consumer {
            consumer.stop_feeding();
        }
        if let Some(pipeline) = self.pipeline {
            pipeline.shutdown();
        }
        #[cfg(feature = "kafka")]
        if let Some(consumer) = self.consumer {
            consumer.finish();
        }
        #[cfg(feature = "kafka")]
        if let Some(producer) = &self.producer {
            producer.flush(LOG_FLUSH_TIMEOUT);
        }
        #[cfg(feature = "kafka")]
        if let Some(events) = &self.events {
            events.flush(LOG_FLUSH_TIMEOUT);
        }
        #[cfg(feature = "kafka")]
        if let Some(feed) = self.event_feed {
            feed.stop();
        }
        self.http_task.abort();
        info!("meterflow stopped: everything taken in is durable and acked");
    }
}

/// How long an endpoint (or a processor, for its events) waits at shutdown for the
/// log to answer what it holds.
#[cfg(feature = "kafka")]
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

impl Pipeline {
    /// Shard workers and the sink on OS threads; also the alert events the sink will
    /// send, for the notifier. The shards hydrate listed meters only while `owned`
    /// passes them ([`crate::dormant`]).
    fn start(
        shared: &Shared,
        refused: oneshot::Sender<StoreError>,
        events: Option<Arc<dyn EventLog>>,
        owned: MeterFilter,
    ) -> anyhow::Result<(Pipeline, Receiver<AlertEvent>)> {
        let config = &shared.config;
        let p = &config.pipeline;
        let shards = p.shard_count();
        let (router, inboxes) = ShardRouter::new(shards, p.shard_queue);
        let (sink_tx, sink_rx) = bounded(p.sink_queue);
        let settings = ShardSettings {
            limits: config.limits.clone(),
            batch_readings: p.batch_readings,
            linger: Duration::from_millis(p.linger_ms),
            resend_window_ms: (p.resend_window_s * 1000) as i64,
            sweep_interval: Duration::from_secs(p.sweep_interval_s),
            dead_letter_rate: p.dead_letter_rate(),
            held_meters: p.held_meters_per_shard(),
        };
        let stop_shards = Arc::new(AtomicBool::new(false));
        let (dormant, dormant_queues) =
            DormantMeters::new(shared.store.clone(), shards, owned, stop_shards.clone());
        // A processor lists the meters of each partition it is assigned
        // (`kafka::consumer`); embedded mode owns every meter from the start.
        if !config.mode.consumes_log() {
            dormant.list("every stored meter", Arc::new(|_| true));
        }
        let durable = DurableBatches::new(shards);
        let mut shard_threads = Vec::with_capacity(shards);
        for ((shard, inbox), dormant) in inboxes.into_iter().enumerate().zip(dormant_queues) {
            let worker = ShardWorker::new(
                shard,
                settings.clone(),
                inbox,
                dormant,
                sink_tx.clone(),
                durable.clone(),
                shared.store.clone(),
                shared.tenants.clone(),
                ProcessorChain::for_tenants(config.processors.clone())
                    .map_err(|e| anyhow::anyhow!("processors: {}", e.problems.join("; ")))?,
                shared.metrics.clone(),
                stop_shards.clone(),
            );
            shard_threads.push(worker.spawn()?);
        }
        drop(sink_tx);
        let (alert_tx, alert_rx) = bounded(ALERT_QUEUE);
        let sink_thread = Sink {
            inbox: sink_rx,
            store: shared.store.clone(),
            cache: CacheWriter::new(shared.cache.clone(), shared.metrics.clone()),
            rollup: DistrictRollup::with_settings(shards, &config.processors.analytics),
            tenants: TenantDirectory::resolve(&config.processors)
                .map_err(|e| anyhow::anyhow!("processors configuration: {e}"))?,
            seed_from_published: !config.mode.consumes_log(),
            alerts: alert_tx,
            events,
            metrics: shared.metrics.clone(),
            tenant_stored: TenantStored::default(),
            store_healthy: shared.store_healthy.clone(),
            retry: backends::commit_retry(config),
            refused,
            durable,
            ownership: if config.mode.consumes_log() {
                let tolerance = lease::tolerance(&config.kafka.properties);
                Some(OwnershipLease::start(tolerance)?)
            } else {
                None
            },
        }
        .spawn()?;
        Ok((
            Pipeline {
                router,
                shard_threads,
                sink_thread,
                stop_shards,
                dormant: Arc::new(dormant),
            },
            alert_rx,
        ))
    }

    fn shutdown(self) {
        self.router.close();
        self.stop_shards
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.shard_threads {
            let _ = thread.join();
        }
        self.dormant.join();
        let _ = self.sink_thread.join();
    }
}

/// Where the HTTP API hands operators' orders: the meter's shard in embedded mode,
/// the uplink log wherever this process appends to it (the meter's processor applies
/// them); a processor-only replica takes none.
fn order_handoff(
    config: &Config,
    pipeline: Option<&Pipeline>,
    #[cfg(feature = "kafka")] producer: Option<&Arc<crate::kafka::producer::LogProducer>>,
) -> Option<Arc<Handoff>> {
    #[cfg(feature = "kafka")]
    if config.mode.appends_to_log() {
        return producer.map(|producer| Arc::new(Handoff::Log(producer.clone())));
    }
    pipeline
        .filter(|_| !config.mode.consumes_log())
        .map(|pipeline| Arc::new(Handoff::Shards(pipeline.router.clone())))
}
