//! Test fixtures: a real `mosquitto` broker on a free loopback port, and an "acker"
//! that plays the meterflow service — it subscribes to every uplink, decodes and
//! stores it, and publishes the meter's durable watermark `{"seq":W}` (DESIGN §3) —
//! so the simulator is exercised end to end against a real broker. Mosquitto's
//! PUBACK only means "received", so runs against it set `puback_durable = false`.
//!
//! [`Endpoint`] plays meterflow's own MQTT endpoint instead: a minimal MQTT 3.1.1
//! server (rumqttc's packet codec over tokio) that checks per-meter logins, stores
//! each uplink and only then PUBACKs it, and publishes the watermark to meters that
//! subscribed to their ack topic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use meterflow_model::{MeterKey, Uplink, ack, codec, credentials, mac, topic};
use meterflow_simulator::{MacKeys, SimConfig, meter_id_string, meter_messages};
use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, Event, Incoming, MqttOptions, Packet, PubAck, Publish,
    QoS, SubAck, SubscribeReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

/// How long a fresh broker may take to accept connections.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to look for `mosquitto` besides `$PATH`: Debian installs it in /usr/sbin,
/// which is not on a normal user's path.
const MOSQUITTO_DIRS: [&str; 2] = ["/usr/sbin", "/usr/local/sbin"];

