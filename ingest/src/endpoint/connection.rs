//! One MQTT connection: the runner around [`Session`]. It only reads, writes and waits;
//! every decision is the session's. Packets are framed by [`wire`](super::wire)
//! (rumqttc's `mqttbytes`, MQTT 3.1.1 or 5 as the CONNECT says).
//!
//! Life of a connection:
//! 1. CONNECT within `connect_timeout` (else dropped), then [`Authenticator`]: a
//!    refusal is answered with its CONNACK code and the connection closed;
//! 2. the session is registered (replacing an older one of the same identity) and
//!    CONNACK accepted is sent;
//! 3. loop: packets in → decisions → uplinks handed to the shards (waiting while a
//!    shard's queue is full); answers out ([`Outgoing`]) as the sink makes uplinks
//!    durable. At `max_inflight` unanswered uplinks the socket is not read.
//!    Keep-alive: no packet for 1.5 × the client's keep-alive (or `idle_timeout` when it
//!    asked for none) closes the connection.
//!
//! Memory: the socket is read through a scratch buffer on the stack ([`READ_CHUNK`]
//! bytes, alive only while a read is polled), and only what arrived is copied into the
//! connection's own buffer. So an idle meter holds no read buffer at all, a packet
//! being read grows the buffer with what has arrived of it (never ahead of its bytes),
//! and an uplink of a few KiB takes one socket read (a read that does not fill the
//! scratch tells the runtime the socket is drained). The write buffer is released
//! after each write; the outbox holds no allocation while empty. An idle meter holds
//! the task, the socket, one keep-alive timer (reset as packets arrive, not made anew
//! per wait) and a few small allocations (measured by the bench's `connections`
//! scenario).

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use meterflow_model::{ack, topic};
use rumqttc::QoS;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use super::EndpointShared;
use super::handoff::Inbound;
use super::outbox::{Completion, Outbox, OutboxReceiver, Outgoing};
use super::session::{
    ConnectOutcome, ConnectRefusal, Grant, Identity, Login, ProtocolViolation, PublishVerdict,
    Session,
};
use super::wire::{ConnectAnswer, ConnectInfo, ConnectReadError, Incoming, ReadError, Wire};
use crate::clock::now_ms;

/// Most bytes one socket read takes, into a scratch buffer on the stack. Larger than
/// a typical uplink (~1.5 KB for 24 readings), so one read takes it whole and comes
/// back short of the scratch, which tells the runtime the socket is drained.
const READ_CHUNK: usize = 8 * 1024;
/// Most queued answers written in one go before the socket is read again.
const MAX_ANSWERS_PER_WRITE: usize = 256;

/// Limits of one connection.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub connect_timeout: Duration,
    pub max_inflight: usize,
    pub max_packet_bytes: usize,
    /// Keep-alive when the client asked for none.
    pub idle_timeout: Duration,
}

/// Why a connection ended, for the debug log.
#[derive(Debug)]
enum Ended {
    Closed,
    Io,
    Violation(ProtocolViolation),
    TakenOver,
    Abandoned,
    PipelineClosed,
}

/// Serves one accepted connection until it ends. Never panics on what a client sends.
pub async fn serve<S>(mut stream: S, shared: Arc<EndpointShared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut rbuf = BytesMut::new();
    let Some((wire, session, keep_alive)) = handshake(&mut stream, &mut rbuf, &shared).await else {
        return;
    };
    let meter = session.meter().cloned();
    let identity = session.identity.clone();
    let (outbox, rx) = Outbox::new(meter);
    // The readiness probe holds no session: it may run while another probe does.
    let registered = identity != Identity::Probe;
    if registered && shared.registry.register(&identity, &outbox) {
        shared.metrics.takeovers.increment(1);
    }
    let mut connection = Connection {
        stream,
        wire,
        rbuf,
        wbuf: BytesMut::new(),
        session,
        outbox,
        rx,
        shared,
        keep_alive,
    };
    let ended = connection.run().await;
    debug!(?identity, ?ended, "mqtt connection ended");
    if let Ended::Violation(kind) = ended {
        connection.shared.metrics.violation(kind);
    }
    if registered {
        connection
            .shared
            .registry
            .unregister(&identity, &connection.outbox);
    }
}

