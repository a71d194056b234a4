//! An in-process OTLP trace receiver: OTLP/gRPC and OTLP/HTTP (protobuf) on two loopback
//! ports, keeping every span it is sent, so tests can assert what services export.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
};
use prost::Message as _;
use tokio::sync::Notify;

/// Span kinds as OTLP numbers them.
pub mod kind {
    /// `SPAN_KIND_INTERNAL`.
    pub const INTERNAL: i32 = 1;
    /// `SPAN_KIND_SERVER`.
    pub const SERVER: i32 = 2;
    /// `SPAN_KIND_CLIENT`.
    pub const CLIENT: i32 = 3;
    /// `SPAN_KIND_PRODUCER`.
    pub const PRODUCER: i32 = 4;
    /// `SPAN_KIND_CONSUMER`.
    pub const CONSUMER: i32 = 5;
}

/// One received span, ids in lower-case hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// The span name.
    pub name: String,
    /// Its kind (see [`kind`]).
    pub kind: i32,
    /// Trace id.
    pub trace_id: String,
    /// Span id.
    pub span_id: String,
    /// Parent span id (empty for a root).
    pub parent_span_id: String,
    /// Attributes, values rendered as text.
    pub attributes: HashMap<String, String>,
    /// Linked (trace id, span id) pairs.
    pub links: Vec<(String, String)>,
    /// Status code (0 unset, 1 ok, 2 error).
    pub status: i32,
    /// Which transport it arrived over: `grpc` or `http`.
    pub via: &'static str,
}

impl ReceivedSpan {
    /// An attribute's value as text.
    #[must_use]
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    arrived: Notify,
}

impl Received {
    fn add(&self, request: ExportTraceServiceRequest, via: &'static str) {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(text)
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(a)))
                            .collect(),
                        links: span
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        status: span.status.map_or(0, |s| s.code),
                        via,
                    });
                }
            }
        }
        drop(spans);
        self.arrived.notify_waiters();
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn text(attribute: &KeyValue) -> String {
    match attribute
        .value
        .as_ref()
        .and_then(|v: &AnyValue| v.value.as_ref())
    {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[derive(Debug, Clone)]
struct GrpcReceiver(Arc<Received>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver; it stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// OTLP/gRPC endpoint (`http://` + this).
    pub grpc: SocketAddr,
    /// OTLP/HTTP endpoint (`http://` + this; spans go to `/v1/traces`).
    pub http: SocketAddr,
    received: Arc<Received>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl OtlpReceiver {
    /// Listens on two ephemeral loopback ports.
    pub async fn start() -> Self {
        let received = Arc::new(Received::default());
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        let service = TraceServiceServer::new(GrpcReceiver(Arc::clone(&received)));
        let grpc_task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        let sink = Arc::clone(&received);
        let router = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sink = Arc::clone(&sink);
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            sink.add(request, "http");
                            (
                                http::StatusCode::OK,
                                [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            http::StatusCode::BAD_REQUEST,
                            [(http::header::CONTENT_TYPE, "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http_listener, router).await;
        });
        Self {
            grpc,
            http,
            received,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// Makes `command` (a service binary) export here over `protocol` (`grpc` or
    /// `http/protobuf`), a batch every `batch_delay_ms`.
    pub fn export_from(
        &self,
        command: &mut tokio::process::Command,
        protocol: &str,
        batch_delay_ms: u64,
    ) {
        let endpoint = if protocol == "grpc" {
            self.grpc
        } else {
            self.http
        };
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_BSP_SCHEDULE_DELAY", batch_delay_ms.to_string());
    }

    /// The spans of `trace_id` once `complete` says they are all there; panics after
    /// `within` with what did arrive.
    pub async fn trace(
        &self,
        trace_id: &str,
        within: Duration,
        complete: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let wait = async {
            loop {
                let arrived = self.received.arrived.notified();
                let spans = self.spans_of(trace_id);
                if complete(&spans) {
                    return spans;
                }
                arrived.await;
            }
        };
        if let Ok(spans) = tokio::time::timeout(within, wait).await {
            return spans;
        }
        panic!(
            "trace {trace_id} incomplete after {within:?}; received: {:#?}",
            self.spans_of(trace_id)
        )
    }

    /// Every span of `trace_id` received so far.
    #[must_use]
    pub fn spans_of(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.received
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}
