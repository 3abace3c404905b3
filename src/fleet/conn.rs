//! Where the fleet's Redis is, from `[redis] url`:
//! - `redis://host:port[/db]` (`rediss://` for TLS, `unix:///path`): one server, or a managed
//!   Redis whose failover keeps one address;
//! - `redis+cluster://[user:pass@]host:port,host:port` (`rediss+cluster://`): a Redis Cluster,
//!   given some of its nodes;
//! - `redis+sentinel://[user:pass@]host:port,host:port/primary-name[/db]` (`rediss+sentinel://`):
//!   the primary that these Sentinels name (the credentials are the primary's).
//!
//! Each gives a [`Conn`] that reconnects by itself: one server and Cluster through the redis
//! crate's own connection types; for Sentinel the primary is looked up again after a failure, so
//! commands follow a failover.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to the fleet's Redis, cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Topology {
    Single(redis::Client),
    Cluster {
        client: redis::cluster::ClusterClient,
        /// One client per configured node (with the private CA, if any), for the subscription.
        subscribers: Vec<redis::Client>,
    },
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

pub(crate) struct Connector {
    topology: Topology,
    timeout: Duration,
    current: Mutex<Option<Conn>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Sentinel: the primary the connection goes to, and how many times it moved.
    primary: Mutex<Option<String>>,
    moved: tokio::sync::watch::Sender<u64>,
}

/// How often the Sentinels are asked whether the primary moved.
const PRIMARY_CHECK: Duration = Duration::from_secs(1);

/// `scheme://[userinfo@]a,b,c[/rest]` → (`userinfo@` or "", the hosts, `/rest` or "").
fn split_hosts(rest: &str) -> (&str, Vec<&str>, &str) {
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (&rest[..=u.len()], r),
        None => ("", rest),
    };
    let (hosts, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    (
        userinfo,
        hosts.split(',').filter(|h| !h.is_empty()).collect(),
        path,
    )
}

/// Why a `[redis] url` cannot be used. No variant repeats the URL or its password: the redis
/// crate's own message is kept with both masked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("expected scheme://...")]
    NoScheme,
    #[error("a cluster URL names at least one node")]
    NoClusterNode,
    #[error("a sentinel URL ends with the primary's name: redis+sentinel://host:26379/mymaster")]
    NoPrimaryName,
    #[error("a sentinel URL names at least one sentinel")]
    NoSentinel,
    /// The redis crate refused it; `topology` is `cluster`, `sentinel`, or empty for one server.
    #[error("{}{msg}", if topology.is_empty() { String::new() } else { format!("{topology}: ") })]
    Refused { topology: &'static str, msg: String },
}

/// The message a configuration error carries.
impl From<UrlError> for String {
    fn from(e: UrlError) -> String {
        e.to_string()
    }
}

