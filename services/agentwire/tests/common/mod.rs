//! The real stack for one test: a fresh topic on the shared broker, the gateway in-process on
//! port 0, and the relay in-process or as a child process (for SIGKILL). Session keys use a
//! unique tenant, so tests sharing the one Valkey never see each other's keys.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod enricher;
pub mod ws;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use agentwire_client::HttpClient;
use agentwire_gateway::GatewayConfig;
use agentwire_kafka::{KafkaArgs, KafkaSettings, LogMessage};
use agentwire_protocol::{Event, EventType, Offset, ProducerId, SessionKey};
use agentwire_relay::RelayConfig;
use agentwire_test_support::{ChildProcess, TestEnv, unique};
use agentwire_valkey::ValkeyArgs;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const LIMIT: Duration = Duration::from_secs(60);

/// Where a scenario runs: the shared single Valkey, or a Valkey Cluster of its own (3 primaries,
/// 3 replicas, sharded pub/sub). The cluster lives as long as the value.
pub enum Valkey {
    Single,
    Cluster(agentwire_test_support::ValkeyCluster),
}

impl Valkey {
    /// A fresh Valkey Cluster.
    pub async fn cluster() -> Valkey {
        Valkey::Cluster(agentwire_test_support::ValkeyCluster::start().await)
    }

    /// Checks that the gateway subscribed to `session`'s channel as the deployment requires:
    /// classic pub/sub on one node; sharded pub/sub (`SSUBSCRIBE`) on a cluster, on exactly
    /// one node (the primary of the session's slot), and no classic subscription anywhere.
    pub async fn assert_subscribed(&self, session: &SessionKey) {
        let channel = agentwire_valkey::keys::channel(session);
        let count = |port: u16, sub: &'static str| {
            let channel = channel.clone();
            async move {
                let client =
                    redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("node url");
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect to a node");
                let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                    .arg(sub)
                    .arg(&channel)
                    .query_async(&mut conn)
                    .await
                    .expect("PUBSUB");
                counts.first().map_or(0, |(_, n)| *n)
            }
        };
        match self {
            Valkey::Single => {
                let port = TestEnv::from_env()
                    .valkey_url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim_end_matches('/').parse().ok())
                    .expect("the shared valkey's port");
                assert!(count(port, "NUMSUB").await >= 1, "a classic subscription");
            }
            Valkey::Cluster(cluster) => {
                let mut sharded = Vec::new();
                for port in cluster.ports() {
                    assert_eq!(count(port, "NUMSUB").await, 0, "no classic subscription");
                    if count(port, "SHARDNUMSUB").await > 0 {
                        sharded.push(port);
                    }
                }
                assert_eq!(sharded.len(), 1, "one node holds the sharded subscription");
            }
        }
    }

    /// The shared broker with this Valkey.
    pub fn env(&self) -> TestEnv {
        match self {
            Valkey::Single => TestEnv::from_env(),
            Valkey::Cluster(cluster) => TestEnv {
                valkey_url: cluster.url(),
                ..TestEnv::from_env()
            },
        }
    }
}

#[derive(Debug)]
pub struct Stack {
    pub env: TestEnv,
    pub topic: String,
    pub tenant: String,
    pub relay_group: String,
    /// The enricher's output topic for this stack (the relay creates it).
    pub enriched_topic: String,
    /// The work-queue topic of this stack (the gateway creates it).
    pub tasks_topic: String,
    /// `AGENTWIRE_HISTORY_MAXLEN` of the relays this stack starts.
    pub history_maxlen: u64,
    pub http_url: String,
    pub ws_url: String,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    /// A topic, the gateway and an in-process relay.
    pub async fn start(partitions: u32) -> Stack {
        let mut stack = Stack::without_relay(partitions).await;
        stack.spawn_relay();
        stack
    }

    /// A topic and the gateway; start a relay yourself.
    pub async fn without_relay(partitions: u32) -> Stack {
        Stack::with_env(TestEnv::from_env(), partitions).await
    }

    /// A topic, the gateway and an in-process relay on the servers `env` names.
    pub async fn start_on(env: TestEnv, partitions: u32) -> Stack {
        let mut stack = Stack::with_env(env, partitions).await;
        stack.spawn_relay();
        stack
    }

    /// A stack with a relay on a Valkey of its own, for tests that kill or restart Valkey.
    pub async fn with_own_valkey(partitions: u32) -> (Stack, agentwire_test_support::ValkeyServer) {
        let valkey = agentwire_test_support::ValkeyServer::start().await;
        let env = TestEnv {
            valkey_url: valkey.url(),
            ..TestEnv::from_env()
        };
        let mut stack = Stack::with_env(env, partitions).await;
        stack.spawn_relay();
        (stack, valkey)
    }

    /// Like [`Stack::without_relay`] on servers of the test's own (e.g. a dedicated broker).
    pub async fn with_env(env: TestEnv, partitions: u32) -> Stack {
        Stack::configured(env, partitions, |_| {}).await
    }

