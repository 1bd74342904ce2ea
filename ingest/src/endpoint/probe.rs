//! The readiness probe: a real MQTT CONNECT/CONNACK round trip against the endpoint's
//! own plain listener, logged in with a per-process secret (`session::PROBE_USER`) that
//! grants nothing but the CONNACK. It walks the path a meter's CONNECT takes — accept,
//! connection slot, framing, authentication, session registry — so `/readyz` fails
//! when a new session could not be taken, whatever the reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::{ConnectReturnCode, Login, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::session::PROBE_USER;

/// Where to reach the endpoint: its listen address, with a wildcard made loopback.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Connects, logs in as the probe and waits for CONNACK "accepted" within `timeout`.
pub async fn probe(addr: SocketAddr, secret: &str, timeout: Duration) -> Result<(), String> {
    tokio::time::timeout(timeout, round_trip(addr, secret))
        .await
        .map_err(|_| format!("no CONNACK from {addr} within {timeout:?}"))?
}

async fn round_trip(addr: SocketAddr, secret: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut connect = rumqttc::Connect::new("meterflow-readiness-probe");
    connect.login = Some(Login::new(PROBE_USER, secret));
    connect.keep_alive = 5;
    let mut out = BytesMut::new();
    connect
        .write(&mut out)
        .map_err(|e| format!("encoding CONNECT: {e}"))?;
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let mut buf = BytesMut::with_capacity(16);
    loop {
        match Packet::read(&mut buf, 1024) {
            Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                let mut bye = BytesMut::new();
                let _ = Packet::Disconnect.write(&mut bye, 16);
                let _ = stream.write_all(&bye).await;
                return Ok(());
            }
            Ok(Packet::ConnAck(ack)) => return Err(format!("CONNACK {:?}", ack.code)),
            Ok(other) => return Err(format!("expected CONNACK, got {other:?}")),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("reading CONNACK: {e}")),
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => return Err("the endpoint closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading CONNACK: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:1883".parse().unwrap()),
            "127.0.0.1:1883".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:1883".parse().unwrap()),
            "[::1]:1883".parse().unwrap()
        );
        assert_eq!(
            probe_addr("10.1.2.3:1883".parse().unwrap()),
            "10.1.2.3:1883".parse().unwrap()
        );
    }
}
