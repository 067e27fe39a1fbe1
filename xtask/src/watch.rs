//! Watching a running stack: `cargo xtask up` stays in the foreground, and says loudly when a
//! process dies (naming it, with the last lines of its log) or when the gateway stops being
//! ready (its `/readyz`: the broker or Valkey not answering), and again when it recovers.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::enricher_stage::Ready;
use crate::procs::Service;
use crate::stack::DemoRuns;

/// How often `/readyz` is asked.
const READY_EVERY: Duration = Duration::from_secs(5);
/// Failed readiness probes in a row before the stack is reported not ready.
const NOT_READY_AFTER: u32 = 3;
/// Lines of a dead process's log shown.
const LOG_LINES: usize = 20;

/// Watches `services` (and those that join later through `joining`) and the gateway's
/// readiness until `stopping` is set; fails (after saying which and why) when one of them
/// exits. When a service joins, the demo runs again (to show what it adds).
pub fn watch(
    services: &mut Vec<Service>,
    joining: Option<&mpsc::Receiver<Ready>>,
    mut demo: Option<&mut DemoRuns>,
    gateway: SocketAddr,
    stopping: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut next_probe = Instant::now() + READY_EVERY;
    let mut failures = 0_u32;
    let mut reported = false;
    while !stopping.load(Ordering::SeqCst) {
        while let Some(ready) = joining.and_then(|j| j.try_recv().ok()) {
            match ready.start() {
                Ok(enricher) => {
                    services.push(enricher);
                    if let Some(demo) = demo.as_deref_mut() {
                        demo.again();
                    }
                }
                Err(err) => eprintln!(
                    "xtask: !!! the enricher did not start: {err:#}; the stack goes on without it"
                ),
            }
        }
        let ended = match demo.as_deref_mut() {
            Some(demo) => demo.poll()?,
            None => None,
        };
        if let Some(success) = ended
            && !stopping.load(Ordering::SeqCst)
        {
            if success {
                println!("xtask: the demo finished; the stack stays up (Ctrl-C stops it)");
            } else {
                eprintln!("xtask: the demo failed (see above); the stack stays up");
            }
        }
        for service in services.iter_mut() {
            if !service.is_running() {
                eprintln!(
                    "\nxtask: !!! {} EXITED !!! the stack cannot work without it. Last lines of {}:\n{}",
                    service.name.to_uppercase(),
                    service.log.display(),
                    tail(&service.log, LOG_LINES)
                );
                bail!("{} exited; see {}", service.name, service.log.display());
            }
        }
        if Instant::now() >= next_probe {
            next_probe = Instant::now() + READY_EVERY;
            match readyz(gateway) {
                Ok(()) => {
                    if reported {
                        println!("xtask: the gateway is ready again");
                    }
                    failures = 0;
                    reported = false;
                }
                Err(why) => {
                    failures += 1;
                    if failures >= NOT_READY_AFTER && !reported {
                        eprintln!(
                            "\nxtask: !!! THE GATEWAY IS NOT READY !!! for {}s: {why}\n\
                             xtask: publishes fail until it is; check kafka.log (the broker) and valkey.log in the stack folder",
                            (READY_EVERY * failures).as_secs()
                        );
                        reported = true;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `GET /readyz` over plain HTTP/1.1: `Ok` on 200, else the status line and body.
fn readyz(gateway: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&gateway, Duration::from_secs(2))
        .map_err(|e| format!("the gateway does not accept connections: {e}"))?;
    let timeout = Some(Duration::from_secs(4));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {gateway}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("no answer from /readyz: {e}"))?;
    let status = answer.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) == Some("200") {
        Ok(())
    } else {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
        Err(format!("{status} {body}"))
    }
}

/// The last `lines` lines of the file at `path` (empty when unreadable).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("xtask-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("log");
        std::fs::write(&file, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&file, 2), "b\nc");
        assert_eq!(tail(&file, 10), "a\nb\nc");
        assert_eq!(tail(&dir.join("missing"), 2), "");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// One HTTP answer from a listener on loopback, as a gateway would give it.
    fn answer_once(response: &'static str) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                // Read the whole request head first: closing a socket with unread input
                // resets the connection, and the client would lose the answer.
                let mut request = Vec::new();
                let mut buf = [0_u8; 256];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response.as_bytes());
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
        });
        addr
    }

    #[test]
    fn readiness_follows_the_status_and_quotes_the_body() {
        let ready = answer_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        assert_eq!(readyz(ready), Ok(()));
        let broker_down = answer_once(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 18\r\n\r\n{\"kafka\":\"timeout\"}",
        );
        let why = readyz(broker_down).expect_err("a 503 is not ready");
        assert!(why.contains("503") && why.contains("kafka"), "{why}");
    }

    #[test]
    fn a_closed_port_is_not_ready() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        assert!(readyz(addr).is_err());
    }
}
