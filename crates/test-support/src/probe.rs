//! Readiness probes spoken over plain TCP, so that "started" means "answers its protocol",
//! not "the process exists" or "a fixed time has passed".

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one probe may take before it counts as a failed attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// A loopback port nobody listens on right now. Another process may take it before the
/// server binds it; the fixtures then retry with a new port.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("find a free loopback port: {e}"))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Sends `PING` to a Valkey server and expects `+PONG`.
pub(crate) async fn valkey_ping(port: u16) -> io::Result<()> {
    let exchange = async {
        let mut stream = TcpStream::connect(loopback(port)).await?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
        let mut reply = [0_u8; 7];
        stream.read_exact(&mut reply).await?;
        if &reply == b"+PONG\r\n" {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "PING answered {:?}",
                String::from_utf8_lossy(&reply)
            )))
        }
    };
    within_attempt_timeout(exchange).await
}

/// Sends a Kafka `ApiVersions` v0 request and expects a response with the same correlation id.
pub(crate) async fn kafka_api_versions(port: u16) -> io::Result<()> {
    const CORRELATION_ID: i32 = 0x6177_6972; // "awir"
    const CLIENT_ID: &[u8] = b"agentwire-test-support";
    let exchange = async {
        let mut request = Vec::with_capacity(64);
        let body_len = 2 + 2 + 4 + 2 + CLIENT_ID.len();
        request.extend_from_slice(&i32::try_from(body_len).unwrap_or(i32::MAX).to_be_bytes());
        request.extend_from_slice(&18_i16.to_be_bytes()); // api_key: ApiVersions
        request.extend_from_slice(&0_i16.to_be_bytes()); // api_version
        request.extend_from_slice(&CORRELATION_ID.to_be_bytes());
        request.extend_from_slice(&i16::try_from(CLIENT_ID.len()).unwrap_or(0).to_be_bytes());
        request.extend_from_slice(CLIENT_ID);

        let mut stream = TcpStream::connect(loopback(port)).await?;
        stream.write_all(&request).await?;
        let mut header = [0_u8; 8]; // response length, then correlation id
        stream.read_exact(&mut header).await?;
        let correlation_id = i32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if correlation_id == CORRELATION_ID {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "ApiVersions answered correlation id {correlation_id}"
            )))
        }
    };
    within_attempt_timeout(exchange).await
}

async fn within_attempt_timeout(exchange: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_with_no_listener_fails_the_probes() {
        let port = free_port();
        assert!(valkey_ping(port).await.is_err());
        assert!(kafka_api_versions(port).await.is_err());
    }

    #[tokio::test]
    async fn the_ping_probe_accepts_pong_only() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            for reply in [&b"-LOADING\r\n"[..], b"+PONG\r\n"] {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut ping = [0_u8; 14];
                socket.read_exact(&mut ping).await.expect("read PING");
                assert_eq!(&ping, b"*1\r\n$4\r\nPING\r\n");
                socket.write_all(reply).await.expect("write");
            }
        });
        assert!(valkey_ping(port).await.is_err());
        valkey_ping(port).await.expect("PONG");
        server.await.expect("server task");
    }
}
