//! Receivers on loopback that decode what the agent sends in the real wire formats, for the
//! end-to-end tests:
//!
//! - [`LokiReceiver`]: Loki's push API, `POST /loki/api/v1/push`, snappy-compressed protobuf
//!   `logproto.PushRequest`, decoded with this file's own declarations of Loki's public schema
//!   (independent of the agent's);
//! - [`PyroscopeReceiver`]: Pyroscope's push API, `POST /push.v1.PusherService/Push`, protobuf
//!   `PushRequest` (the pyroscope crate's declarations);
//! - [`OtlpLogsReceiver`]: a real OTLP/gRPC `LogsService` and `TraceService` (tonic,
//!   opentelemetry-proto).
//!
//! Each can fail on a script ([`crate::faults`]).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    thread,
};

use crate::faults::Faults;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
    logs_service_server::{LogsService, LogsServiceServer},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use pyroscope::encode::r#gen::push::PushRequest;

/// Loki's push messages (pkg/push/push.proto), as far as the tests read them.
pub mod loki {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<Stream>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Stream {
        /// `{name="value", ...}`
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<Entry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<prost_types::Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPair>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

/// One decoded Loki push with the headers that matter.
#[derive(Debug, Clone)]
pub struct LokiPush {
    pub content_type: String,
    pub content_encoding: String,
    pub request: loki::PushRequest,
}

/// One entry as received: (stream labels, line, structured metadata as (name, value) pairs).
pub type LokiEntry = (String, String, Vec<(String, String)>);

/// A Loki push endpoint on 127.0.0.1; keeps every request it decoded.
pub struct LokiReceiver {
    pub addr: SocketAddr,
    pub pushes: Arc<Mutex<Vec<LokiPush>>>,
}

impl LokiReceiver {
    pub fn start() -> Self {
        Self::scripted(Faults::default())
    }

    /// A receiver that answers as `faults` says (503 and 429 with `Retry-After`, keeping nothing).
    pub fn scripted(faults: Faults) -> Self {
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let sink = pushes.clone();
        let addr = serve_http(faults, move |request_line, headers, body| {
            if !request_line.starts_with("POST /loki/api/v1/push") {
                return None;
            }
            let raw = snap::raw::Decoder::new().decompress_vec(body).ok()?;
            let request = <loki::PushRequest as prost::Message>::decode(raw.as_slice()).ok()?;
            sink.lock().expect("lock").push(LokiPush {
                content_type: headers.get("content-type").cloned().unwrap_or_default(),
                content_encoding: headers.get("content-encoding").cloned().unwrap_or_default(),
                request,
            });
            Some("204 No Content")
        });
        Self { addr, pushes }
    }

    /// Every entry received.
    pub fn entries(&self) -> Vec<LokiEntry> {
        let pushes = self.pushes.lock().expect("lock");
        pushes
            .iter()
            .flat_map(|p| &p.request.streams)
            .flat_map(|s| {
                s.entries.iter().map(|e| {
                    let meta = e
                        .structured_metadata
                        .iter()
                        .map(|m| (m.name.clone(), m.value.clone()))
                        .collect();
                    (s.labels.clone(), e.line.clone(), meta)
                })
            })
            .collect()
    }
}

/// A Pyroscope push endpoint on 127.0.0.1 (`POST /push.v1.PusherService/Push`, protobuf
/// `PushRequest`); keeps every request it decoded.
pub struct PyroscopeReceiver {
    pub addr: SocketAddr,
    pub pushes: Arc<Mutex<Vec<PushRequest>>>,
}

impl PyroscopeReceiver {
    /// A receiver that answers as `faults` says (503 and 429 with `Retry-After`, keeping nothing).
    pub fn scripted(faults: Faults) -> Self {
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let sink = pushes.clone();
        let addr = serve_http(faults, move |request_line, _, body| {
            if !request_line.starts_with("POST /push.v1.PusherService/Push") {
                return None;
            }
            let request = <PushRequest as prost::Message>::decode(body).ok()?;
            sink.lock().expect("lock").push(request);
            Some("200 OK\r\nContent-Type: application/proto")
        });
        Self { addr, pushes }
    }
}

/// What an HTTP receiver does with one request (request line, lower-case headers, body): the
/// status line's tail (and any headers) to answer when it kept the request, `None` for 400.
type Keep = dyn Fn(&str, &HashMap<String, String>, &[u8]) -> Option<&'static str> + Send + Sync;

/// Serves keep-alive HTTP/1.1 on a loopback port: each request is answered as `faults` say, or
/// handed to `keep`. Returns the address.
fn serve_http(
    faults: Faults,
    keep: impl Fn(&str, &HashMap<String, String>, &[u8]) -> Option<&'static str> + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an HTTP receiver");
    let addr = listener.local_addr().expect("local addr");
    let keep: Arc<Keep> = Arc::new(keep);
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (faults, keep) = (faults.clone(), keep.clone());
            thread::spawn(move || serve_connection(stream, &faults, &*keep));
        }
    });
    addr
}

