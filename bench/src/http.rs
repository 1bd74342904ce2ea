//! A minimal HTTP/1.1 GET over a blocking `TcpStream`, for `/readyz` and `/metrics`
//! on loopback. One request per connection (`Connection: close`); bodies framed by
//! `Content-Length`, chunked encoding, or the end of the stream. That is all a
//! scraper of our own service needs, and it keeps an HTTP client crate out of the
//! bench tree.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

/// Largest response accepted: `/metrics` is a few tens of KiB.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// `GET http://{addr}{path}`: the status code and the body.
pub(crate) fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to http://{addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES as u64)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response of http://{addr}{path}"))?;
    parse_response(&raw)
}

/// Splits a raw HTTP/1.1 response into status code and (de-chunked) body.
pub(crate) fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("the HTTP response has no end of headers");
    };
    let head = std::str::from_utf8(&raw[..head_end]).context("HTTP headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let body = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = content_length {
        if body.len() < length {
            bail!("HTTP body cut short: {} of {length} bytes", body.len());
        }
        body[..length].to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            bail!("chunked HTTP body without a chunk size line");
        };
        let size_text = std::str::from_utf8(&body[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            bail!("chunked HTTP body cut short");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(raw).unwrap(), (200, "hello".to_owned()));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello";
        assert!(parse_response(short).is_err());
    }

    #[test]
    fn chunked_body() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4\r\nwait\r\n6;ext=1\r\ning...\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap(), (503, "waiting...".to_owned()));
    }

    #[test]
    fn body_to_end_of_stream_and_garbage() {
        let raw = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert_eq!(parse_response(raw).unwrap().1, "all of it");
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }
}
