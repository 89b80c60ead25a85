//! The sidecar: a pingora reverse proxy in front of an OpenAI-compatible API. Every request
//! is admitted once by [`admit`] (on the normalised path): generation routes are answered by
//! the guard pipeline from `request_filter`; requests that cannot generate text are proxied to
//! the upstream on their normalised path; the rest are refused (403 unless the operator allows
//! them). `docs/sidecar.md` says why guarded exchanges are answered from `request_filter` and
//! how the two client stacks (hyper for guarded calls, pingora's peer for pass-through) share
//! timeouts, TLS and DNS.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::RunArgs;
use pingora::server::configuration::ServerConf;

use crate::pipeline::Pipeline;
use crate::pipeline::http::{Rejection, ResponseBody, error_response, handle_route, refusal_response};
use crate::pipeline::route::{Admission, admit};
use crate::pipeline::{ErrorKind, ErrorReply};
use crate::upstream::{HttpUpstream, UpstreamClient};

/// The pipeline the sidecar runs: guarded requests go to the model API over HTTP.
pub type SidecarPipeline = Pipeline<HttpUpstream<UpstreamClient>>;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream URL is not an `http` or `https` URL with a host.
    #[error("invalid upstream URL `{url}`: {message}")]
    Upstream {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The listen address cannot be bound (in use, not permitted, malformed).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address as given.
        addr: String,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
}

/// Where unguarded requests go.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    tls: bool,
    /// Path prefix of the upstream base URL (`/api` for `http://host/api`), or empty.
    prefix: String,
    host_header: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, ProxyError> {
        let bad = |message: &str| ProxyError::Upstream { url: url.to_string(), message: message.to_string() };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            host: authority.host().trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            tls,
            prefix: uri.path().trim_end_matches('/').to_string(),
            host_header: authority.as_str().to_string(),
        })
    }
}

/// How long a resolved upstream address is reused before the name is looked up again (so a
/// Kubernetes service or DNS change is followed without a lookup per request).
const DNS_TTL: Duration = Duration::from_secs(10);
/// Connecting to the upstream on the pass-through route.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The pingora service: one callback per request phase.
pub struct Sidecar {
    pipeline: SidecarPipeline,
    target: Target,
    max_body_bytes: usize,
    /// Read and write timeout of the pass-through route (the guarded route has its own).
    io_timeout: Duration,
    resolved: std::sync::Mutex<Option<(std::time::Instant, std::net::SocketAddr)>>,
}

impl Sidecar {
    /// A sidecar guarding generation routes with `pipeline` and proxying everything else to
    /// `upstream_url` (its path, if any, is a prefix); bodies over `max_body_bytes` get 413.
    /// Pass-through requests time out after 10 s connecting and 120 s without a read or
    /// write ([`Sidecar::with_io_timeout`]).
    pub fn new(pipeline: SidecarPipeline, upstream_url: &str, max_body_bytes: usize) -> Result<Sidecar, ProxyError> {
        Ok(Sidecar {
            pipeline,
            target: Target::parse(upstream_url)?,
            max_body_bytes,
            io_timeout: Duration::from_secs(120),
            resolved: std::sync::Mutex::new(None),
        })
    }

    /// The read and write timeout of pass-through requests (the upstream timeout).
    pub fn with_io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// The upstream's address: looked up without blocking a pingora thread, reused for
    /// [`DNS_TTL`]; a failed lookup is an error response, not a panic.
    async fn upstream_addr(&self) -> pingora::Result<std::net::SocketAddr> {
        if let Ok(cached) = self.resolved.lock()
            && let Some((at, addr)) = *cached
            && at.elapsed() < DNS_TTL
        {
            return Ok(addr);
        }
        let t = &self.target;
        let looked_up = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((t.host.as_str(), t.port))).await;
        let addr = match looked_up {
            Ok(Ok(mut addrs)) => addrs.next(),
            _ => None,
        };
        let Some(addr) = addr else {
            // An upstream-side error: pingora answers 502.
            let mut error = pingora::Error::new_up(pingora::ErrorType::ConnectNoRoute);
            error.set_context(format!("cannot resolve the upstream host {}", t.host));
            return Err(error);
        };
        if let Ok(mut cached) = self.resolved.lock() {
            *cached = Some((std::time::Instant::now(), addr));
        }
        Ok(addr)
    }

    /// Reads the request body, refusing one that is too large or breaks off.
    async fn read_body(&self, session: &mut Session) -> Result<Bytes, Rejection> {
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_body_bytes {
                        return Err(Rejection::too_large(self.max_body_bytes));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(e) => return Err(Rejection::broken_body(e)),
            }
        }
    }
}

/// Writes an HTTP response to the client; streams are written event by event.
async fn write_response(session: &mut Session, response: http::Response<ResponseBody>) -> pingora::Result<()> {
    let (parts, mut body) = response.into_parts();
    let mut header = ResponseHeader::build(parts.status, Some(parts.headers.len() + 2))?;
    for (name, value) in &parts.headers {
        header.append_header(name.clone(), value.clone())?;
    }
    let exact = http_body::Body::size_hint(&body).exact();
    match exact {
        Some(len) => header.insert_header(http::header::CONTENT_LENGTH, len)?,
        None => header.insert_header(http::header::TRANSFER_ENCODING, "chunked")?,
    }
    session.write_response_header(Box::new(header), exact == Some(0)).await?;
    if exact == Some(0) {
        return Ok(());
    }
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    session.write_response_body(Some(data), false).await?;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "response stream failed");
                break;
            }
        }
    }
    session.write_response_body(None, true).await
}

