//! The remote backend: the model runs on a shared inference server that speaks the Open
//! Inference Protocol (KServe v2: NVIDIA Triton, Seldon MLServer, KServe), over HTTP/JSON or
//! gRPC. rulegate still tokenizes and reads the heads (the model directory keeps
//! `manifest.json` and `tokenizer.json`); the server runs the graph. The classifier's worker
//! threads block on these calls exactly as they block on ONNX Runtime, so queueing, batching,
//! admission control and the fail mode are the same for both backends.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Deserialize;

use super::ClassifierError;
use super::manifest::Manifest;
use crate::upstream::client::Connector;

/// What a name must escape to be one path segment (RFC 3986 `pchar` keeps the rest).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// How rulegate talks to the inference server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// REST with JSON tensors (`POST /v2/models/{name}/infer`).
    #[default]
    Http,
    /// gRPC (`inference.GRPCInferenceService/ModelInfer`), tensors as packed protobuf.
    Grpc,
}

/// Where the remote model is and how calls to it behave.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteOptions {
    /// Base URL of the server: `http://host:port` (its HTTP or its gRPC port, per `protocol`).
    pub url: String,
    /// HTTP/JSON or gRPC.
    pub protocol: Protocol,
    /// Model name on the server; the manifest's `name` when `None`.
    pub model: Option<String>,
    /// Model version to use; when `None`, the newest version the server lists (or none, for
    /// servers that do not version), resolved at load and on every reload.
    pub version: Option<String>,
    /// Longest wait for one call.
    pub timeout: Duration,
    /// Further attempts after a failed call (connection errors, timeouts, 429 and 5xx).
    pub retries: u32,
    /// Consecutive failed calls that open the circuit: calls then fail at once (the policy's
    /// fail mode applies) until `breaker_cooldown` has passed and a trial call succeeds.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one trial call.
    pub breaker_cooldown: Duration,
}

impl RemoteOptions {
    /// Defaults for a server at `url`: HTTP, 2 s per call, 1 retry, the circuit opening after
    /// 5 consecutive failures for 5 s.
    pub fn new(url: impl Into<String>) -> Self {
        RemoteOptions {
            url: url.into(),
            protocol: Protocol::Http,
            model: None,
            version: None,
            timeout: Duration::from_secs(2),
            retries: 1,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
        }
    }
}

