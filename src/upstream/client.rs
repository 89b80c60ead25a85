//! The sidecar's HTTP client to the model API: a pooled hyper client (HTTP/1.1 and HTTP/2,
//! TLS with rustls and the webpki roots) that sends each request to the configured base URL.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{BoxError, BoxFuture};

pub(crate) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A connector for `http` and `https` URLs (rustls with the webpki roots; HTTP/1.1 and
/// HTTP/2), no Nagle delay, and `connect_timeout` when given.
pub(crate) fn https_connector(connect_timeout: Option<std::time::Duration>) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// Sends requests to `base` + the request's path and query.
#[derive(Clone)]
pub struct UpstreamClient {
    base: Uri,
    client: Client<Connector, Full<Bytes>>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient").field("base", &self.base).finish()
    }
}

impl UpstreamClient {
    /// A client for the model API at `base` (`http` or `https`); fails when `base` lacks a
    /// scheme or host.
    pub fn new(base: Uri) -> Result<Self, BoxError> {
        if base.scheme().is_none() || base.authority().is_none() {
            return Err(format!("upstream URL `{base}` needs a scheme and a host, e.g. http://127.0.0.1:8000").into());
        }
        let client = Client::builder(TokioExecutor::new()).build(https_connector(None));
        Ok(UpstreamClient { base, client })
    }

    /// The base URL requests go to.
    pub fn base(&self) -> &Uri {
        &self.base
    }

    /// `base` with the request's path and query appended (a base path is a prefix).
    pub fn target(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let prefix = self.base.path().trim_end_matches('/');
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut parts = http::uri::Parts::default();
        parts.scheme = self.base.scheme().cloned();
        parts.authority = self.base.authority().cloned();
        parts.path_and_query = Some(format!("{prefix}{path_and_query}").parse()?);
        Ok(Uri::from_parts(parts)?)
    }
}

impl tower::Service<http::Request<Full<Bytes>>> for UpstreamClient {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Full<Bytes>>) -> Self::Future {
        let client = self.client.clone();
        let target = self.target(request.uri());
        Box::pin(async move {
            *request.uri_mut() = target?;
            // hyper sets Host from the URI; the client's Host named rulegate.
            request.headers_mut().remove(http::header::HOST);
            Ok(client.request(request).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_the_base_path_as_prefix() {
        let c = UpstreamClient::new("http://127.0.0.1:9000/api/".parse().unwrap()).unwrap();
        assert_eq!(
            c.target(&"/v1/chat/completions?x=1".parse().unwrap()).unwrap(),
            "http://127.0.0.1:9000/api/v1/chat/completions?x=1"
        );
        let c = UpstreamClient::new("https://example.com".parse().unwrap()).unwrap();
        assert_eq!(
            c.target(&"http://rulegate:8080/v1/models".parse().unwrap()).unwrap(),
            "https://example.com/v1/models"
        );
        assert!(UpstreamClient::new("/relative".parse().unwrap()).is_err());
    }
}
