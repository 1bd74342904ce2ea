//! One MQTT connection: the runner around [`Session`]. It only reads, writes and waits;
//! every decision is the session's. Packets are framed by rumqttc's `mqttbytes`
//! (MQTT 3.1.1); nothing here parses MQTT by hand.
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
//! Memory: the read buffer grows to the largest packet being read and is released
//! when the connection goes idle; the write buffer likewise. An idle meter holds the
//! task, the socket and a few small allocations (measured by the bench's
//! `connections` scenario).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use meterflow_model::{ack, topic};
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck, UnsubAck};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::debug;

use super::EndpointShared;
use super::handoff::Inbound;
use super::outbox::{Completion, Outbox, Outgoing};
use super::session::{Grant, Login, ProtocolViolation, PublishVerdict, Session};
use crate::clock::now_ms;

/// Bytes reserved before each socket read: a typical uplink (a few hundred bytes to
/// a few KiB) arrives in one or two reads without holding much per idle meter.
const READ_RESERVE: usize = 1024;
/// A buffer larger than this is released once empty, so a meter that once sent a
/// large packet does not keep its buffer.
const KEEP_BUFFER: usize = 4096;
/// Most queued answers written in one go before the socket is read again.
const MAX_ANSWERS_PER_WRITE: usize = 256;
/// Byte offset of the protocol level in a CONNECT after its fixed header
/// (protocol name "MQTT" with its 2-byte length).
const PROTOCOL_LEVEL_OFFSET: usize = 6;
/// The protocol level of MQTT 3.1.1.
const MQTT_3_1_1: u8 = 4;

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
    Violation(&'static str),
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
    let Some((session, keep_alive)) = handshake(&mut stream, &mut rbuf, &shared).await else {
        return;
    };
    let meter = session.meter().cloned();
    let identity = session.identity.clone();
    let (outbox, rx) = Outbox::new(meter);
    if shared.registry.register(&identity, &outbox) {
        shared.metrics.takeovers.increment(1);
    }
    let mut connection = Connection {
        stream,
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
    connection
        .shared
        .registry
        .unregister(&identity, &connection.outbox);
}

/// Reads CONNECT, authenticates, answers CONNACK. `None` when the connection ends here.
async fn handshake<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    shared: &EndpointShared,
) -> Option<(Session, Duration)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &shared.limits;
    let connect = match tokio::time::timeout(
        limits.connect_timeout,
        read_connect(stream, rbuf, limits.max_packet_bytes),
    )
    .await
    {
        Err(_) => {
            shared.metrics.connect("timeout");
            return None;
        }
        Ok(Err(ConnectError::Io)) => return None,
        Ok(Err(ConnectError::ProtocolVersion)) => {
            shared.metrics.connect("protocol_version");
            let _ = write_packet(
                stream,
                Packet::ConnAck(ConnAck::new(
                    ConnectReturnCode::RefusedProtocolVersion,
                    false,
                )),
            )
            .await;
            return None;
        }
        Ok(Err(ConnectError::Malformed)) => {
            shared.metrics.connect("malformed");
            return None;
        }
        Ok(Ok(connect)) => connect,
    };
    let login = Login {
        client_id: &connect.client_id,
        username: connect.login.as_ref().map(|l| l.username.as_str()),
        password: connect.login.as_ref().map(|l| l.password.as_bytes()),
        has_will: connect.last_will.is_some(),
    };
    match shared.auth.authenticate(&login) {
        Ok(identity) => {
            if write_packet(
                stream,
                Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
            )
            .await
            .is_err()
            {
                return None;
            }
            shared.metrics.connect("accepted");
            let keep_alive = match connect.keep_alive {
                0 => limits.idle_timeout,
                // MQTT 3.1.1 §3.1.2.10: one and a half times the keep-alive.
                secs => Duration::from_millis(u64::from(secs) * 1500),
            };
            Some((Session::new(identity, limits.max_inflight), keep_alive))
        }
        Err(refusal) => {
            shared.metrics.connect(refusal.code());
            debug!(client_id = %connect.client_id, reason = refusal.code(), "mqtt connect refused");
            let _ = write_packet(
                stream,
                Packet::ConnAck(ConnAck::new(refusal.return_code(), false)),
            )
            .await;
            None
        }
    }
}

/// Why no CONNECT could be read.
pub enum ConnectError {
    Io,
    ProtocolVersion,
    Malformed,
}

pub async fn read_connect<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<rumqttc::Connect, ConnectError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if rumqttc::mqttbytes::check(rbuf.iter(), max_packet_bytes).is_ok()
            && protocol_level(rbuf).is_some_and(|level| level != MQTT_3_1_1)
        {
            // Only MQTT 3.1.1 is framed here; other levels are told so, as 3.1.1
            // §3.1.2.2 asks, before their CONNECT could be misread.
            return Err(ConnectError::ProtocolVersion);
        }
        match Packet::read(rbuf, max_packet_bytes) {
            Ok(Packet::Connect(connect)) => return Ok(connect),
            Ok(_) => return Err(ConnectError::Malformed),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(_) => return Err(ConnectError::Malformed),
        }
        rbuf.reserve(READ_RESERVE);
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(ConnectError::Io),
            Ok(_) => {}
        }
    }
}

/// The protocol level of a complete CONNECT at the head of `buf` (`None` for other
/// packets). The codec keeps its header length private, so the remaining-length
/// field's size (1-4 bytes, the last without its top bit) is counted here.
fn protocol_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let length_bytes = buf.get(1..)?.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    buf.get(1 + length_bytes + PROTOCOL_LEVEL_OFFSET).copied()
}