    /// A stack on a broker of its own (for tests that kill or freeze it), the gateway's
    /// configuration adjusted by `tweak`.
    pub async fn on_own_broker(
        partitions: u32,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> (Stack, agentwire_test_support::Broker) {
        let broker = agentwire_test_support::Broker::start().await;
        let env = TestEnv {
            kafka_brokers: broker.brokers(),
            ..TestEnv::from_env()
        };
        (Stack::configured(env, partitions, tweak).await, broker)
    }

    /// One series of the gateway's `/metrics` (the name with its labels, exactly as exported,
    /// e.g. `agentwire_gateway_catch_ups_total{reason="lagged"}`); `None` until it is exported.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.http_url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }

    /// A plain connection to the stack's Valkey, for tests that read or tamper with it.
    pub async fn valkey(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.env.valkey_url.as_str())
            .expect("valkey url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to valkey")
    }

    /// Like [`Stack::with_env`], with the gateway's configuration adjusted by `tweak`.
    pub async fn configured(
        env: TestEnv,
        partitions: u32,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Stack {
        let topic = unique("events");
        env.create_topic(&topic, partitions).await;
        let mut stack = Stack {
            env,
            topic,
            tenant: unique("t"),
            relay_group: unique("relay"),
            enriched_topic: unique("enriched"),
            tasks_topic: unique("tasks"),
            history_maxlen: 10_000,
            http_url: String::new(),
            ws_url: String::new(),
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
        };
        let mut config = stack.gateway_config();
        tweak(&mut config);
        stack.spawn_gateway(config).await;
        stack
    }

    pub fn kafka_args(&self) -> KafkaArgs {
        KafkaArgs {
            brokers: self.env.kafka_brokers.clone(),
            topic: self.topic.clone(),
            tasks_topic: self.tasks_topic.clone(),
            delivery_timeout_ms: 3000,
            linger_ms: 1,
        }
    }

    pub fn kafka_settings(&self) -> KafkaSettings {
        self.kafka_args().settings()
    }

    pub fn valkey_args(&self) -> ValkeyArgs {
        ValkeyArgs {
            url: self.env.valkey_url.clone(),
            history_maxlen: self.history_maxlen,
            history_idle_ttl_secs: 3600,
        }
    }

    pub fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig {
            kafka: self.kafka_args(),
            valkey: self.valkey_args(),
            auth: agentwire_gateway::auth::AuthArgs::off(),
            log_generation: 1,
            max_connections_per_tenant: 10_000,
            ephemeral_buffer: 256,
            max_body_bytes: 1024 * 1024,
            http_header_timeout_secs: 10,
            http_body_timeout_secs: 30,
            max_http_connections: 20_000,
            tenant_quota_timeout_ms: 100,
            max_frame_bytes: 64 * 1024,
            session_buffer: 1024,
            max_subscriptions: 100,
            catch_up_page: 100,
            page_max_bytes: 4 * 1024 * 1024,
            log_scan_max_records: 50_000,
            tenant_log_scan_rate: 200_000,
            tenant_log_scan_burst: 1_000_000,
            ws_publish_rate: 1000,
            ws_publish_burst: 1000,
            ws_bytes_rate: 4 * 1024 * 1024,
            ws_abuse_strikes: 100,
            tenant_publish_rate: 10_000,
            tenant_publish_burst: 20_000,
            heartbeat_secs: 15,
            idle_timeout_secs: 45,
            dedupe_window: 256,
            dedupe_ttl_secs: 3600,
            dedupe_pending_stale_ms: 60_000,
            dedupe_rebuild_depth: 100_000,
            task_retention_secs: 3600,
            task_sweep_ms: 200,
            registry_sweep_ms: 200,
        }
    }