/// What the sidecar keeps for one request across pingora's phases.
pub struct RequestCtx {
    /// When the request arrived (for the request-duration metric).
    started: std::time::Instant,
    /// What [`admit`] decided in `request_filter`; `None` until then (a request pingora
    /// failed before that phase is logged as `unguarded`).
    admission: Option<Admission>,
}

#[async_trait]
impl ProxyHttp for Sidecar {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx { started: std::time::Instant::now(), admission: None }
    }

    async fn logging(&self, session: &mut Session, _error: Option<&pingora::Error>, ctx: &mut Self::CTX) {
        let route = ctx.admission.as_ref().map_or("unguarded", Admission::label);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        crate::telemetry::metrics().request(route, status, ctx.started.elapsed());
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> pingora::Result<bool> {
        let header = session.req_header();
        let admission =
            admit(&header.method, header.uri.path(), &header.headers, self.pipeline.options().admit_options());
        ctx.admission = Some(admission.clone());
        let response = match admission {
            // Forwarded by `upstream_request_filter`, on the normalised path.
            Admission::Forward { .. } => return Ok(false),
            Admission::Refuse { refusal, .. } => refusal_response(refusal, &header.method, header.uri.path()),
            Admission::Guard(route) => {
                let mut request = http::Request::builder().method(header.method.clone()).uri(header.uri.clone());
                if let Some(headers) = request.headers_mut() {
                    *headers = header.headers.clone();
                }
                match request.body(()) {
                    Ok(request) => {
                        let (parts, ()) = request.into_parts();
                        match self.read_body(session).await {
                            Ok(body) => handle_route(&self.pipeline, route, &parts, &body).await,
                            Err(rejection) => rejection.into_response(),
                        }
                    }
                    // Never proxy a generation request unjudged: fail closed.
                    Err(e) => error_response(ErrorReply::new(
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        ErrorKind::Server,
                        "rulegate_internal_error",
                        format!("the request could not be prepared for the guard: {e}"),
                    )),
                }
            }
        };
        if let Err(e) = write_response(session, response).await {
            // The client went away mid-response; nothing more can be sent.
            tracing::debug!(error = %e, "client connection ended while writing the response");
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Self::CTX) -> pingora::Result<Box<HttpPeer>> {
        let addr = self.upstream_addr().await?;
        let mut peer = HttpPeer::new(addr, self.target.tls, self.target.host.clone());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        peer.options.read_timeout = Some(self.io_timeout);
        peer.options.write_timeout = Some(self.io_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        upstream.insert_header(http::header::HOST, &self.target.host_header)?;
        // The upstream must route the path that was checked, not the client's spelling of it.
        let normalised = match &ctx.admission {
            Some(Admission::Forward { path: Some(path), .. }) => Some(path.as_str()),
            Some(Admission::Forward { path: None, .. }) => None,
            // Only admitted requests get here; anything else is refused rather than sent.
            _ => {
                return Err(pingora::Error::explain(
                    pingora::ErrorType::HTTPStatus(403),
                    "request not admitted for forwarding",
                ));
            }
        };
        let path = normalised.unwrap_or_else(|| upstream.uri.path());
        let target = match upstream.uri.query() {
            Some(query) => format!("{}{path}?{query}", self.target.prefix),
            None => format!("{}{path}", self.target.prefix),
        };
        match target.parse() {
            Ok(uri) => upstream.set_uri(uri),
            // A path that cannot be written back is not forwarded under another spelling.
            Err(_) => {
                return Err(pingora::Error::explain(pingora::ErrorType::HTTPStatus(400), "unforwardable path"));
            }
        }
        Ok(())
    }
}

/// Runs the sidecar until SIGTERM (graceful) or SIGINT.
pub fn run(sidecar: Sidecar, listen: &str, threads: usize) -> Result<(), ProxyError> {
    // pingora aborts on a busy port; check first for a clear error.
    drop(
        std::net::TcpListener::bind(listen)
            .map_err(|source| ProxyError::Listen { addr: listen.to_string(), source })?,
    );
    let conf = ServerConf {
        threads: threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(10),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, sidecar);
    service.add_tcp(listen);
    server.add_service(service);
    tracing::info!(listen, "rulegate sidecar listening");
    server.run(RunArgs::default());
    Ok(())
}

/// Builds the pipeline's upstream for the sidecar.
pub fn upstream(url: &str, timeout: std::time::Duration) -> Result<HttpUpstream<UpstreamClient>, ProxyError> {
    let uri: http::Uri =
        url.parse().map_err(|_| ProxyError::Upstream { url: url.to_string(), message: "not a URL".into() })?;
    let client =
        UpstreamClient::new(uri).map_err(|e| ProxyError::Upstream { url: url.to_string(), message: e.to_string() })?;
    Ok(HttpUpstream::new(client, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://api.example.com/openai/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls, t.prefix.as_str()), ("api.example.com", 443, true, "/openai"));
        let t = Target::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!((t.port, t.tls, t.prefix.as_str(), t.host_header.as_str()), (8000, false, "", "127.0.0.1:8000"));
        assert!(Target::parse("ftp://x").is_err());
    }
}
