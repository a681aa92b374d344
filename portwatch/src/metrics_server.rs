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
