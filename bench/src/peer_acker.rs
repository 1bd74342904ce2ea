//! The peer baselines' "service": ONE MQTT subscriber on a bare broker (Mosquitto or
//! rumqttd) that only counts uplinks and answers each with the ack meterflow would
//! send, so the same simulator closes its loop against a broker with no pipeline
//! behind it.
//!
//! It does no decoding beyond finding the `seq`, no storage and no fsync, so the peer
//! numbers are an upper bound for "broker only", not a like-for-like service.
//!
//! Path of one message: meter →(QoS 1)→ broker →(QoS 0)→ acker →(QoS 0 `{"seq":W}` on
//! `meters/{t}/{m}/ack`)→ broker →(QoS 0)→ meter. W is the meter's contiguous
//! watermark (DESIGN §3) from the first seq seen, so a message the broker drops on the
//! way to the acker is never acked; such gaps are counted (`gaps`): a skip (rumqttd's
//! router skips messages for a subscriber that falls behind) or a drop.
//!
//! One blocking thread: read whatever the socket has, handle every complete packet
//! in the buffer, then write all the acks it produced in one `write`. Batching the
//! writes this way keeps the acker far below the broker's cost per message.
//!
//! The acker runs on a thread of the harness; its CPU time (`/proc/self/task/<tid>`)
//! is counted with the broker's as the peer's service CPU.
//!
//! The specified peer is ONE such subscriber. Mosquitto reads one packet per socket
//! per pass of its event loop, so all acks funnelling through one connection can be
//! the peer's ceiling; `--peer-ackers N` spreads them over N subscribers sharing a
//! `$share/…` subscription. Mosquitto hands shared messages out round-robin, so a
//! meter's seqs are split between ackers and no acker sees a contiguous run: in that
//! mode each acker acks the highest seq it has seen (gaps are not counted) — looser
//! than meterflow's rule, so still an upper bound.

use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::mqtt_wire::{self, Frame};

/// How long the acker waits for the broker's CONNACK / SUBACK.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Read timeout: how often the thread looks at its stop flag when idle.
const POLL: Duration = Duration::from_millis(200);
/// Read buffer: a few hundred uplinks per read at full speed.
const READ_CHUNK: usize = 256 * 1024;
/// Keep-alive of the acker's connection: rumqttd refuses 0 ("no keep-alive"), so the
/// acker says 60 s and sends a PINGREQ after [`PING_AFTER`] without writing.
const KEEP_ALIVE_S: u16 = 60;
const PING_AFTER: Duration = Duration::from_secs(20);

/// Live counters of the acker.
#[derive(Debug, Default)]
pub(crate) struct AckerCounters {
    pub(crate) received: AtomicU64,
    pub(crate) acks: AtomicU64,
    /// Uplinks that arrived past a hole in their meter's seqs.
    pub(crate) gaps: AtomicU64,
    /// Uplinks without a readable seq.
    pub(crate) unreadable: AtomicU64,
    /// The acker thread's kernel thread id (0 until it runs).
    pub(crate) tid: AtomicU64,
}

impl AckerCounters {
    /// CPU seconds the acker thread has used (`None` before it runs or once it ended).
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        match self.tid.load(Ordering::Relaxed) {
            0 => None,
            tid => crate::procfs::thread_cpu_seconds(tid),
        }
    }
}

