//! The Prometheus endpoint: `GET|HEAD /metrics` and `/healthz` (any query string), on hyper's
//! HTTP/1 server. Bounded: a limit on connections at once, on the request head's size and on
//! how long a client may take; an `accept` that fails (EMFILE when the process is out of
//! descriptors) backs off instead of spinning.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::State;

/// Scrapers at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 32;
/// The request head's limit (hyper's smallest buffer); a larger head gets 431.
const MAX_HEAD_BYTES: usize = 8192;
/// A client that has not sent its head by then is dropped; a whole exchange is cut after
/// `EXCHANGE`.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const EXCHANGE: Duration = Duration::from_secs(15);

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Backoff::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(e) => {
                backoff.wait(&e).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let reply = respond(&req, &state);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(EXCHANGE, conn).await;
        });
    }
}

/// Waits after a failed `accept`, longer each time in a row (10 ms up to 1 s), and says so
/// once per streak: the failure (EMFILE, ENFILE, ENOBUFS) lasts until something frees.
#[derive(Default)]
struct Backoff {
    delay: Option<Duration>,
}

impl Backoff {
    async fn wait(&mut self, e: &std::io::Error) {
        let delay = match self.delay {
            None => {
                tracing::warn!("metrics endpoint: accept failed ({e}); backing off until it works");
                Duration::from_millis(10)
            }
            Some(d) => (d * 2).min(Duration::from_secs(1)),
        };
        self.delay = Some(delay);
        tokio::time::sleep(delay).await;
    }

    fn reset(&mut self) {
        if self.delay.take().is_some() {
            tracing::info!("metrics endpoint: accepting again");
        }
    }
}

/// The answer to one request: by path (the query string is ignored), GET or HEAD.
fn respond(req: &Request<Incoming>, state: &Mutex<State>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = answer(req.method(), req.uri().path(), state);
    let len = body.len();
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    headers.insert(CONTENT_LENGTH, len.into());
    resp
}

fn answer(method: &Method, path: &str, state: &Mutex<State>) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let poisoned = || {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            "state poisoned\n".to_owned(),
        )
    };
    if !matches!(path, "/metrics" | "/healthz") {
        return (
            StatusCode::NOT_FOUND,
            TEXT,
            "try /metrics or /healthz\n".into(),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET or HEAD\n".into());
    }
    let Ok(s) = state.lock() else {
        return poisoned();
    };
    match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            s.metrics.render(),
        ),
        _ => match s.health() {
            Ok(()) => (StatusCode::OK, TEXT, "ok\n".into()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
        },
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::daemon::metrics::Metrics;

    async fn ask(addr: std::net::SocketAddr, request: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        c.write_all(request.as_bytes()).await.expect("send");
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn answers_get_head_and_queries_and_refuses_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State {
            metrics: Metrics::new(10),
            attached: true,
            last_tick: Some(std::time::Instant::now()),
        }));
        let server = tokio::spawn(serve(listener, state));
        let get = ask(
            addr,
            "GET /metrics?name[]=pathtrace_drops_total HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert!(get.starts_with("HTTP/1.1 200 OK"), "{get}");
        assert!(get.contains("pathtrace_events_total"), "{get}");
        let head = ask(addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        let (headers, body) = head.split_once("\r\n\r\n").expect("a head");
        assert!(body.is_empty(), "HEAD has no body: {body}");
        assert!(!headers.contains("content-length: 0"), "{headers}");
        let post = ask(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let other = ask(addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        let refused = ask(addr, &huge).await;
        assert!(
            refused.is_empty() || refused.starts_with("HTTP/1.1 431"),
            "a head past the limit is refused: {refused}"
        );
        server.abort();
    }
}