/// Reads CONNECT, authenticates, answers CONNACK. `None` when the connection ends here.
async fn handshake<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    shared: &EndpointShared,
) -> Option<(Wire, Session, Duration)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &shared.limits;
    let answer_limits = (limits.max_inflight, limits.max_packet_bytes);
    let (wire, connect) = match tokio::time::timeout(
        limits.connect_timeout,
        read_connect(stream, rbuf, limits.max_packet_bytes),
    )
    .await
    {
        Err(_) => {
            shared.metrics.connect(ConnectOutcome::Timeout);
            return None;
        }
        Ok(Err(ConnectError::Io)) => return None,
        Ok(Err(ConnectError::ProtocolVersion)) => {
            shared.metrics.connect(ConnectOutcome::ProtocolVersion);
            let mut out = BytesMut::new();
            Wire::V4.connack(ConnectAnswer::UnsupportedProtocol, answer_limits, &mut out);
            let _ = write_all(stream, &out).await;
            return None;
        }
        Ok(Err(ConnectError::Malformed)) => {
            shared.metrics.connect(ConnectOutcome::Malformed);
            return None;
        }
        Ok(Ok(connect)) => connect,
    };
    let verdict = authenticate(shared, &connect);
    let mut out = BytesMut::new();
    let answer = match &verdict {
        Ok(_) => ConnectAnswer::Accepted,
        Err(answer) => *answer,
    };
    wire.connack(answer, answer_limits, &mut out);
    if write_all(stream, &out).await.is_err() {
        return None;
    }
    let identity = verdict.ok()?;
    shared.metrics.connect(ConnectOutcome::Accepted);
    let keep_alive = match connect.keep_alive {
        0 => limits.idle_timeout,
        // MQTT 3.1.1 §3.1.2.10, MQTT 5 §3.1.2.10: one and a half times the keep-alive.
        secs => Duration::from_millis(u64::from(secs) * 1500),
    };
    Some((
        wire,
        Session::new(identity, limits.max_inflight),
        keep_alive,
    ))
}

/// Who the CONNECT is, or the answer refusing it (counted).
fn authenticate(shared: &EndpointShared, connect: &ConnectInfo) -> Result<Identity, ConnectAnswer> {
    if connect.auth_method {
        // MQTT 5 enhanced authentication is not served: credentials go in CONNECT.
        shared
            .metrics
            .connect(ConnectOutcome::Refused(ConnectRefusal::Credentials));
        return Err(ConnectAnswer::NotAuthorized);
    }
    let login = Login {
        client_id: &connect.client_id,
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        has_will: connect.has_will,
    };
    shared.auth.authenticate(&login).map_err(|refusal| {
        shared.metrics.connect(ConnectOutcome::Refused(refusal));
        debug!(client_id = %connect.client_id, reason = refusal.code(), "mqtt connect refused");
        refusal.answer()
    })
}

/// Why no CONNECT could be read.
pub enum ConnectError {
    Io,
    ProtocolVersion,
    Malformed,
}

/// Reads bytes until a whole CONNECT is buffered, and decodes it.
pub async fn read_connect<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<(Wire, ConnectInfo), ConnectError>
where
    S: AsyncRead + Unpin,
{
    loop {
        match super::wire::read_connect(rbuf, max_packet_bytes) {
            Ok(connect) => return Ok(connect),
            Err(ConnectReadError::Incomplete) => {}
            Err(ConnectReadError::UnsupportedProtocol) => {
                return Err(ConnectError::ProtocolVersion);
            }
            Err(ConnectReadError::Malformed) => return Err(ConnectError::Malformed),
        }
        match read_some(stream, rbuf).await {
            Ok(0) | Err(_) => return Err(ConnectError::Io),
            Ok(_) => {}
        }
    }
}

/// Reads what the socket has (up to [`READ_CHUNK`] bytes) and appends it to `rbuf`,
/// which grows with what arrived, not ahead of it. `Ok(0)`: the peer closed the
/// connection.
async fn read_some<S>(stream: &mut S, rbuf: &mut BytesMut) -> std::io::Result<usize>
where
    S: AsyncRead + Unpin,
{
    poll_fn(|cx| {
        // On the stack only while polled: a waiting read holds no buffer.
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        rbuf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    })
    .await
}

async fn write_all<S>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(bytes).await?;
    stream.flush().await
}