/// One output tensor as the server returned it.
#[derive(Debug, Clone)]
pub(crate) struct OutputTensor {
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// The model's input tensors for one batch, row-major `[batch, seq]`.
pub(crate) struct InputBatch<'a> {
    pub names: [&'a str; 3],
    pub shape: [usize; 2],
    pub tensors: [&'a [i64]; 3],
}

/// What a model's server says about it.
#[derive(Debug, Clone)]
struct Metadata {
    versions: Vec<String>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// A connection to one model on an inference server, shared by the classifier's workers.
pub(crate) struct Remote {
    /// Runs the HTTP/gRPC connections; workers block on it from their own threads.
    runtime: Option<tokio::runtime::Runtime>,
    transport: Transport,
    model: String,
    /// The version requests name (`""`: the server's default).
    version: String,
    options: RemoteOptions,
    breaker: Breaker,
}

enum Transport {
    Http { base: String, client: Box<Client<Connector, Full<Bytes>>> },
    Grpc(tonic::transport::Channel),
}

impl Drop for Remote {
    fn drop(&mut self) {
        // The last worker may end inside another runtime's context (a test, a reload);
        // dropping a runtime there would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.options.url).field("model", &self.model).finish()
    }
}

/// Why one call failed, and whether another attempt may succeed.
struct CallError {
    message: String,
    retryable: bool,
}

impl CallError {
    fn fatal(message: impl Into<String>) -> Self {
        CallError { message: message.into(), retryable: false }
    }
    fn transient(message: impl Into<String>) -> Self {
        CallError { message: message.into(), retryable: true }
    }
}

impl Remote {
    /// Connects to the server, resolves the model version and checks that the model has the
    /// inputs the manifest feeds and the outputs its heads read.
    pub(crate) fn connect(
        options: &RemoteOptions,
        manifest: &Manifest,
        outputs: &[String],
    ) -> Result<Remote, ClassifierError> {
        let bad = |message: String| ClassifierError::Remote(format!("{}: {message}", options.url));
        let uri: http::Uri = options.url.parse().map_err(|e| bad(format!("not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(bad("needs http:// or https:// and a host, e.g. http://127.0.0.1:8080".into()));
        }
        if options.timeout.is_zero() || options.breaker_failures == 0 {
            return Err(ClassifierError::InvalidOptions(
                "the remote timeout and breaker_failures must be above zero".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rulegate-remote")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the client runtime: {e}")))?;
        let transport = match options.protocol {
            Protocol::Http => {
                let https = crate::upstream::client::https_connector(Some(options.timeout));
                let client = Box::new(Client::builder(TokioExecutor::new()).build(https));
                Transport::Http { base: options.url.trim_end_matches('/').to_string(), client }
            }
            Protocol::Grpc => {
                let _context = runtime.enter();
                let endpoint = tonic::transport::Endpoint::from_shared(options.url.clone())
                    .map_err(|e| bad(format!("not a gRPC endpoint: {e}")))?
                    .connect_timeout(options.timeout)
                    .tcp_nodelay(true);
                Transport::Grpc(endpoint.connect_lazy())
            }
        };
        let model = options.model.clone().unwrap_or_else(|| manifest.name.clone());
        let mut remote = Remote {
            runtime: Some(runtime),
            transport,
            model,
            version: options.version.clone().unwrap_or_default(),
            options: options.clone(),
            breaker: Breaker::new(options.breaker_failures, options.breaker_cooldown),
        };
        let metadata = remote.metadata()?;
        if options.version.is_none() {
            remote.version = newest(&metadata.versions).unwrap_or_default();
        } else if !metadata.versions.is_empty() && !metadata.versions.contains(&remote.version) {
            return Err(bad(format!(
                "model `{}` has no version `{}` (the server lists {})",
                remote.model,
                remote.version,
                metadata.versions.join(", ")
            )));
        }
        let wanted = [&manifest.inputs.input_ids, &manifest.inputs.attention_mask, &manifest.inputs.token_type_ids];
        for input in wanted {
            if !metadata.inputs.is_empty() && !metadata.inputs.contains(input) {
                return Err(bad(format!(
                    "model `{}` has no input `{input}` (it has {})",
                    remote.model,
                    metadata.inputs.join(", ")
                )));
            }
        }
        for output in outputs {
            if !metadata.outputs.is_empty() && !metadata.outputs.contains(output) {
                return Err(bad(format!(
                    "the manifest reads output `{output}`, which model `{}` does not have (it has {})",
                    remote.model,
                    metadata.outputs.join(", ")
                )));
            }
        }
        Ok(remote)
    }

    /// `name:version` of the model as served (the version is empty for unversioned servers).
    pub(crate) fn served(&self) -> String {
        format!("{}:{}", self.model, self.version)
    }

    /// Runs one batch on the server and returns the named outputs, in `outputs`' order.
    pub(crate) fn infer(
        &self,
        batch: &InputBatch<'_>,
        outputs: &[String],
    ) -> Result<Vec<OutputTensor>, ClassifierError> {
        self.breaker.admit()?;
        let result = self.block_on(self.with_retries(|| self.infer_once(batch, outputs)));
        self.breaker.record(result.is_ok());
        result.map_err(|message| {
            crate::telemetry::metrics().remote_errors.inc();
            ClassifierError::Remote(format!("{} model `{}`: {message}", self.options.url, self.model))
        })
    }

    fn metadata(&self) -> Result<Metadata, ClassifierError> {
        self.block_on(self.with_retries(|| self.metadata_once())).map_err(|message| {
            ClassifierError::Remote(format!("{} model `{}`: {message}", self.options.url, self.model))
        })
    }

    /// Runs `future` to completion on the client runtime. Blocking: workers call it from
    /// their own threads; anywhere else it moves to a scoped thread, since blocking inside
    /// an async runtime's thread would panic.
    fn block_on<F: Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        let Some(runtime) = self.runtime.as_ref() else { unreachable!("the runtime lives as long as the client") };
        if tokio::runtime::Handle::try_current().is_err() {
            return runtime.block_on(future);
        }
        std::thread::scope(|scope| match scope.spawn(|| runtime.block_on(future)).join() {
            Ok(output) => output,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }

    async fn with_retries<T, F, Fut>(&self, call: F) -> Result<T, String>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let mut attempt = 0;
        loop {
            let error = match tokio::time::timeout(self.options.timeout, call()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => e,
                Err(_) => CallError::transient(format!("no answer within {:?}", self.options.timeout)),
            };
            if !error.retryable || attempt >= self.options.retries {
                let tries = if attempt > 0 { format!(" (after {} attempts)", attempt + 1) } else { String::new() };
                return Err(format!("{}{tries}", error.message));
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
        }
    }

    /// `/v2/models/{name}[/versions/{version}]`, each part percent-encoded.
    fn model_path(&self) -> String {
        let name = utf8_percent_encode(&self.model, SEGMENT);
        if self.version.is_empty() {
            format!("/v2/models/{name}")
        } else {
            format!("/v2/models/{name}/versions/{}", utf8_percent_encode(&self.version, SEGMENT))
        }
    }

    async fn metadata_once(&self) -> Result<Metadata, CallError> {
        match &self.transport {
            Transport::Http { base, client } => {
                let body = http_call(client, http::Method::GET, &format!("{base}{}", self.model_path()), None).await?;
                let meta: HttpMetadata = serde_json::from_slice(&body)
                    .map_err(|e| CallError::fatal(format!("unreadable model metadata: {e}")))?;
                Ok(Metadata {
                    versions: meta.versions,
                    inputs: meta.inputs.into_iter().map(|t| t.name).collect(),
                    outputs: meta.outputs.into_iter().map(|t| t.name).collect(),
                })
            }
            Transport::Grpc(channel) => {
                let request = proto::ModelMetadataRequest { name: self.model.clone(), version: self.version.clone() };
                let meta: proto::ModelMetadataResponse = grpc_call(channel, "ModelMetadata", request).await?;
                Ok(Metadata {
                    versions: meta.versions,
                    inputs: meta.inputs.into_iter().map(|t| t.name).collect(),
                    outputs: meta.outputs.into_iter().map(|t| t.name).collect(),
                })
            }
        }
    }

    async fn infer_once(&self, batch: &InputBatch<'_>, outputs: &[String]) -> Result<Vec<OutputTensor>, CallError> {
        let shape = batch.shape.map(|d| i64::try_from(d).unwrap_or(i64::MAX));
        let mut named: Vec<(String, OutputTensor)> = match &self.transport {
            Transport::Http { base, client } => {
                let request = serde_json::json!({
                    "inputs": batch.names.iter().zip(batch.tensors).map(|(name, data)| serde_json::json!({
                        "name": name, "shape": shape, "datatype": "INT64", "data": data,
                    })).collect::<Vec<_>>(),
                    "outputs": outputs.iter().map(|name| serde_json::json!({ "name": name })).collect::<Vec<_>>(),
                });
                let body = serde_json::to_vec(&request).map_err(|e| CallError::fatal(e.to_string()))?;
                let url = format!("{base}{}/infer", self.model_path());
                let answer = http_call(client, http::Method::POST, &url, Some(body)).await?;
                let response: HttpInferResponse = serde_json::from_slice(&answer)
                    .map_err(|e| CallError::fatal(format!("unreadable inference response: {e}")))?;
                response
                    .outputs
                    .into_iter()
                    .map(|t| {
                        let mut data = Vec::new();
                        flatten(&t.data, &mut data)
                            .map_err(|e| CallError::fatal(format!("output `{}`: {e}", t.name)))?;
                        Ok((t.name, OutputTensor { shape: t.shape, data }))
                    })
                    .collect::<Result<_, CallError>>()?
            }
            Transport::Grpc(channel) => {
                let request = proto::ModelInferRequest {
                    model_name: self.model.clone(),
                    model_version: self.version.clone(),
                    id: String::new(),
                    inputs: batch
                        .names
                        .iter()
                        .zip(batch.tensors)
                        .map(|(name, data)| proto::InferInputTensor {
                            name: (*name).to_string(),
                            datatype: "INT64".into(),
                            shape: shape.to_vec(),
                            contents: Some(proto::InferTensorContents {
                                int64_contents: data.to_vec(),
                                ..Default::default()
                            }),
                        })
                        .collect(),
                    outputs: outputs
                        .iter()
                        .map(|name| proto::InferRequestedOutputTensor { name: name.clone() })
                        .collect(),
                };
                let response: proto::ModelInferResponse = grpc_call(channel, "ModelInfer", request).await?;
                let raw = response.raw_output_contents;
                response
                    .outputs
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let data = grpc_output(&t, raw.get(i))
                            .map_err(|e| CallError::fatal(format!("output `{}`: {e}", t.name)))?;
                        Ok((t.name, OutputTensor { shape: t.shape, data }))
                    })
                    .collect::<Result<_, CallError>>()?
            }
        };
        outputs
            .iter()
            .map(|wanted| {
                let at = named
                    .iter()
                    .position(|(name, _)| name == wanted)
                    .ok_or_else(|| CallError::fatal(format!("the response has no output `{wanted}`")))?;
                Ok(named.swap_remove(at).1)
            })
            .collect()
    }
}

/// The newest of a server's version names: numeric ones by value (Triton numbers them),
/// others by their text (dates sort that way).
fn newest(versions: &[String]) -> Option<String> {
    versions
        .iter()
        .max_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        })
        .cloned()
}

async fn http_call(
    client: &Client<Connector, Full<Bytes>>,
    method: http::Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, CallError> {
    let mut request = http::Request::builder().method(method).uri(url);
    if body.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| CallError::fatal(format!("cannot build the request: {e}")))?;
    let response = client.request(request).await.map_err(|e| CallError::transient(format!("{url}: {e}")))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| CallError::transient(format!("{url}: reading the response: {e}")))?
        .to_bytes();
    if status.is_success() {
        return Ok(body);
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let message = format!("{url} answered {status}: {text}");
    // Overload and server failures may pass; a bad request or an unknown model will not.
    if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
        Err(CallError::transient(message))
    } else {
        Err(CallError::fatal(message))
    }
}

async fn grpc_call<Req, Resp>(
    channel: &tonic::transport::Channel,
    method: &str,
    request: Req,
) -> Result<Resp, CallError>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| CallError::transient(format!("gRPC channel: {e}")))?;
    let path: http::uri::PathAndQuery = format!("/inference.GRPCInferenceService/{method}")
        .parse()
        .map_err(|e| CallError::fatal(format!("gRPC path: {e}")))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    match grpc.unary(tonic::Request::new(request), path, codec).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => {
            let message = format!("gRPC {method}: {}: {}", status.code(), status.message());
            use tonic::Code;
            let retryable = matches!(
                status.code(),
                Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::DeadlineExceeded | Code::Unknown
            );
            Err(CallError { message, retryable })
        }
    }
}