/// A running acker; stops when dropped or [`PeerAcker::stop`]ped.
pub(crate) struct PeerAcker {
    pub(crate) counters: Arc<AckerCounters>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl PeerAcker {
    /// Connects as acker `index`, subscribes to `filter` and returns once the
    /// subscription is acked. `contiguous`: ack contiguous watermarks (else the
    /// highest seq seen).
    pub(crate) fn start(
        broker: SocketAddr,
        filter: &str,
        index: usize,
        contiguous: bool,
    ) -> anyhow::Result<PeerAcker> {
        let mut stream = TcpStream::connect_timeout(&broker, HANDSHAKE_TIMEOUT)
            .with_context(|| format!("peer acker: connecting to {broker}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut out = Vec::new();
        mqtt_wire::connect(
            &mut out,
            &format!("meterflow-bench-acker-{index}"),
            KEEP_ALIVE_S,
        );
        mqtt_wire::subscribe(&mut out, 1, filter, 0);
        stream.write_all(&out)?;

        let mut buf = Vec::with_capacity(READ_CHUNK);
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut subscribed = false;
        while !subscribed {
            if Instant::now() > deadline {
                bail!("peer acker: no SUBACK from {broker} within {HANDSHAKE_TIMEOUT:?}");
            }
            read_some(&mut stream, &mut buf)?;
            while let Some(frame) = mqtt_wire::next_frame(&buf)
                .map_err(|e| anyhow::anyhow!("peer acker: bad frame {e:?}"))?
            {
                let len = frame.len;
                match frame.packet_type {
                    mqtt_wire::CONNACK => {
                        let code = mqtt_wire::connack_code(frame.body);
                        if code != Some(0) {
                            bail!("peer acker: broker refused the connection ({code:?})");
                        }
                    }
                    mqtt_wire::SUBACK => {
                        if frame.body.get(2) == Some(&0x80) {
                            bail!("peer acker: broker refused the subscription to {filter}");
                        }
                        subscribed = true;
                    }
                    _ => {}
                }
                buf.drain(..len);
            }
        }
        stream.set_read_timeout(Some(POLL))?;
        let counters = Arc::new(AckerCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handle = thread::Builder::new().name("peer-acker".into()).spawn({
            let counters = Arc::clone(&counters);
            let stop = Arc::clone(&stop);
            move || ack_loop(stream, buf, contiguous, &counters, &stop)
        })?;
        Ok(PeerAcker {
            counters,
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread; returns its error if it died early.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("peer acker thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for PeerAcker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Appends what the socket has to `buf`; a timeout is not an error.
fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let start = buf.len();
    buf.resize(start + READ_CHUNK, 0);
    match stream.read(&mut buf[start..]) {
        Ok(0) => {
            buf.truncate(start);
            bail!("peer acker: the broker closed the connection")
        }
        Ok(n) => {
            buf.truncate(start + n);
            Ok(())
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            buf.truncate(start);
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e).context("peer acker: reading from the broker")
        }
    }
}

fn ack_loop(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    contiguous: bool,
    counters: &AckerCounters,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    counters.tid.store(
        u64::from(
            rustix::thread::gettid()
                .as_raw_nonzero()
                .get()
                .unsigned_abs(),
        ),
        Ordering::Relaxed,
    );
    let mut watermarks = Watermarks {
        contiguous,
        ..Watermarks::default()
    };
    let mut out = Vec::with_capacity(READ_CHUNK);
    let mut ack_topic = Vec::with_capacity(96);
    let mut payload = Vec::with_capacity(32);
    let mut last_write = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        read_some(&mut stream, &mut buf)?;
        let mut consumed = 0;
        let (mut received, mut acks, mut gaps, mut unreadable) = (0, 0, 0, 0);
        while let Some(Frame {
            packet_type,
            flags,
            body,
            len,
        }) = mqtt_wire::next_frame(&buf[consumed..])
            .map_err(|e| anyhow::anyhow!("peer acker: bad frame {e:?}"))?
        {
            consumed += len;
            if packet_type != mqtt_wire::PUBLISH {
                continue;
            }
            let Some((topic, body)) = mqtt_wire::parse_publish(flags, body) else {
                unreadable += 1;
                continue;
            };
            received += 1;
            let (Some(meter), Some(seq)) = (topic.strip_suffix(b"/up"), uplink_seq(body)) else {
                unreadable += 1;
                continue;
            };
            let answer = watermarks.observe(meter, seq);
            if answer.gap {
                gaps += 1;
            }
            if let Some(watermark) = answer.ack {
                ack_topic.clear();
                ack_topic.extend_from_slice(meter);
                ack_topic.extend_from_slice(b"/ack");
                payload.clear();
                write!(payload, "{{\"seq\":{watermark}}}")?;
                mqtt_wire::publish_qos0(&mut out, &ack_topic, &payload);
                acks += 1;
            }
        }
        buf.drain(..consumed);
        if out.is_empty() && last_write.elapsed() > PING_AFTER {
            mqtt_wire::pingreq(&mut out);
        }
        if !out.is_empty() {
            last_write = Instant::now();
            stream
                .write_all(&out)
                .context("peer acker: writing acks to the broker")?;
            out.clear();
        }
        counters.received.fetch_add(received, Ordering::Relaxed);
        counters.acks.fetch_add(acks, Ordering::Relaxed);
        counters.gaps.fetch_add(gaps, Ordering::Relaxed);
        counters.unreadable.fetch_add(unreadable, Ordering::Relaxed);
    }
    Ok(())
}

/// The `seq` of an uplink payload: a scan for `"seq":` in JSON (the acker's hot path;
/// no full parse), the model's decoder for binary.
pub(crate) fn uplink_seq(payload: &[u8]) -> Option<u64> {
    if payload.first() == Some(&b'{') {
        let key = b"\"seq\":";
        let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
        let digits = payload[at..]
            .iter()
            .skip_while(|b| **b == b' ')
            .take_while(|b| b.is_ascii_digit());
        let mut seq: u64 = 0;
        let mut any = false;
        for digit in digits {
            seq = seq.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            any = true;
        }
        any.then_some(seq)
    } else {
        meterflow_model::codec::decode(payload).ok().map(|u| u.seq)
    }
}

/// Per-meter watermarks. Contiguous, as meterflow keeps them (DESIGN §3): W starts at
/// the first seq seen and only moves over a contiguous run. Otherwise (several
/// ackers sharing the uplinks) W is the highest seq seen.
#[derive(Debug, Default)]
pub(crate) struct Watermarks {
    pub(crate) contiguous: bool,
    meters: HashMap<Vec<u8>, MeterMark>,
}

#[derive(Debug)]
struct MeterMark {
    watermark: u64,
    /// Seqs seen above the watermark, waiting for the hole below them.
    ahead: BTreeSet<u64>,
}

/// What to do after one uplink.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Publish this watermark (it moved, or the uplink was a duplicate).
    pub(crate) ack: Option<u64>,
    /// The uplink arrived past a hole.
    pub(crate) gap: bool,
}

impl Watermarks {
    pub(crate) fn observe(&mut self, meter: &[u8], seq: u64) -> Answer {
        let Some(mark) = self.meters.get_mut(meter) else {
            self.meters.insert(
                meter.to_vec(),
                MeterMark {
                    watermark: seq,
                    ahead: BTreeSet::new(),
                },
            );
            return Answer {
                ack: Some(seq),
                gap: false,
            };
        };
        if !self.contiguous {
            mark.watermark = mark.watermark.max(seq);
            return Answer {
                ack: Some(mark.watermark),
                gap: false,
            };
        }
        if seq <= mark.watermark || mark.ahead.contains(&seq) {
            // A duplicate is answered with the current watermark.
            return Answer {
                ack: Some(mark.watermark),
                gap: false,
            };
        }
        if seq == mark.watermark + 1 {
            mark.watermark = seq;
            while mark.ahead.remove(&(mark.watermark + 1)) {
                mark.watermark += 1;
            }
            return Answer {
                ack: Some(mark.watermark),
                gap: false,
            };
        }
        mark.ahead.insert(seq);
        Answer {
            ack: None,
            gap: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_model::{Reading, Uplink};

    #[test]
    fn seq_is_found_in_json_and_binary() {
        let mut uplink = Uplink::new(
            1842,
            vec![Reading {
                ts: 1_763_800_000_000,
                reg: 5,
                rev: 0,
                flow: 0,
                temp: Some(125),
            }],
        );
        uplink.battery = Some(80);
        let json = meterflow_model::codec::encode_json(&uplink);
        let binary = meterflow_model::codec::encode_binary(&uplink);
        assert_eq!(uplink_seq(&json), Some(1842));
        assert_eq!(uplink_seq(&binary), Some(1842));
        assert_eq!(uplink_seq(br#"{"v":1,"seq": 12,"readings":[]}"#), Some(12));
        assert_eq!(uplink_seq(br#"{"v":1,"readings":[]}"#), None);
        assert_eq!(uplink_seq(br#"{"seq":"x"}"#), None);
        assert_eq!(uplink_seq(b""), None);
    }

    #[test]
    fn watermark_moves_over_contiguous_runs_only() {
        let mut marks = Watermarks {
            contiguous: true,
            ..Watermarks::default()
        };
        let m = b"meters/demo/m000001";
        let ack = |ack: Option<u64>, gap| Answer { ack, gap };
        assert_eq!(marks.observe(m, 5), ack(Some(5), false), "first seen");
        assert_eq!(marks.observe(m, 6), ack(Some(6), false));
        assert_eq!(marks.observe(m, 8), ack(None, true), "hole at 7");
        assert_eq!(marks.observe(m, 9), ack(None, true));
        assert_eq!(
            marks.observe(m, 8),
            ack(Some(6), false),
            "dup of a held seq"
        );
        assert_eq!(marks.observe(m, 7), ack(Some(9), false), "hole filled");
        assert_eq!(marks.observe(m, 3), ack(Some(9), false), "old duplicate");
        assert_eq!(
            marks.observe(b"meters/demo/m000002", 1),
            ack(Some(1), false)
        );
    }

    #[test]
    fn shared_ackers_ack_the_highest_seq_seen() {
        let mut marks = Watermarks::default();
        let m = b"meters/demo/m000001";
        let ack = |ack: Option<u64>| Answer { ack, gap: false };
        assert_eq!(marks.observe(m, 2), ack(Some(2)));
        assert_eq!(marks.observe(m, 4), ack(Some(4)), "3 went to another acker");
        assert_eq!(marks.observe(m, 3), ack(Some(4)));
    }
}