/// Serves one keep-alive HTTP/1.1 connection.
fn serve_connection(stream: std::net::TcpStream, faults: &Faults, keep: &Keep) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = match faults.http_refusal() {
            Some(refusal) => refusal,
            None => keep(&request_line, &headers, &body).unwrap_or("400 Bad Request"),
        };
        let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// An OTLP/gRPC endpoint on 127.0.0.1 (on a runtime of its own) serving LogsService and
/// TraceService, keeping their requests (`spans` counts the spans received).
pub struct OtlpLogsReceiver {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    pub trace_requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    pub spans: Arc<Mutex<u64>>,
    _runtime: tokio::runtime::Runtime,
}

struct Traces {
    spans: Arc<Mutex<u64>>,
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    faults: Faults,
}

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(status) = self.faults.grpc_refusal() {
            return Err(status);
        }
        let request = request.into_inner();
        let n: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        *self.spans.lock().expect("lock") += n as u64;
        self.requests.lock().expect("lock").push(request);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

struct Logs {
    requests: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    faults: Faults,
}

#[tonic::async_trait]
impl LogsService for Logs {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        if let Some(status) = self.faults.grpc_refusal() {
            return Err(status);
        }
        self.requests
            .lock()
            .expect("lock")
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

impl OtlpLogsReceiver {
    pub fn start() -> Self {
        Self::scripted(Faults::default())
    }

    /// A receiver that answers as `faults` say (UNAVAILABLE or RESOURCE_EXHAUSTED, keeping
    /// nothing).
    pub fn scripted(faults: Faults) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let trace_requests = Arc::new(Mutex::new(Vec::new()));
        let spans = Arc::new(Mutex::new(0));
        let logs = Logs {
            requests: requests.clone(),
            faults: faults.clone(),
        };
        let traces = Traces {
            spans: spans.clone(),
            requests: trace_requests.clone(),
            faults,
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("local addr");
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(logs))
                .add_service(TraceServiceServer::new(traces))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Self {
            addr,
            requests,
            trace_requests,
            spans,
            _runtime: runtime,
        }
    }

    /// Every span id received (hex), once per time received.
    pub fn span_ids(&self) -> Vec<String> {
        let requests = self.trace_requests.lock().expect("lock");
        requests
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| hex(&s.span_id))
            .collect()
    }

    /// Every record received.
    fn log_records(&self) -> Vec<opentelemetry_proto::tonic::logs::v1::LogRecord> {
        let requests = self.requests.lock().expect("lock");
        requests
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| s.log_records.iter().cloned())
            .collect()
    }

    /// Every record received: (body, trace id hex, span id hex, severity text).
    pub fn records(&self) -> Vec<(String, String, String, String)> {
        self.log_records()
            .iter()
            .map(|r| {
                (
                    body_text(r),
                    hex(&r.trace_id),
                    hex(&r.span_id),
                    r.severity_text.clone(),
                )
            })
            .collect()
    }

    /// Every record received as `time_unix_nano body`.
    pub fn timed_bodies(&self) -> Vec<String> {
        self.log_records()
            .iter()
            .map(|r| format!("{} {}", r.time_unix_nano, body_text(r)))
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A log record's body when it is a string ("" otherwise).
fn body_text(record: &opentelemetry_proto::tonic::logs::v1::LogRecord) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        _ => String::new(),
    }
}
