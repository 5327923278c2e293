//! A minimal HTTP/1.1 endpoint for Prometheus scrapes: `GET /metrics` and `GET /healthz`.

use std::sync::{Arc, Mutex};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::State;

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (small; bodies are not expected).
            while n < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.read(&mut buf[n..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => match state.lock() {
                    Ok(s) => ("200 OK", "text/plain; version=0.0.4", s.metrics.render()),
                    Err(_) => (
                        "500 Internal Server Error",
                        "text/plain",
                        "state poisoned\n".into(),
                    ),
                },
                "/healthz" => match state.lock().map(|s| s.health()) {
                    Ok(Ok(())) => ("200 OK", "text/plain", "ok\n".into()),
                    Ok(Err(why)) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
                    Err(_) => (
                        "500 Internal Server Error",
                        "text/plain",
                        "state poisoned\n".into(),
                    ),
                },
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /healthz\n".into(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
