//! Receivers on loopback that decode what the agent sends in the real wire formats, for the
//! end-to-end tests:
//!
//! - [`LokiReceiver`]: Loki's push API, `POST /loki/api/v1/push`, snappy-compressed protobuf
//!   `logproto.PushRequest`, decoded with this file's own declarations of Loki's public schema
//!   (independent of the agent's);
//! - [`OtlpLogsReceiver`]: a real OTLP/gRPC `LogsService` (tonic, opentelemetry-proto).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    thread,
};

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
    logs_service_server::{LogsService, LogsServiceServer},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};

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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the Loki receiver");
        let addr = listener.local_addr().expect("local addr");
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let sink = pushes.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                thread::spawn(move || serve_http(stream, &sink));
            }
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

/// Serves one keep-alive HTTP/1.1 connection: each POST's body is snappy-decoded and decoded
/// as a PushRequest; answers 204 (400 when the body does not decode).
fn serve_http(stream: std::net::TcpStream, sink: &Mutex<Vec<LokiPush>>) {
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
        let (mut length, mut content_type, mut content_encoding) =
            (0, String::new(), String::new());
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
                let value = value.trim().to_string();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().unwrap_or(0),
                    "content-type" => content_type = value,
                    "content-encoding" => content_encoding = value,
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let decoded = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .ok()
            .and_then(|raw| <loki::PushRequest as prost::Message>::decode(raw.as_slice()).ok());
        let status = match decoded {
            Some(request) if request_line.starts_with("POST /loki/api/v1/push") => {
                sink.lock().expect("lock").push(LokiPush {
                    content_type,
                    content_encoding,
                    request,
                });
                "204 No Content"
            }
            _ => "400 Bad Request",
        };
        let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// An OTLP/gRPC endpoint on 127.0.0.1 (on a runtime of its own) serving LogsService, whose
/// requests it keeps, and TraceService, whose spans it counts.
pub struct OtlpLogsReceiver {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
    pub spans: Arc<Mutex<u64>>,
    _runtime: tokio::runtime::Runtime,
}

struct Traces(Arc<Mutex<u64>>);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        *self.0.lock().expect("lock") += n as u64;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

struct Logs(Arc<Mutex<Vec<ExportLogsServiceRequest>>>);

#[tonic::async_trait]
impl LogsService for Logs {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.lock().expect("lock").push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

impl OtlpLogsReceiver {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let spans = Arc::new(Mutex::new(0));
        let service = Logs(requests.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("local addr");
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(service))
                .add_service(TraceServiceServer::new(Traces(spans.clone())))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Self {
            addr,
            requests,
            spans,
            _runtime: runtime,
        }
    }

    /// Every record received: (body, trace id hex, span id hex, severity text).
    pub fn records(&self) -> Vec<(String, String, String, String)> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let requests = self.requests.lock().expect("lock");
        requests
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
            .map(|r| {
                let body = match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                    Some(Value::StringValue(s)) => s.clone(),
                    _ => String::new(),
                };
                (
                    body,
                    hex(&r.trace_id),
                    hex(&r.span_id),
                    r.severity_text.clone(),
                )
            })
            .collect()
    }
}