struct Connection<S> {
    stream: S,
    wire: Wire,
    rbuf: BytesMut,
    wbuf: BytesMut,
    session: Session,
    outbox: Arc<Outbox>,
    rx: OutboxReceiver,
    shared: Arc<EndpointShared>,
    keep_alive: Duration,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) -> Ended {
        let mut deadline = Instant::now() + self.keep_alive;
        let silence = tokio::time::sleep_until(deadline.into());
        tokio::pin!(silence);
        loop {
            // Every complete packet already buffered, while the in-flight cap allows.
            while self.session.may_read() {
                match self
                    .wire
                    .read(&mut self.rbuf, self.shared.limits.max_packet_bytes)
                {
                    Ok(packet) => {
                        deadline = Instant::now() + self.keep_alive;
                        if let Err(ended) = self.on_packet(packet).await {
                            return ended;
                        }
                    }
                    Err(ReadError::Incomplete) => break,
                    Err(ReadError::TooLarge) => {
                        return Ended::Violation(ProtocolViolation::TooLarge);
                    }
                    Err(ReadError::Malformed) => {
                        return Ended::Violation(ProtocolViolation::Malformed);
                    }
                }
            }
            if self.flush().await.is_err() {
                return Ended::Io;
            }
            let reading = self.session.may_read();
            if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                // Whatever it held is parsed: an idle meter holds no read buffer.
                self.rbuf = BytesMut::new();
            }
            if silence.deadline() != deadline.into() {
                silence.as_mut().reset(deadline.into());
            }
            tokio::select! {
                biased;
                answer = self.rx.recv() => {
                    if !reading {
                        // Resuming from the in-flight cap: the client's silence so far
                        // was ours.
                        deadline = Instant::now() + self.keep_alive;
                    }
                    if let Err(ended) = self.on_outgoing(answer) {
                        return ended;
                    }
                    for _ in 1..MAX_ANSWERS_PER_WRITE {
                        match self.rx.try_recv() {
                            Ok(answer) => {
                                if let Err(ended) = self.on_outgoing(answer) {
                                    return ended;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                read = read_some(&mut self.stream, &mut self.rbuf), if reading => {
                    match read {
                        Ok(0) => return Ended::Closed,
                        Ok(_) => {}
                        Err(_) => return Ended::Io,
                    }
                }
                // Only while reading: a connection paused at its in-flight cap is
                // silent because of us, not because the client went away.
                _ = &mut silence, if reading => {
                    return Ended::Violation(ProtocolViolation::KeepAlive);
                }
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.wbuf).await?;
        self.stream.flush().await?;
        // Released, not kept: an idle meter holds no write buffer.
        self.wbuf = BytesMut::new();
        Ok(())
    }

    async fn on_packet(&mut self, packet: Incoming) -> Result<(), Ended> {
        match packet {
            Incoming::Publish {
                topic,
                pkid,
                qos,
                retain,
                payload,
                aliased,
            } => {
                if aliased {
                    // No topic alias was granted (CONNACK said 0).
                    return Err(Ended::Violation(ProtocolViolation::Malformed));
                }
                self.on_publish(topic, pkid, qos, retain, payload).await
            }
            Incoming::PingReq => {
                self.wire.pingresp(&mut self.wbuf);
                Ok(())
            }
            Incoming::Subscribe { pkid, filters } => {
                let decisions = self
                    .session
                    .on_subscribe(filters.iter().map(String::as_str));
                let mut granted = Vec::with_capacity(decisions.len());
                for grant in decisions {
                    granted.push(grant.is_some());
                    match grant {
                        Some(grant) => self.apply_grant(grant),
                        None => self.shared.metrics.refused_subscribe.increment(1),
                    }
                }
                self.wire.suback(pkid, &granted, &mut self.wbuf);
                Ok(())
            }
            Incoming::Unsubscribe { pkid, filters } => {
                for grant in self
                    .session
                    .on_unsubscribe(filters.iter().map(String::as_str))
                {
                    if let Grant::Alerts(filter) = grant {
                        self.shared
                            .registry
                            .unsubscribe_alerts(&filter, &self.outbox);
                    }
                }
                if !self.session.has_ack_grant() {
                    self.outbox.unsubscribe_acks();
                }
                self.wire.unsuback(pkid, filters.len(), &mut self.wbuf);
                Ok(())
            }
            Incoming::Disconnect => Err(Ended::Closed),
            // A client may acknowledge our QoS 0 publishes needlessly; nothing to do.
            Incoming::PubAck => Ok(()),
            Incoming::Unexpected => Err(Ended::Violation(ProtocolViolation::Malformed)),
        }
    }

    fn apply_grant(&mut self, grant: Grant) {
        match grant {
            Grant::Acks => self.outbox.subscribe_acks(),
            Grant::Alerts(filter) => self.shared.registry.subscribe_alerts(filter, &self.outbox),
        }
    }

    async fn on_publish(
        &mut self,
        topic: String,
        pkid: u16,
        qos: QoS,
        retain: bool,
        payload: Bytes,
    ) -> Result<(), Ended> {
        let (meter, refused) = match self.session.on_publish(&topic, qos, retain) {
            PublishVerdict::Take { meter, refused } => (meter, refused),
            PublishVerdict::Close(violation) => return Err(Ended::Violation(violation)),
        };
        if refused.is_some() {
            self.shared.metrics.refused_publish.increment(1);
        }
        let pkid = (qos == QoS::AtLeastOnce).then_some(pkid);
        let completion = Completion::new(self.outbox.clone(), pkid, refused.is_some());
        let inbound = Inbound {
            identity: meter,
            topic: Bytes::from(topic),
            payload,
            refused,
            received_at: now_ms(),
            received: Instant::now(),
            completion,
            order: None,
        };
        self.shared.metrics.received.increment(1);
        if self.shared.handoff.send(inbound).await.is_err() {
            self.shared.metrics.shed.add(1, 0);
            return Err(Ended::PipelineClosed);
        }
        Ok(())
    }

    fn on_outgoing(&mut self, answer: Outgoing) -> Result<(), Ended> {
        match answer {
            Outgoing::PubAck { pkid, refused } => {
                self.session.on_answered();
                self.wire.puback(pkid, refused, &mut self.wbuf);
                self.shared.metrics.pubacks.increment(1);
            }
            Outgoing::Done => self.session.on_answered(),
            Outgoing::Watermark(seq) => {
                if let (Some(meter), true) = (self.session.meter(), self.session.has_ack_grant()) {
                    let topic = topic::ack_topic(meter);
                    self.wire
                        .publish(&topic, Bytes::from(ack::encode(seq)), &mut self.wbuf);
                }
            }
            Outgoing::Alert { topic, payload } => {
                self.outbox.alert_taken();
                self.wire.publish(&topic, payload, &mut self.wbuf);
            }
            Outgoing::Abandoned => {
                self.session.on_answered();
                return Err(Ended::Abandoned);
            }
            Outgoing::TakenOver => return Err(Ended::TakenOver),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The runner against arbitrary bytes: whatever a client sends, `serve` ends (when
    //! the client goes) and never panics. Half the cases start with a valid CONNECT so
    //! the bytes reach the connected state's packet handling. And valid publishes
    //! arriving in pieces cut anywhere are each handed over once.
    use super::*;
    use crate::config::Config;
    use crate::endpoint::handoff::{Handoff, ShardRouter};
    use crate::endpoint::registry::Registry;
    use crate::endpoint::session::Authenticator;
    use crate::metrics::{EndpointMetrics, PipelineMetrics};
    use crate::tenants::Tenants;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::AsyncReadExt;

    /// The packet limit of the tests' connections: past [`READ_CHUNK`], so a packet
    /// can take more than one socket read however it arrives.
    const TEST_PACKET_LIMIT: usize = 2 * READ_CHUNK;

    fn shared() -> (
        Arc<EndpointShared>,
        Vec<crate::endpoint::handoff::ShardInbox>,
    ) {
        let (router, inboxes) = ShardRouter::new(1, 4);
        let shared = EndpointShared {
            auth: Authenticator::new(
                Arc::new(Tenants::from_config(&Config::default())),
                "probe-secret".into(),
            ),
            handoff: Handoff::Shards(router),
            registry: Arc::new(Registry::default()),
            metrics: EndpointMetrics::register(&PipelineMetrics::register()),
            limits: ConnectionLimits {
                connect_timeout: Duration::from_millis(200),
                max_inflight: 2,
                max_packet_bytes: TEST_PACKET_LIMIT,
                idle_timeout: Duration::from_millis(500),
            },
        };
        (Arc::new(shared), inboxes)
    }

    fn connect_packet(mqtt5: bool) -> Vec<u8> {
        let mut out = BytesMut::new();
        if mqtt5 {
            use rumqttc::v5::mqttbytes::v5;
            let connect = v5::Connect {
                keep_alive: 30,
                client_id: "demo.m1".into(),
                clean_start: true,
                properties: None,
            };
            v5::Packet::Connect(connect, None, None)
                .write(&mut out, None)
                .unwrap();
        } else {
            rumqttc::Connect::new("demo.m1").write(&mut out).unwrap();
        }
        out.to_vec()
    }

    /// A QoS 1 PUBLISH of `payload` on the meter's own topic, packet id `pkid`.
    fn publish_packet(mqtt5: bool, pkid: u16, payload: Vec<u8>) -> Vec<u8> {
        const TOPIC: &str = "meters/demo/m1/up";
        let mut out = BytesMut::new();
        if mqtt5 {
            use rumqttc::v5::mqttbytes::{self, v5};
            let mut publish = v5::Publish::new(TOPIC, mqttbytes::QoS::AtLeastOnce, payload, None);
            publish.pkid = pkid;
            v5::Packet::Publish(publish).write(&mut out, None).unwrap();
        } else {
            let mut publish = rumqttc::Publish::new(TOPIC, QoS::AtLeastOnce, payload);
            publish.pkid = pkid;
            publish.write(&mut out).unwrap();
        }
        out.to_vec()
    }

    /// Feeds `bytes` to a connection, answering every uplink it hands over, and
    /// returns once `serve` has returned.
    fn feed(bytes: Vec<u8>) {
        feed_pieces(vec![bytes]);
    }

    /// Feeds `pieces` one after another, letting the connection run between them,
    /// answers every uplink it hands over, and returns how many it handed over once
    /// `serve` has returned.
    fn feed_pieces(pieces: Vec<Vec<u8>>) -> usize {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (shared, inboxes) = shared();
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let serving = tokio::spawn(serve(server, shared.clone()));
            let stop = Arc::new(AtomicBool::new(false));
            let stopped = stop.clone();
            let answering = tokio::spawn(async move {
                let mut handed = 0;
                loop {
                    // Read before draining: whatever was handed over before the stop
                    // is counted by the last pass.
                    let last = stopped.load(Ordering::Acquire);
                    while let Ok(inbound) = inboxes[0].try_recv() {
                        handed += 1;
                        inbound.completion.complete();
                    }
                    if last {
                        return handed;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            for piece in pieces {
                let _ = client.write_all(&piece).await;
                tokio::task::yield_now().await;
            }
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let reading = tokio::spawn(async move {
                let _ = client.read_to_end(&mut sink).await;
            });
            tokio::time::timeout(Duration::from_secs(5), serving)
                .await
                .expect("serve ends once the client is gone")
                .expect("serve does not panic");
            stop.store(true, Ordering::Release);
            reading.abort();
            answering.await.expect("the answering task does not panic")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic_nor_hang(
            connected in any::<bool>(),
            mqtt5 in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let mut input = if connected { connect_packet(mqtt5) } else { Vec::new() };
            input.extend(bytes);
            feed(input);
        }

        #[test]
        fn arbitrary_packets_never_panic_nor_hang(
            mqtt5 in any::<bool>(),
            packets in proptest::collection::vec(
                (0u8..16, any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)),
                0..12,
            ),
        ) {
            // Well-framed packets of every type with arbitrary flags and bodies.
            let mut input = connect_packet(mqtt5);
            for (kind, flags, body) in packets {
                input.push((kind << 4) | (flags & 0x0F));
                let mut len = body.len();
                loop {
                    let byte = (len % 128) as u8;
                    len /= 128;
                    input.push(if len > 0 { byte | 0x80 } else { byte });
                    if len == 0 {
                        break;
                    }
                }
                input.extend(body);
            }
            feed(input);
        }

        #[test]
        fn publishes_split_anywhere_are_each_handed_over_once(
            mqtt5 in any::<bool>(),
            sizes in proptest::collection::vec(0usize..TEST_PACKET_LIMIT - 64, 1..6),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..16),
        ) {
            // Valid publishes up to the packet limit (twice a socket read), arriving
            // in pieces cut anywhere: inside fixed headers, bodies, across packets.
            // Reading through the scratch buffer must never lose, repeat or merge one.
            let mut input = connect_packet(mqtt5);
            for (i, size) in sizes.iter().enumerate() {
                input.extend(publish_packet(mqtt5, i as u16 + 1, vec![b'x'; *size]));
            }
            let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len())).collect();
            points.push(input.len());
            points.sort_unstable();
            points.dedup();
            let mut pieces = Vec::new();
            let mut from = 0;
            for to in points {
                pieces.push(input[from..to].to_vec());
                from = to;
            }
            prop_assert_eq!(feed_pieces(pieces), sizes.len());
        }
    }
}