/// Checks a `[redis] url` without connecting; the message never repeats the URL (it may hold a
/// password).
pub(crate) fn check_url(url: &str) -> Result<(), UrlError> {
    Connector::new(url, Duration::from_secs(1), None).map(|_| ())
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // Reconnection is retried on the next command; a short series keeps commands from
        // queueing behind a long backoff while Redis is away.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

impl Connector {
    /// `ca`: PEM of a private CA to verify `rediss://` servers with (one server or a cluster).
    pub(crate) fn new(
        url: &str,
        timeout: Duration,
        ca: Option<Vec<u8>>,
    ) -> Result<Connector, UrlError> {
        let certs = |ca: Vec<u8>| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        };
        let (scheme, rest) = url.split_once("://").ok_or(UrlError::NoScheme)?;
        // The crate's messages may quote a URL: the configured one, or a node's built from it,
        // password included. Neither reaches an error message.
        let password = rest
            .split('/')
            .next()
            .and_then(|authority| authority.rsplit_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password)
            .filter(|p| !p.is_empty());
        let bad = |topology: &'static str, e: &dyn std::fmt::Display| {
            let mut msg = e.to_string().replace(url, "<url>");
            if let Some(p) = password {
                msg = msg.replace(p, "***");
            }
            UrlError::Refused { topology, msg }
        };
        let topology = match scheme {
            "redis+cluster" | "rediss+cluster" => {
                let base = if scheme.starts_with("rediss") {
                    "rediss"
                } else {
                    "redis"
                };
                let (userinfo, hosts, _) = split_hosts(rest);
                if hosts.is_empty() {
                    return Err(UrlError::NoClusterNode);
                }
                let nodes: Vec<String> = hosts
                    .iter()
                    .map(|h| format!("{base}://{userinfo}{h}"))
                    .collect();
                let subscribers = nodes
                    .iter()
                    .map(|node| match &ca {
                        Some(ca) => redis::Client::build_with_tls(node.as_str(), certs(ca.clone())),
                        None => redis::Client::open(node.as_str()),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("cluster", &e))?;
                let mut builder = redis::cluster::ClusterClient::builder(nodes)
                    .connection_timeout(timeout)
                    .response_timeout(timeout);
                if let Some(ca) = ca {
                    builder = builder.certs(certs(ca));
                }
                let client = builder.build().map_err(|e| bad("cluster", &e))?;
                Topology::Cluster {
                    client,
                    subscribers,
                }
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let tls = scheme.starts_with("rediss");
                let (userinfo, hosts, path) = split_hosts(rest);
                let mut parts = path.trim_start_matches('/').split('/');
                let primary = parts
                    .next()
                    .filter(|p| !p.is_empty())
                    .ok_or(UrlError::NoPrimaryName)?;
                let db = parts.next().unwrap_or("0");
                if hosts.is_empty() {
                    return Err(UrlError::NoSentinel);
                }
                let sentinels: Vec<String> = hosts.iter().map(|h| format!("redis://{h}")).collect();
                let primary_info = format!("redis://{userinfo}localhost/{db}")
                    .into_connection_info()
                    .map_err(|e| bad("sentinel", &e))?;
                let mut node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(primary_info.redis_settings().clone());
                if tls {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let client = SentinelClient::build(
                    sentinels,
                    primary,
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(|e| bad("sentinel", &e))?;
                Topology::Sentinel(tokio::sync::Mutex::new(client))
            }
            _ => Topology::Single(
                match ca {
                    Some(ca) => redis::Client::build_with_tls(url, certs(ca)),
                    None => redis::Client::open(url),
                }
                // The caller names the key: no prefix of its own.
                .map_err(|e| bad("", &e))?,
            ),
        };
        Ok(Connector {
            topology,
            timeout,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            primary: Mutex::new(None),
            moved: tokio::sync::watch::channel(0).0,
        })
    }

    /// The connection, made on first use (a replica starts while Redis is down).
    pub(crate) async fn conn(&self) -> RedisResult<Conn> {
        if let Some(c) = self.current.lock().expect("redis connection").clone() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current.lock().expect("redis connection").clone() {
            return Ok(c);
        }
        let conn = match &self.topology {
            Topology::Single(client) => Conn::Single(ConnectionManager::new_lazy_with_config(
                client.clone(),
                manager_config(self.timeout),
            )?),
            Topology::Cluster { client, .. } => Conn::Cluster(client.get_async_connection().await?),
            Topology::Sentinel(sentinel) => {
                let primary = sentinel.lock().await.async_get_client().await?;
                *self.primary.lock().expect("redis primary") =
                    Some(primary.get_connection_info().addr().to_string());
                Conn::Single(ConnectionManager::new_lazy_with_config(
                    primary,
                    manager_config(self.timeout),
                )?)
            }
        };
        *self.current.lock().expect("redis connection") = Some(conn.clone());
        Ok(conn)
    }

    /// After a failed command: with Sentinel the primary may have moved, so it is looked up
    /// again on the next command. The other topologies reconnect by themselves.
    pub(crate) fn failed(&self) {
        if matches!(self.topology, Topology::Sentinel(_)) {
            *self.current.lock().expect("redis connection") = None;
        }
    }

    /// A Redis Cluster: keys of different slots live on different nodes, and no script may touch
    /// two of them.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster { .. })
    }

    /// Counts the primary's moves (Sentinel), so that a subscription can follow them.
    pub(crate) fn moved(&self) -> tokio::sync::watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// Sentinel: asks every second where the primary is, and moves the connection when it moved
    /// (a demoted primary may accept writes for a moment, which would then be lost). Returns at
    /// once for the other topologies.
    pub(crate) async fn watch_primary(&self) {
        let Topology::Sentinel(sentinel) = &self.topology else {
            return;
        };
        loop {
            tokio::time::sleep(PRIMARY_CHECK).await;
            let found = tokio::time::timeout(self.timeout * 4, async {
                sentinel.lock().await.async_get_client().await
            })
            .await;
            let Ok(Ok(client)) = found else {
                continue;
            };
            let addr = client.get_connection_info().addr().to_string();
            let mut primary = self.primary.lock().expect("redis primary");
            if primary.as_ref().is_some_and(|p| *p != addr) {
                tracing::info!(primary = %addr, "the Redis primary moved; following it");
                *self.current.lock().expect("redis connection") = None;
                *primary = Some(addr);
                self.moved.send_modify(|n| *n += 1);
            }
        }
    }

    /// A connection for pub/sub (a cluster broadcasts what is published to every node).
    pub(crate) async fn pubsub(&self) -> RedisResult<PubSub> {
        match &self.topology {
            Topology::Single(client) => client.get_async_pubsub().await,
            Topology::Cluster { subscribers, .. } => {
                let mut last = None;
                for node in subscribers {
                    match node.get_async_pubsub().await {
                        Ok(ps) => return Ok(ps),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Client, "no cluster node"))
                }))
            }
            Topology::Sentinel(sentinel) => {
                let primary = sentinel.lock().await.async_get_client().await?;
                primary.get_async_pubsub().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_topology() {
        let t = Duration::from_secs(1);
        assert!(matches!(
            Connector::new("redis://127.0.0.1:6379/0", t, None)
                .unwrap()
                .topology,
            Topology::Single(_)
        ));
        match Connector::new("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7000", t, None)
            .unwrap()
            .topology
        {
            Topology::Cluster { subscribers, .. } => assert_eq!(
                subscribers
                    .iter()
                    .map(|c| c.get_connection_info().addr().to_string())
                    .collect::<Vec<_>>(),
                vec!["10.0.0.1:7000", "10.0.0.2:7000"]
            ),
            _ => panic!("a cluster"),
        }
        assert!(matches!(
            Connector::new("redis+sentinel://s1:26379,s2:26379/mymaster", t, None)
                .unwrap()
                .topology,
            Topology::Sentinel(_)
        ));
        let e = Connector::new("redis+sentinel://:secret@s1:26379", t, None)
            .err()
            .unwrap();
        assert_eq!(e, UrlError::NoPrimaryName);
        assert!(e.to_string().contains("primary's name") && !e.to_string().contains("secret"));
        assert_eq!(
            Connector::new("redis+cluster://", t, None).err(),
            Some(UrlError::NoClusterNode)
        );
        assert_eq!(
            Connector::new("redis+sentinel:///mymaster", t, None).err(),
            Some(UrlError::NoSentinel)
        );
        assert_eq!(
            Connector::new("127.0.0.1:6379", t, None).err(),
            Some(UrlError::NoScheme)
        );
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let t = Duration::from_secs(1);
        for url in [
            "redis://:hunter2@[::1",
            "redis+cluster://u:hunter2@h1:1,h2:::x",
            "redis+sentinel://u:hunter2@s1:26379/mymaster/notadb",
        ] {
            let e = Connector::new(url, t, None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
        let e = Connector::new("redis://:hunter2@[::1", t, None)
            .err()
            .unwrap();
        assert!(
            matches!(&e, UrlError::Refused { topology: "", msg } if msg.starts_with("Redis URL did not parse")),
            "{e:?}"
        );
        let e = Connector::new("redis+cluster://u:hunter2@h1:1,h2:::x", t, None).err();
        if let Some(e) = e {
            assert!(
                matches!(
                    &e,
                    UrlError::Refused {
                        topology: "cluster",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().starts_with("cluster: "), "{e}");
        }
    }
}