/// An FP32 output from a gRPC response: packed `fp32_contents`, or the matching
/// `raw_output_contents` entry (little-endian bytes), which Triton uses.
fn grpc_output(tensor: &proto::InferOutputTensor, raw: Option<&Vec<u8>>) -> Result<Vec<f32>, String> {
    if let Some(contents) = &tensor.contents {
        if !contents.fp32_contents.is_empty() {
            return Ok(contents.fp32_contents.clone());
        }
        if !contents.fp64_contents.is_empty() {
            return Ok(contents.fp64_contents.iter().map(|&x| x as f32).collect());
        }
    }
    match (tensor.datatype.as_str(), raw) {
        ("FP32", Some(bytes)) if bytes.len() % 4 == 0 => {
            Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        ("FP64", Some(bytes)) if bytes.len() % 8 == 0 => Ok(bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect()),
        (datatype, _) => Err(format!("no FP32 data (datatype `{datatype}`)")),
    }
}

/// Appends the numbers of a JSON tensor (flat, or nested row-major as the protocol allows).
fn flatten(value: &serde_json::Value, out: &mut Vec<f32>) -> Result<(), String> {
    match value {
        serde_json::Value::Number(n) => {
            out.push(n.as_f64().ok_or("a number out of range")? as f32);
            Ok(())
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(|v| flatten(v, out)),
        other => Err(format!("expected numbers, found {other}")),
    }
}

#[derive(Deserialize)]
struct HttpMetadata {
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    inputs: Vec<HttpTensorMetadata>,
    #[serde(default)]
    outputs: Vec<HttpTensorMetadata>,
}

#[derive(Deserialize)]
struct HttpTensorMetadata {
    name: String,
}

#[derive(Deserialize)]
struct HttpInferResponse {
    outputs: Vec<HttpOutput>,
}

#[derive(Deserialize)]
struct HttpOutput {
    name: String,
    #[serde(default)]
    shape: Vec<i64>,
    data: serde_json::Value,
}

/// Counts consecutive failed calls; past the threshold, calls fail at once for a cooldown,
/// then one trial call decides (closed again on success, another cooldown on failure).
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker { threshold, cooldown, state: Mutex::new(BreakerState { failures: 0, open_until: None }) }
    }

    fn admit(&self) -> Result<(), ClassifierError> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(until) = state.open_until {
            let now = Instant::now();
            if now < until {
                return Err(ClassifierError::Remote(format!(
                    "circuit open after {} consecutive failures; next trial in {} ms",
                    state.failures,
                    (until - now).as_millis()
                )));
            }
            // This call is the trial; everyone else waits another cooldown.
            state.open_until = Some(now + self.cooldown);
        }
        Ok(())
    }

    fn record(&self, ok: bool) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ok {
            state.failures = 0;
            state.open_until = None;
            return;
        }
        state.failures = state.failures.saturating_add(1);
        if state.failures >= self.threshold {
            if state.open_until.is_none() {
                crate::telemetry::metrics().remote_breaker_opens.inc();
                tracing::error!(failures = state.failures, "the inference server keeps failing; circuit open");
            }
            state.open_until = Some(Instant::now() + self.cooldown);
        }
    }
}