fn find_mosquitto() -> PathBuf {
    if let Some(bin) = std::env::var_os("MOSQUITTO_BIN") {
        return PathBuf::from(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(MOSQUITTO_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("mosquitto"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "mosquitto not found on PATH or in {MOSQUITTO_DIRS:?}: these tests need a real \
                 broker. Install it (`apt-get install mosquitto`) or point MOSQUITTO_BIN at it, \
                 then run the command in simulator/README.md"
            )
        })
}

/// A mosquitto process on a loopback port, killed when dropped.
pub(crate) struct Mosquitto {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
}

impl Mosquitto {
    /// Starts a broker on a free port.
    pub(crate) fn start() -> Self {
        Self::start_on(crate::server_support::free_port())
    }

    /// Starts a broker on `port` (a restart reuses the port of the killed one).
    pub(crate) fn start_on(port: u16) -> Self {
        let config = std::env::temp_dir().join(format!(
            "meterflow-sim-test-mosquitto-{}-{port}.conf",
            std::process::id()
        ));
        // Unlimited queues and in-flight windows: the acker is one subscriber for the
        // whole fleet, and mosquitto's defaults (20 in flight, 1,000 queued) would make
        // it drop uplinks under load — which would test mosquitto, not the simulator.
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages 0\nmax_queued_messages 0\nset_tcp_nodelay true\n\
                 log_type error\nlog_type warning\n"
            ),
        )
        .expect("write the mosquitto config");
        let mut child = Command::new(find_mosquitto())
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mosquitto");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mosquitto exited at start ({status}); see its output above");
            }
            assert!(
                started.elapsed() < BROKER_START_TIMEOUT,
                "mosquitto did not listen on port {port} within {BROKER_START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child: Some(child),
            port,
            config,
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, like the `kill -9` of a service restart test.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Which acks the fake service withholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AckPolicy {
    /// Store and ack everything.
    All,
    /// Treat the first arrival of every seq divisible by 3 as lost: not stored, not
    /// acked. Its resend is stored, and the watermark jumps over what followed it.
    LoseEveryThirdOnce,
}

/// What the fake service stored for one meter.
#[derive(Debug, Default)]
pub(crate) struct MeterLog {
    pub(crate) stored: BTreeMap<u64, Uplink>,
    /// Highest seq with every seq from 1 up to it stored.
    pub(crate) watermark: u64,
    pub(crate) lost_once: HashSet<u64>,
    /// Arrivals of messages already stored.
    pub(crate) duplicates: u64,
}

#[derive(Debug, Default)]
pub(crate) struct AckerState {
    pub(crate) meters: HashMap<String, MeterLog>,
    /// Uplinks that did not decode, or failed their MAC: must stay empty.
    pub(crate) errors: Vec<String>,
    pub(crate) received: u64,
}

/// The fake service: one MQTT client subscribed to every uplink.
pub(crate) struct Acker {
    pub(crate) state: Arc<Mutex<AckerState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Acker {
    /// Connects to `port` and returns once the uplink subscription is in place.
    pub(crate) async fn start(port: u16, policy: AckPolicy, mac_keys: Option<MacKeys>) -> Self {
        let state = Arc::new(Mutex::new(AckerState::default()));
        let subscribed = Arc::new(Notify::new());
        let mut options = MqttOptions::new(format!("acker-{port}"), "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(128 * 1024, 1024);
        // Acks are queued with try_publish from the poll loop: a deep channel keeps
        // a burst of uplinks from overflowing it.
        let (client, mut eventloop) = AsyncClient::new(options, 100_000);
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            let subscribed = Arc::clone(&subscribed);
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            let _ = client.try_subscribe(topic::UPLINK_FILTER, QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Incoming::SubAck(_))) => subscribed.notify_one(),
                        Ok(Event::Incoming(Incoming::Publish(publish))) => {
                            let reply = {
                                let mut state = state.lock().unwrap();
                                store(
                                    &mut state,
                                    policy,
                                    mac_keys.as_ref(),
                                    &publish.topic,
                                    &publish.payload,
                                )
                            };
                            if let Some((ack_topic, watermark)) = reply {
                                client
                                    .try_publish(
                                        ack_topic,
                                        QoS::AtMostOnce,
                                        false,
                                        ack::encode(watermark),
                                    )
                                    .expect("acker request channel has room");
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), subscribed.notified())
            .await
            .expect("acker subscribed within 5 s");
        Self { state, task }
    }

    pub(crate) fn received(&self) -> u64 {
        self.state.lock().unwrap().received
    }

    /// Asserts that the acker stored exactly the ground truth of every meter.
    pub(crate) fn assert_stored_ground_truth(&self, config: &SimConfig) {
        let state = self.state.lock().unwrap();
        assert!(state.errors.is_empty(), "bad uplinks: {:?}", state.errors);
        assert_stored(&state.meters, config);
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Stores one uplink and returns the ack to publish, if any.
fn store(
    state: &mut AckerState,
    policy: AckPolicy,
    mac_keys: Option<&MacKeys>,
    topic_name: &str,
    payload: &[u8],
) -> Option<(String, u64)> {
    state.received += 1;
    let key = match topic::parse_uplink(topic_name.as_bytes()) {
        Ok(key) => key,
        Err(reason) => {
            state.errors.push(format!("{topic_name}: {reason:?}"));
            return None;
        }
    };
    let uplink = match codec::decode(payload) {
        Ok(uplink) => uplink,
        Err(reason) => {
            state.errors.push(format!("{topic_name}: {reason:?}"));
            return None;
        }
    };
    if let Some(keys) = mac_keys
        && !mac::verify(&keys.key_for(key.meter.as_str()), &uplink)
    {
        state
            .errors
            .push(format!("{topic_name} seq {}: bad mac", uplink.seq));
        return None;
    }
    let log = state.meters.entry(key.meter.to_string()).or_default();
    let seq = uplink.seq;
    if log.stored.contains_key(&seq) {
        log.duplicates += 1;
    } else {
        if policy == AckPolicy::LoseEveryThirdOnce && seq % 3 == 0 && log.lost_once.insert(seq) {
            return None;
        }
        log.stored.insert(seq, uplink);
        while log.stored.contains_key(&(log.watermark + 1)) {
            log.watermark += 1;
        }
    }
    Some((topic::ack_topic(&key), log.watermark))
}

/// When the fake endpoint sends a PUBACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PubackPolicy {
    /// Once the uplink is stored, after this long (the time a durable write takes).
    Durable(Duration),
    /// As `Durable(1 ms)`, but the first arrival of every seq divisible by 3 is
    /// PUBACKed only after this long: its resend overtakes it, and the first PUBACK
    /// of either copy settles it. PUBACKs then arrive out of order.
    SlowEveryThird(Duration),
    /// As `Durable(1 ms)`, but each meter's 5th uplink drops the connection instead
    /// (stored, never PUBACKed, once per meter): the meter reconnects and resends.
    DropConnectionOnce,
}

/// What the fake endpoint saw.
#[derive(Debug, Default)]
pub(crate) struct EndpointState {
    pub(crate) meters: HashMap<String, MeterLog>,
    /// Uplinks that were not well-formed or failed their MAC: must stay empty.
    pub(crate) errors: Vec<String>,
    /// Payloads that did not decode (injected malformed ones): PUBACKed, as meterflow
    /// does for a dead letter.
    pub(crate) rejected: u64,
    pub(crate) received: u64,
    pub(crate) subscriptions: u64,
    /// Usernames of accepted meters, by client id.
    pub(crate) logins: HashMap<String, Option<String>>,
    pub(crate) refused_logins: u64,
    /// Meters whose connection was dropped (`DropConnectionOnce`).
    pub(crate) dropped: HashSet<String>,
}

/// A minimal meterflow-like MQTT endpoint on a free loopback port.
pub(crate) struct Endpoint {
    pub(crate) state: Arc<Mutex<EndpointState>>,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

/// Largest packet the fake endpoint reads or writes.
const ENDPOINT_MAX_PACKET: usize = 128 * 1024;

impl Endpoint {
    /// Listens at once. With `meter_secret`, a meter must log in as its tenant with
    /// its derived password; without, anyone may connect.
    pub(crate) async fn start(policy: PubackPolicy, meter_secret: Option<&str>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(EndpointState::default()));
        let secret = meter_secret.map(str::to_owned);
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve(stream, Arc::clone(&state), policy, secret.clone()));
                }
            }
        });
        Self { state, port, task }
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Asserts that the endpoint stored exactly the ground truth of every meter.
    pub(crate) fn assert_stored_ground_truth(&self, config: &SimConfig) {
        let state = self.state.lock().unwrap();
        assert!(state.errors.is_empty(), "bad uplinks: {:?}", state.errors);
        assert_stored(&state.meters, config);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

fn assert_stored(meters: &HashMap<String, MeterLog>, config: &SimConfig) {
    assert_eq!(meters.len(), config.meters);
    for index in config.meter_indices() {
        let meter = meter_id_string(index);
        let log = meters
            .get(&meter)
            .unwrap_or_else(|| panic!("nothing stored for {meter}"));
        let expected: Vec<Uplink> = meter_messages(config, index).collect();
        let stored: Vec<&Uplink> = log.stored.values().collect();
        assert_eq!(stored.len(), expected.len(), "{meter}");
        for (got, want) in stored.iter().zip(&expected) {
            assert_eq!(*got, want, "{meter} seq {}", want.seq);
        }
        assert_eq!(log.watermark, config.messages_per_meter, "{meter}");
    }
}

/// One connection: CONNECT (with the login check), then SUBSCRIBE, PUBLISH, PINGREQ
/// until DISCONNECT, EOF or a deliberate drop.
async fn serve(
    stream: tokio::net::TcpStream,
    state: Arc<Mutex<EndpointState>>,
    policy: PubackPolicy,
    meter_secret: Option<String>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Packet>();
    let writing = tokio::spawn(async move {
        let mut out = BytesMut::new();
        while let Some(packet) = rx.recv().await {
            out.clear();
            if packet.write(&mut out, ENDPOINT_MAX_PACKET).is_err()
                || writer.write_all(&out).await.is_err()
            {
                break;
            }
        }
    });
    let mut input = BytesMut::with_capacity(4096);
    let mut meter: Option<MeterKey> = None;
    let mut ack_subscribed = false;
    loop {
        let packet = match Packet::read(&mut input, ENDPOINT_MAX_PACKET) {
            Ok(packet) => packet,
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                match reader.read_buf(&mut input).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            Err(_) => break,
        };
        match (packet, &meter) {
            (Packet::Connect(connect), None) => {
                let key = topic::parse_client_id(&connect.client_id).ok();
                let login = connect.login.as_ref();
                let allowed = match (&meter_secret, &key) {
                    (None, Some(_)) => true,
                    (Some(secret), Some(key)) => login.is_some_and(|login| {
                        login.username == key.tenant.as_str()
                            && credentials::verify_meter_password(
                                secret,
                                &key.tenant,
                                &key.meter,
                                login.password.as_bytes(),
                            )
                    }),
                    (_, None) => false,
                };
                let Some(key) = key.filter(|_| allowed) else {
                    state.lock().unwrap().refused_logins += 1;
                    let _ = tx.send(Packet::ConnAck(ConnAck::new(
                        ConnectReturnCode::BadUserNamePassword,
                        false,
                    )));
                    break;
                };
                state
                    .lock()
                    .unwrap()
                    .logins
                    .insert(connect.client_id.clone(), login.map(|l| l.username.clone()));
                meter = Some(key);
                let _ = tx.send(Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::Success,
                    false,
                )));
            }
            (Packet::Subscribe(subscribe), Some(key)) => {
                let own = topic::ack_topic(key);
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|filter| {
                        if filter.path == own {
                            ack_subscribed = true;
                            SubscribeReasonCode::Success(QoS::AtMostOnce)
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                state.lock().unwrap().subscriptions += 1;
                let _ = tx.send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)));
            }
            (Packet::Publish(publish), Some(key)) => {
                let (
                    Stored {
                        seq,
                        watermark,
                        first,
                    },
                    drop_now,
                ) = {
                    let mut state = state.lock().unwrap();
                    let stored = store_durably(&mut state, key, &publish);
                    let seq = stored.seq;
                    let drop_now = policy == PubackPolicy::DropConnectionOnce
                        && seq == Some(5)
                        && state.dropped.insert(key.meter.to_string());
                    (stored, drop_now)
                };
                if drop_now {
                    break;
                }
                if ack_subscribed && let Some(watermark) = watermark {
                    let _ = tx.send(Packet::Publish(Publish::new(
                        topic::ack_topic(key),
                        QoS::AtMostOnce,
                        ack::encode(watermark),
                    )));
                }
                if publish.qos == QoS::AtLeastOnce {
                    let delay = match policy {
                        PubackPolicy::Durable(delay) => delay,
                        PubackPolicy::SlowEveryThird(slow)
                            if first && seq.is_some_and(|seq| seq % 3 == 0) =>
                        {
                            slow
                        }
                        _ => Duration::from_millis(1),
                    };
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Packet::PubAck(PubAck::new(publish.pkid)));
                    });
                }
            }
            (Packet::PingReq, Some(_)) => {
                let _ = tx.send(Packet::PingResp);
            }
            _ => break,
        }
    }
    writing.abort();
}

/// What [`store_durably`] made of an uplink.
#[derive(Debug, Default)]
struct Stored {
    /// Its seq, when it decoded.
    seq: Option<u64>,
    /// The meter's watermark afterwards, when it decoded.
    watermark: Option<u64>,
    /// Its first arrival (not a duplicate).
    first: bool,
}

/// Stores one uplink of `key` (the authenticated meter).
fn store_durably(state: &mut EndpointState, key: &MeterKey, publish: &Publish) -> Stored {
    state.received += 1;
    if publish.topic != topic::uplink_topic(key) {
        state
            .errors
            .push(format!("{key}: publish to foreign topic {}", publish.topic));
        return Stored::default();
    }
    let Ok(uplink) = codec::decode(&publish.payload) else {
        state.rejected += 1;
        return Stored::default();
    };
    let log = state.meters.entry(key.meter.to_string()).or_default();
    let seq = uplink.seq;
    let first = !log.stored.contains_key(&seq);
    if first {
        log.stored.insert(seq, uplink);
        while log.stored.contains_key(&(log.watermark + 1)) {
            log.watermark += 1;
        }
    } else {
        log.duplicates += 1;
    }
    Stored {
        seq: Some(seq),
        watermark: Some(log.watermark),
        first,
    }
}
