//! The `--metrics` endpoint: Prometheus's text format at `/metrics`, served by hyper on the
//! tracer's own runtime. The listener is bound before the eBPF programs load, while portwatch
//! still has every privilege it started with, and so that a taken address fails at once.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, header, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder as _, Registry, TextEncoder};

/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the metrics address; `serve` starts answering on it once the runtime runs.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
    listener
        .set_nonblocking(true)
        .context("making the metrics listener non-blocking")?;
    Ok(listener)
}

/// Serves `registry` on `listener` until the runtime stops. Must run inside the tokio runtime.
pub fn serve(listener: std::net::TcpListener, registry: Registry) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .context("registering the metrics listener with the runtime")?;
    tokio::spawn(async move {
        loop {
            // A failed accept (a client gone before we took it, or no file descriptors left
            // for a moment) ends only that connection, never the endpoint.
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&registry, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                // A client that disconnects mid-request is its own problem, not the tracer's.
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn respond<B>(registry: &Registry, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "portwatch serves only /metrics\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => Response::builder()
            .header(header::CONTENT_TYPE, encoder.format_type())
            .body(Full::new(Bytes::from(body)))
            .expect("a static header is valid"),
        Err(err) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding the metrics: {err}\n"),
        ),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text.to_owned())))
        .expect("a static header is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (status, content type, body) of one request.
    type Answer = (u16, String, String);

    fn answer(mut response: hyper::Response<ureq::Body>) -> Answer {
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = response.body_mut().read_to_string().unwrap();
        (response.status().as_u16(), content_type, body)
    }

    #[test]
    fn serves_the_registry_at_metrics_and_nothing_else() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("test_events_total", "Events.").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let client = std::thread::spawn(move || {
            let url = |path: &str| format!("http://{addr}{path}");
            let get = |path: &str| {
                let request = ureq::get(url(path)).config().http_status_as_error(false);
                answer(request.build().call().unwrap())
            };
            let post = ureq::post(url("/metrics"))
                .config()
                .http_status_as_error(false)
                .build()
                .send_empty()
                .unwrap();
            (get("/metrics"), get("/"), answer(post))
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            serve(listener, registry).unwrap();
            while !client.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let (metrics, root, post) = client.join().unwrap();
        assert_eq!(metrics.0, 200);
        assert_eq!(metrics.1, "text/plain; version=0.0.4");
        assert!(
            metrics.2.contains("\ntest_events_total 3\n"),
            "{}",
            metrics.2
        );
        assert_eq!(root.0, 404);
        assert_eq!(post.0, 405);
    }

    #[test]
    fn a_taken_address_is_one_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(taken.local_addr().unwrap()).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot listen there"),
            "{err:#}"
        );
    }
}
