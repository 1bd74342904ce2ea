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
use crossbeam_channel::bounded;
use meterflow_processors::ProcessorChain;
use meterflow_processors::analytics::DistrictRollup;
use meterflow_storage::StoreError;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::info;

use crate::backends;
use crate::cache_writer::CacheWriter;
use crate::config::Config;
use crate::endpoint::{self, handoff::ShardRouter};
use crate::http::{self, AppState};
use crate::metrics::{self, EndpointMetrics, PipelineMetrics, TenantStored};
use crate::notifier::{ALERT_QUEUE, Notifier};
use crate::shard::{ShardSettings, ShardWorker};
use crate::sink::Sink;
use crate::tenants::Tenants;

/// A running meterflow.
pub struct Service {
    pub mqtt_addr: std::net::SocketAddr,
    pub mqtt_tls_addr: Option<std::net::SocketAddr>,
    pub http_addr: std::net::SocketAddr,
    /// The endpoint's way into the shards; closed by [`Service::shutdown`]. Connection
    /// tasks hold clones, so shards are stopped through `stop_shards`.
    router: ShardRouter,
    shard_threads: Vec<JoinHandle<()>>,
    sink_thread: JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
    stop_shards: Arc<AtomicBool>,
    /// The error of a group commit the store refused for good (the sink stopped).
    refused: oneshot::Receiver<StoreError>,
}

impl Service {
    /// Starts every part: the endpoint and HTTP on the current tokio runtime (a
    /// multi-thread one: the store and cache clients run on it too), shards and the
    /// sink on OS threads.
    pub async fn start(config: Config) -> anyhow::Result<Service> {
        config.validate().map_err(|errors| {
            anyhow::anyhow!("invalid configuration:\n  {}", errors.join("\n  "))
        })?;
        let prometheus = metrics::install();
        let pipeline_metrics = PipelineMetrics::register();

        let opening = config.clone();
        // The store's and the cache's async clients run on this (the service's) runtime.
        let runtime = tokio::runtime::Handle::current();
        let (store, cache) = tokio::task::spawn_blocking(move || {
            anyhow::Ok((
                backends::open_store(&opening, &runtime)?,
                backends::open_cache(&opening, &runtime)?,
            ))
        })
        .await??;
        let tenants = Arc::new(Tenants::from_config(&config));
        let store_healthy = Arc::new(AtomicBool::new(true));

        let http_listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("http.listen {} is not free", config.http.listen))?;
        let http_addr = http_listener.local_addr()?;

        let p = &config.pipeline;
        let shards = p.shard_count();
        let (router, inboxes) = ShardRouter::new(shards, p.shard_queue);
        let endpoint = endpoint::start(
            &config,
            tenants.clone(),
            router.clone(),
            EndpointMetrics::register(&pipeline_metrics),
        )
        .await?;
        let (sink_tx, sink_rx) = bounded(p.sink_queue);
        let settings = ShardSettings {
            limits: config.limits.clone(),
            batch_readings: p.batch_readings,
            linger: Duration::from_millis(p.linger_ms),
            resend_window_ms: (p.resend_window_s * 1000) as i64,
            sweep_interval: Duration::from_secs(p.sweep_interval_s),
            dead_letter_rate: p.dead_letter_rate(),
        };
        let stop_shards = Arc::new(AtomicBool::new(false));
        let mut shard_threads = Vec::with_capacity(shards);
        for (shard, inbox) in inboxes.into_iter().enumerate() {
            let worker = ShardWorker::new(
                shard,
                settings.clone(),
                inbox,
                sink_tx.clone(),
                store.clone(),
                tenants.clone(),
                ProcessorChain::for_tenants(config.processors.clone())
                    .map_err(|e| anyhow::anyhow!("processors: {}", e.problems.join("; ")))?,
                pipeline_metrics.clone(),
                stop_shards.clone(),
            );
            shard_threads.push(worker.spawn()?);
        }
        drop(sink_tx);
        let (alert_tx, alert_rx) = bounded(ALERT_QUEUE);
        let webhooks = config
            .effective_tenants()
            .into_iter()
            .filter_map(|t| Some((t.id.clone(), t.webhook_url.clone()?)))
            .collect();
        Notifier::new(
            alert_rx,
            &config.processors,
            endpoint.registry.clone(),
            webhooks,
            pipeline_metrics.notifier(),
        )
        .spawn()?;
        let (refused_tx, refused) = oneshot::channel();
        let sink_thread = Sink {
            inbox: sink_rx,
            store: store.clone(),
            cache: CacheWriter::new(cache.clone(), pipeline_metrics.clone()),
            rollup: DistrictRollup::with_settings(shards, &config.processors.analytics),
            alerts: alert_tx,
            metrics: pipeline_metrics.clone(),
            tenant_stored: TenantStored::default(),
            store_healthy: store_healthy.clone(),
            retry: backends::commit_retry(&config),
            refused: refused_tx,
        }
        .spawn()?;
        let app = http::router(AppState {
            store,
            cache,
            tenants,
            prometheus,
            store_healthy,
            mqtt_probe: http::MqttProbe {
                addr: endpoint::probe::probe_addr(endpoint.listen),
                secret: endpoint.probe_secret.clone(),
            },
            processing: Arc::new(config.processors.clone()),
        });
        let http_limits = http::ServeLimits {
            max_connections: config.http.max_connections,
            header_timeout: Duration::from_secs(config.http.header_timeout_s),
            idle_timeout: Duration::from_secs(config.http.idle_timeout_s),
        };
        let http_task = tokio::spawn(http::serve(http_listener, app, http_limits));
        info!(
            mqtt = %endpoint.listen,
            mqtt_tls = ?endpoint.tls_listen,
            max_connections = endpoint.max_connections,
            http = %http_addr,
            shards,
            store = config.store.backend,
            cache = crate::config::redacted_url(&config.cache.backend),
            "meterflow running"
        );
        Ok(Service {
            mqtt_addr: endpoint.listen,
            mqtt_tls_addr: endpoint.tls_listen,
            http_addr,
            router,
            shard_threads,
            sink_thread,
            http_task,
            stop_shards,
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
            // The sink stopped normally (shutdown): nothing was refused.
            Err(_) => std::future::pending().await,
        }
    }

    /// Seals what the shards hold, waits until it is durable and acked, then stops.
    /// Uplinks not yet handed to a shard are not taken: their meters get no PUBACK
    /// and resend them.
    pub fn shutdown(self) {
        self.router.close();
        self.stop_shards
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.shard_threads {
            let _ = thread.join();
        }
        let _ = self.sink_thread.join();
        self.http_task.abort();
        info!("meterflow stopped: everything taken in is durable and acked");
    }
}