async fn write_packet<S>(stream: &mut S, packet: Packet) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(8);
    packet
        .write(&mut buf, usize::MAX)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.write_all(&buf).await?;
    stream.flush().await
}

struct Connection<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    session: Session,
    outbox: Arc<Outbox>,
    rx: UnboundedReceiver<Outgoing>,
    shared: Arc<EndpointShared>,
    keep_alive: Duration,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) -> Ended {
        let mut deadline = Instant::now() + self.keep_alive;
        loop {
            // Every complete packet already buffered, while the in-flight cap allows.
            while self.session.may_read() {
                match Packet::read(&mut self.rbuf, self.shared.limits.max_packet_bytes) {
                    Ok(packet) => {
                        deadline = Instant::now() + self.keep_alive;
                        if let Err(ended) = self.on_packet(packet).await {
                            return ended;
                        }
                    }
                    Err(CodecError::InsufficientBytes(_)) => break,
                    Err(CodecError::PayloadSizeLimitExceeded(_)) => {
                        return Ended::Violation(ProtocolViolation::TooLarge.code());
                    }
                    Err(_) => return Ended::Violation(ProtocolViolation::Malformed.code()),
                }
            }
            if self.flush().await.is_err() {
                return Ended::Io;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > KEEP_BUFFER {
                self.rbuf = BytesMut::new();
            }
            let reading = self.session.may_read();
            if reading && self.rbuf.capacity() - self.rbuf.len() < READ_RESERVE / 2 {
                self.rbuf.reserve(READ_RESERVE);
            }
            tokio::select! {
                biased;
                answer = self.rx.recv() => {
                    // The outbox's sender lives as long as this connection.
                    let Some(answer) = answer else { return Ended::Closed };
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
                read = self.stream.read_buf(&mut self.rbuf), if reading => {
                    match read {
                        Ok(0) => return Ended::Closed,
                        Ok(_) => {}
                        Err(_) => return Ended::Io,
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Ended::Violation("keep_alive");
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
        self.wbuf.clear();
        if self.wbuf.capacity() > KEEP_BUFFER {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    fn write(&mut self, packet: Packet) {
        // Our own packets are well-formed and far below any size limit.
        let _ = packet.write(&mut self.wbuf, usize::MAX);
    }

    async fn on_packet(&mut self, packet: Packet) -> Result<(), Ended> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PingReq => {
                self.write(Packet::PingResp);
                Ok(())
            }
            Packet::Subscribe(subscribe) => {
                let decisions = self
                    .session
                    .on_subscribe(subscribe.filters.iter().map(|f| f.path.as_str()));
                let mut codes = Vec::with_capacity(decisions.len());
                for (code, grant) in decisions {
                    match grant {
                        Some(grant) => self.apply_grant(grant),
                        None => self.shared.metrics.refused_subscribe.increment(1),
                    }
                    codes.push(code);
                }
                self.write(Packet::SubAck(SubAck::new(subscribe.pkid, codes)));
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                for grant in self
                    .session
                    .on_unsubscribe(unsubscribe.topics.iter().map(String::as_str))
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
                self.write(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)));
                Ok(())
            }
            Packet::Disconnect => Err(Ended::Closed),
            // A client may acknowledge our QoS 0 publishes needlessly; nothing to do.
            Packet::PubAck(_) => Ok(()),
            _ => Err(Ended::Violation(ProtocolViolation::Malformed.code())),
        }
    }

    fn apply_grant(&mut self, grant: Grant) {
        match grant {
            Grant::Acks => self.outbox.subscribe_acks(),
            Grant::Alerts(filter) => self.shared.registry.subscribe_alerts(filter, &self.outbox),
        }
    }

    async fn on_publish(&mut self, publish: Publish) -> Result<(), Ended> {
        let (meter, refused) =
            match self
                .session
                .on_publish(&publish.topic, publish.qos, publish.retain)
            {
                PublishVerdict::Take { meter, refused } => (meter, refused),
                PublishVerdict::Close(violation) => return Err(Ended::Violation(violation.code())),
            };
        if refused.is_some() {
            self.shared.metrics.refused_publish.increment(1);
        }
        let pkid = (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid);
        let inbound = Inbound {
            identity: meter,
            topic: Bytes::from(publish.topic),
            payload: publish.payload,
            refused,
            received_at: now_ms(),
            received: Instant::now(),
            completion: Completion::new(self.outbox.clone(), pkid),
        };
        self.shared.metrics.received.increment(1);
        if self.shared.router.send(inbound).await.is_err() {
            self.shared.metrics.shed.add(1, 0);
            return Err(Ended::PipelineClosed);
        }
        Ok(())
    }

    fn on_outgoing(&mut self, answer: Outgoing) -> Result<(), Ended> {
        match answer {
            Outgoing::PubAck(pkid) => {
                self.session.on_answered();
                self.write(Packet::PubAck(PubAck::new(pkid)));
                self.shared.metrics.pubacks.increment(1);
            }
            Outgoing::Done => self.session.on_answered(),
            Outgoing::Watermark(seq) => {
                if let (Some(meter), true) = (self.session.meter(), self.session.has_ack_grant()) {
                    let publish = Publish::from_bytes(
                        topic::ack_topic(meter),
                        QoS::AtMostOnce,
                        Bytes::from(ack::encode(seq)),
                    );
                    self.write(Packet::Publish(publish));
                }
            }
            Outgoing::Alert { topic, payload } => {
                self.outbox.alert_taken();
                self.write(Packet::Publish(Publish::from_bytes(
                    topic.as_ref(),
                    QoS::AtMostOnce,
                    payload,
                )));
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
