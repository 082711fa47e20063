//! The limiter's Redis: one server (a `ConnectionManager` that reconnects by itself) or a
//! Redis Cluster (redis-rs `cluster-async`, which follows MOVED/ASK redirections and
//! refreshes its slot map when a primary fails over).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Where the limiter's state lives.
#[derive(Clone)]
pub enum RedisEndpoint {
    /// One Redis server.
    Single(redis::Client),
    /// A Redis Cluster, reached through its seed nodes.
    Cluster(ClusterClient),
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisEndpoint::Single(c) => write!(f, "Single({:?})", c.get_connection_info().addr),
            RedisEndpoint::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

/// A connection to a [`RedisEndpoint`]; cheap to clone (both kinds multiplex one socket per
/// node).
#[derive(Clone)]
pub enum RedisConnection {
    /// To one server.
    Single(ConnectionManager),
    /// To a cluster.
    Cluster(ClusterConnection),
}

impl RedisEndpoint {
    /// The endpoint of `urls`: one server, or with `cluster` the seed nodes of a Redis
    /// Cluster (redis-rs asks them for the slot map on connect).
    ///
    /// # Errors
    /// A URL that does not parse, no URL, or several without `cluster`.
    pub fn open(urls: &[&str], cluster: bool) -> anyhow::Result<RedisEndpoint> {
        match (urls, cluster) {
            ([], _) => anyhow::bail!("no Redis URL"),
            ([one], false) => redis::Client::open(*one)
                .map(RedisEndpoint::Single)
                .map_err(|e| anyhow::anyhow!("`{one}` is not a Redis URL: {e}")),
            (_, false) => anyhow::bail!("several Redis URLs name a cluster: set redis_cluster"),
            (nodes, true) => ClusterClient::builder(nodes.iter().copied())
                // One retry, as for a single server: the limiter's own timeout and fail
                // policy decide what a slow or lost primary means for a request.
                .retries(1)
                .build()
                .map(RedisEndpoint::Cluster)
                .map_err(|e| anyhow::anyhow!("redis_url: not a cluster's seed nodes: {e}")),
        }
    }

    /// Connect within `connect` (per node), each reply awaited at most `response`, and one
    /// retry (after a reconnect, or a slot map refresh on a cluster).
    ///
    /// # Errors
    /// The first node error (refused, timed out, not a cluster node).
    pub async fn connect(
        &self,
        connect: Duration,
        response: Duration,
    ) -> redis::RedisResult<RedisConnection> {
        match self {
            RedisEndpoint::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response)
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(client.clone(), config)
                    .await
                    .map(RedisConnection::Single)
            }
            RedisEndpoint::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(response);
                client
                    .get_async_connection_with_config(config)
                    .await
                    .map(RedisConnection::Cluster)
            }
        }
    }
}

impl RedisConnection {
    /// Whether it is a Redis Cluster's (a pipeline must then keep to one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}
