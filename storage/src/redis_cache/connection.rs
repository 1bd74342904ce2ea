//! The one connection every call of the Redis cache goes through: a single Redis (a
//! redis-rs [`ConnectionManager`]) or a Redis Cluster (a redis-rs
//! [`ClusterConnection`]), chosen by the URL's scheme. Both are multiplexed, cheap to
//! clone and reconnect by themselves; the cache's own retry and breaker pace the rest
//! (`mod.rs`, Resilience).
//!
//! URLs: `redis://…`, `rediss://…`, `unix://…` (whatever redis-rs opens) for one
//! Redis; `redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]` for a cluster. Any
//! one reachable seed is enough: the client reads the slot map (`CLUSTER SLOTS`) from
//! it, learns the other nodes, and follows `MOVED`/`ASK` when slots move. The
//! credentials go to every node; a cluster has only database 0, so the URL has no
//! `/DB`. No error message repeats a URL: it may hold a password.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::RedisConfig;
use crate::error::CacheError;

/// The scheme of a Redis Cluster URL.
pub(crate) const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Reconnection attempts the ConnectionManager makes by itself after a dropped
/// connection, before failing the call: the cache's own retry and breaker pace the
/// rest.
const MANAGER_RECONNECT_ATTEMPTS: usize = 1;

/// Retries the cluster client makes by itself within one request. Redirections need
/// them: a `MOVED` after a slot moved, or an `ASK` and its retry during a migration,
/// each take one, as does a reconnect to a node that failed over. Three cover a
/// redirect followed by a reconnect; beyond that the cache's own retry and breaker
/// pace the calls, as for a single Redis (the client's default, 16 with waits up to
/// minutes, would hold a sink call far longer than the breaker allows).
const CLUSTER_RETRIES: u32 = 3;

/// Where the cache connects: parsed from its URL, no connection yet.
pub(crate) enum Target {
    Single(redis::Client),
    /// Boxed: twice the size of a single client, and made once per cache.
    Cluster(Box<ClusterClient>),
}

/// A connection to either kind of server; the apply and read code is written once
/// against [`ConnectionLike`].
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Target {
    /// The target of `url`, its timeouts and retry pacing from `config`.
    pub(crate) fn parse(url: &str, config: &RedisConfig) -> Result<Target, CacheError> {
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            // The URL may hold a password: the error names the problem, not the URL.
            return redis::Client::open(url)
                .map(Target::Single)
                .map_err(|e| CacheError(format!("bad Redis URL: {e}")));
        };
        let nodes = cluster_seed_urls(rest).map_err(CacheError)?;
        ClusterClientBuilder::new(nodes)
            .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
            .response_timeout(Duration::from_millis(config.response_timeout_ms))
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(config.retry.initial_backoff_ms)
            .max_retry_wait(config.retry.max_backoff_ms)
            .build()
            .map(|client| Target::Cluster(Box::new(client)))
            .map_err(|e| CacheError(format!("bad Redis Cluster URL: {e}")))
    }

    /// Whether the target is a Redis Cluster: a pipeline must then stay on one slot.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// A connection that connects on first use (and reconnects by itself), so the
    /// service starts while Redis is down. Call inside the runtime the connection is
    /// to run on (`Handle::enter`): its background tasks are spawned there.
    pub(crate) fn connect_lazily(self, config: &RedisConfig) -> Result<Connection, CacheError> {
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let response_timeout = Duration::from_millis(config.response_timeout_ms);
        match self {
            Target::Single(client) => {
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(MANAGER_RECONNECT_ATTEMPTS)
                    .set_min_delay(Duration::from_millis(config.retry.initial_backoff_ms))
                    .set_max_delay(Duration::from_millis(config.retry.max_backoff_ms));
                ConnectionManager::new_lazy_with_config(client, manager_config)
                    .map(Connection::Single)
                    .map_err(|e| CacheError(format!("cannot set up the Redis connection: {e}")))
            }
            // Pending: the first request waits for the slot map; a failed start is
            // retried from the seeds by the next request.
            Target::Cluster(client) => Ok(Connection::Cluster(
                client.get_pending_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(connect_timeout)
                        .set_response_timeout(response_timeout),
                ),
            )),
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(manager) => manager.req_packed_command(cmd),
            Connection::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(manager) => manager.get_db(),
            Connection::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// The node URLs (`redis://[USER:PASSWORD@]HOST:PORT`) of a cluster URL's part after
/// the scheme, each with the URL's credentials.
fn cluster_seed_urls(rest: &str) -> Result<Vec<String>, String> {
    const FORM: &str = "redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]";
    // Hosts hold no `@`; a password may (it should be percent-encoded, but the last
    // `@` is the separator either way).
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (Some(credentials), hosts),
        None => (None, rest),
    };
    if hosts.contains('/') {
        return Err(format!(
            "bad Redis Cluster URL: a cluster has only database 0 and no path; use {FORM}"
        ));
    }
    let mut urls = Vec::new();
    for host in hosts.split(',') {
        let Some((name, port)) = host.rsplit_once(':').filter(|(name, port)| {
            !name.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        }) else {
            return Err(format!(
                "bad Redis Cluster URL: seed {host:?} is not HOST:PORT; use {FORM}"
            ));
        };
        urls.push(match credentials {
            Some(credentials) => format!("redis://{credentials}@{name}:{port}"),
            None => format!("redis://{name}:{port}"),
        });
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_gives_every_seed_the_credentials() {
        assert_eq!(
            cluster_seed_urls("127.0.0.1:7001").unwrap(),
            ["redis://127.0.0.1:7001"]
        );
        assert_eq!(
            cluster_seed_urls("app:s3cr%40t@a:7001,b:7002,[::1]:7003").unwrap(),
            [
                "redis://app:s3cr%40t@a:7001",
                "redis://app:s3cr%40t@b:7002",
                "redis://app:s3cr%40t@[::1]:7003"
            ]
        );
        assert_eq!(
            cluster_seed_urls(":p@ss@a:7001").unwrap(),
            ["redis://:p@ss@a:7001"]
        );
    }

    #[test]
    fn a_bad_cluster_url_is_refused_without_its_password() {
        for rest in [
            "",
            "a",
            "a:",
            ":7001",
            "a:7001,",
            "a:70x1",
            "a:7001/0",
            "user:secret@a:7001,b",
        ] {
            let problem = cluster_seed_urls(rest).unwrap_err();
            assert!(problem.contains("HOST:PORT"), "{rest:?}: {problem}");
            assert!(!problem.contains("secret"), "{rest:?}: {problem}");
        }
        let config = RedisConfig::default();
        assert!(
            Target::parse("redis+cluster://a:7001,b:7002", &config).is_ok_and(|t| t.is_cluster())
        );
        assert!(Target::parse("redis://a:6379", &config).is_ok_and(|t| !t.is_cluster()));
        let refused = Target::parse("redis+cluster://u:secret@a", &config);
        assert!(refused.is_err_and(|e| !e.0.contains("secret")));
    }
}