/// The messages of the KServe v2 gRPC protocol (`grpc_predict_v2.proto`, package
/// `inference`) that rulegate sends and reads; field numbers as in the protocol.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelMetadataRequest {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelMetadataResponse {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, repeated, tag = "2")]
        pub versions: Vec<String>,
        #[prost(string, tag = "3")]
        pub platform: String,
        #[prost(message, repeated, tag = "4")]
        pub inputs: Vec<TensorMetadata>,
        #[prost(message, repeated, tag = "5")]
        pub outputs: Vec<TensorMetadata>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferTensorContents {
        #[prost(int64, repeated, tag = "3")]
        pub int64_contents: Vec<i64>,
        #[prost(float, repeated, tag = "6")]
        pub fp32_contents: Vec<f32>,
        #[prost(double, repeated, tag = "7")]
        pub fp64_contents: Vec<f64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferInputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
        #[prost(message, optional, tag = "5")]
        pub contents: Option<InferTensorContents>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferRequestedOutputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferRequest {
        #[prost(string, tag = "1")]
        pub model_name: String,
        #[prost(string, tag = "2")]
        pub model_version: String,
        #[prost(string, tag = "3")]
        pub id: String,
        #[prost(message, repeated, tag = "5")]
        pub inputs: Vec<InferInputTensor>,
        #[prost(message, repeated, tag = "6")]
        pub outputs: Vec<InferRequestedOutputTensor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InferOutputTensor {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub datatype: String,
        #[prost(int64, repeated, tag = "3")]
        pub shape: Vec<i64>,
        #[prost(message, optional, tag = "5")]
        pub contents: Option<InferTensorContents>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelInferResponse {
        #[prost(string, tag = "1")]
        pub model_name: String,
        #[prost(string, tag = "2")]
        pub model_version: String,
        #[prost(string, tag = "3")]
        pub id: String,
        #[prost(message, repeated, tag = "5")]
        pub outputs: Vec<InferOutputTensor>,
        #[prost(bytes = "vec", repeated, tag = "6")]
        pub raw_output_contents: Vec<Vec<u8>>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_is_numeric_where_versions_are_numbers() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(newest(&v(&["2", "10", "9"])).as_deref(), Some("10"));
        assert_eq!(newest(&v(&["2026.11.01", "2026.11.30"])).as_deref(), Some("2026.11.30"));
        assert_eq!(newest(&[]), None);
    }

    #[test]
    fn nested_and_flat_json_tensors_flatten_alike() {
        let mut flat = Vec::new();
        flatten(&serde_json::json!([1.0, 2.5, -3.0, 4.0]), &mut flat).unwrap();
        let mut nested = Vec::new();
        flatten(&serde_json::json!([[1.0, 2.5], [-3.0, 4.0]]), &mut nested).unwrap();
        assert_eq!(flat, nested);
        assert!(flatten(&serde_json::json!(["a"]), &mut Vec::new()).is_err());
    }

    #[test]
    fn raw_grpc_outputs_decode_as_little_endian_floats() {
        let tensor =
            proto::InferOutputTensor { name: "x".into(), datatype: "FP32".into(), shape: vec![1, 2], contents: None };
        let raw: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(grpc_output(&tensor, Some(&raw)).unwrap(), vec![1.5, -2.0]);
        assert!(grpc_output(&tensor, None).is_err());
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_lets_one_trial_through() {
        let breaker = Breaker::new(2, Duration::from_millis(40));
        breaker.record(false);
        assert!(breaker.admit().is_ok(), "one failure is below the threshold");
        breaker.record(false);
        assert!(matches!(breaker.admit(), Err(ClassifierError::Remote(m)) if m.contains("circuit open")));
        std::thread::sleep(Duration::from_millis(50));
        assert!(breaker.admit().is_ok(), "the trial call after the cooldown");
        assert!(breaker.admit().is_err(), "others wait while the trial runs");
        breaker.record(true);
        assert!(breaker.admit().is_ok(), "a successful trial closes the circuit");
    }
}
