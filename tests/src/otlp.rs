//! An OTLP/HTTP trace receiver: accepts what a worker process's OpenTelemetry exporter sends to
//! `POST /v1/traces` (protobuf, as `OTEL_EXPORTER_OTLP_ENDPOINT` makes it send), decodes it with
//! the OTLP protobuf definitions and keeps the spans.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One exported span, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The span's name.
    pub name: String,
    /// The span kind.
    pub kind: SpanKind,
}

/// A running receiver; stops with the test's runtime.
#[derive(Debug, Clone)]
pub struct OtlpReceiver {
    /// Where it listens: `http://<addr>` is the exporter's endpoint.
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind OTLP");
        let receiver = Self {
            addr: listener.local_addr().expect("OTLP address"),
            spans: Arc::default(),
        };
        let spans = receiver.spans.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, spans.clone()));
            }
        });
        receiver
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The spans received so far in trace `trace_id`.
    pub fn spans_of(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let spans = self.spans.lock().expect("spans");
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// How many spans were received in all.
    pub fn total(&self) -> usize {
        self.spans.lock().expect("spans").len()
    }
}

/// Serves HTTP/1.1 requests on one connection (keep-alive), answering each with 200.
async fn serve(stream: TcpStream, spans: Arc<Mutex<Vec<ReceivedSpan>>>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        loop {
            line.clear();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let status = match (path.as_str(), ExportTraceServiceRequest::decode(&body[..])) {
            ("/v1/traces", Ok(request)) => {
                let mut spans = spans.lock().expect("spans");
                for span in request
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .flat_map(|s| &s.spans)
                {
                    spans.push(ReceivedSpan {
                        trace_id: hex(&span.trace_id),
                        name: span.name.clone(),
                        kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    });
                }
                "200 OK"
            }
            _ => "400 Bad Request",
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        if stream
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