    pub fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            kafka: self.kafka_args(),
            valkey: self.valkey_args(),
            group: self.relay_group.clone(),
            enriched_topic: self.enriched_topic.clone(),
            enriched_group: format!("{}-enriched", self.relay_group),
            tasks_group: format!("{}-tasks", self.relay_group),
            task_retention_secs: 3600,
            batch_max: 256,
            fetch_wait_ms: 4,
        }
    }

    async fn spawn_gateway(&mut self, config: GatewayConfig) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gateway");
        let addr = listener.local_addr().expect("gateway address");
        self.http_url = format!("http://{addr}");
        self.ws_url = format!("ws://{addr}/v1/ws");
        let shutdown = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            agentwire_gateway::run(listener, config, shutdown)
                .await
                .expect("gateway run");
        }));
    }

    /// A second gateway on the same topic and Valkey; returns its base URL.
    pub async fn spawn_extra_gateway(&mut self, tweak: impl FnOnce(&mut GatewayConfig)) -> String {
        let (http_url, ws_url) = (self.http_url.clone(), self.ws_url.clone());
        let mut config = self.gateway_config();
        tweak(&mut config);
        self.spawn_gateway(config).await;
        let extra = std::mem::replace(&mut self.http_url, http_url);
        self.ws_url = ws_url;
        extra
    }

    pub fn spawn_relay(&mut self) {
        let (config, shutdown) = (self.relay_config(), self.shutdown.clone());
        self.tasks.push(tokio::spawn(async move {
            agentwire_relay::run(config, shutdown)
                .await
                .expect("relay run");
        }));
    }

    /// `agentwire relay` as a child process, for tests that SIGKILL it.
    pub fn relay_process(&self) -> ChildProcess {
        ChildProcess::spawn("relay", self.relay_command("127.0.0.1:0"))
    }

    /// The command of `agentwire relay` for this stack, its `/metrics` and `/healthz` on
    /// `admin_listen`.
    pub fn relay_command(&self, admin_listen: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentwire"));
        command
            .args(["relay", "--admin-listen", admin_listen])
            .env("AGENTWIRE_KAFKA_BROKERS", &self.env.kafka_brokers)
            .env("AGENTWIRE_TOPIC", &self.topic)
            .env("AGENTWIRE_TASKS_TOPIC", &self.tasks_topic)
            .env("AGENTWIRE_VALKEY_URL", &self.env.valkey_url)
            .env("AGENTWIRE_RELAY_GROUP", &self.relay_group)
            .env("AGENTWIRE_ENRICHED_TOPIC", &self.enriched_topic)
            .env(
                "AGENTWIRE_RELAY_ENRICHED_GROUP",
                format!("{}-enriched", self.relay_group),
            )
            .env(
                "AGENTWIRE_RELAY_TASKS_GROUP",
                format!("{}-tasks", self.relay_group),
            )
            .env("AGENTWIRE_RELAY_BATCH_MAX", "64");
        command
    }

    pub fn http(&self) -> HttpClient {
        HttpClient::new(&self.http_url).expect("http client")
    }

    /// A session of this test's tenant.
    pub fn session(&self, name: &str) -> SessionKey {
        SessionKey::parse_parts(&self.tenant, "planner", name).expect("session key")
    }

    /// Every record of the topic, grouped by key, in offset order per partition.
    pub async fn log_by_key(&self, partitions: u32) -> BTreeMap<String, Vec<LogMessage>> {
        let settings = self.kafka_settings();
        let mut by_key: BTreeMap<String, Vec<LogMessage>> = BTreeMap::new();
        for partition in 0..i32::try_from(partitions).expect("partitions") {
            let (low, high) = agentwire_kafka::watermarks(&settings, &self.topic, partition)
                .await
                .expect("watermarks");
            let (low, high) = (
                u64::try_from(low).unwrap_or(0),
                u64::try_from(high).unwrap_or(0),
            );
            let records = agentwire_kafka::read_range(
                &settings,
                &self.topic,
                partition,
                Offset(low),
                Offset(high),
                LIMIT,
            )
            .await
            .expect("read the partition");
            for record in records {
                let key =
                    String::from_utf8(record.key.clone().unwrap_or_default()).expect("utf-8 key");
                by_key.entry(key).or_default().push(record);
            }
        }
        by_key
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// An unsequenced `agent.message` event with `text` (no `producer_seq`, so no deduplication): `n` only tells events
/// apart, as the correlation id `<producer>-<n>`. Sequenced publishing is tested with
/// [`sequenced`].
pub fn event(session: &SessionKey, producer: &str, n: u64, text: &str) -> Event {
    let mut event = Event::new(
        session.clone(),
        EventType::new("agent.message").expect("type"),
    );
    event.producer_id = Some(ProducerId::new(producer).expect("producer"));
    event.correlation_id = Some(format!("{producer}-{n}"));
    event.text = Some(text.to_owned());
    event
}

/// An event numbered `(epoch, seq)` by `producer`: deduplicated by the gateway.
pub fn sequenced(session: &SessionKey, producer: &str, epoch: u64, seq: u64, text: &str) -> Event {
    let mut event = event(session, producer, seq, text);
    event.producer_epoch = Some(epoch);
    event.producer_seq = Some(seq);
    event
}

/// Offsets per session, sorted: what a subscriber of each session must see.
pub fn offsets_by_session<'a>(
    pairs: impl IntoIterator<Item = (&'a SessionKey, Offset)>,
) -> BTreeMap<SessionKey, Vec<Offset>> {
    let mut map: BTreeMap<SessionKey, Vec<Offset>> = BTreeMap::new();
    for (session, offset) in pairs {
        map.entry(session.clone()).or_default().push(offset);
    }
    for offsets in map.values_mut() {
        offsets.sort_unstable();
    }
    map
}

/// Reads until `subscriber` delivered `count` events, failing on an error frame or after
/// [`LIMIT`] without progress.
pub async fn receive(
    subscriber: &mut agentwire_client::Subscriber,
    count: usize,
) -> Vec<agentwire_client::Delivery> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match tokio::time::timeout(LIMIT, subscriber.next()).await {
            Ok(Ok(delivery)) => got.push(delivery),
            Ok(Err(err)) => panic!("subscriber error after {} deliveries: {err}", got.len()),
            Err(_) => panic!("only {} of {count} delivered", got.len()),
        }
    }
    got
}
