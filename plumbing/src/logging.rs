//! Structured logs: one JSON object per line on stdout, filtered by `RUST_LOG` (default
//! `info`). Spans are flattened into each event, and while traces are exported (see
//! [`crate::telemetry`]) every line inside a span carries its `trace_id` and `span_id`, so a
//! log line leads to its trace and a trace to its logs.
//!
//! `TERTULIA_LOG_FORMAT=pretty` prints compact human-readable lines instead. Every service
//! installs it through [`crate::telemetry::init`].

use std::fmt::Write as _;

use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        self, FmtContext, FormatEvent, FormatFields,
        format::{Json, JsonFields, Writer},
    },
    layer::SubscriberExt as _,
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

/// The filter every service logs and traces through.
pub(crate) fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Whether lines are JSON (the default) rather than `pretty`.
pub(crate) fn json() -> bool {
    std::env::var("TERTULIA_LOG_FORMAT").map_or(true, |f| f != "pretty")
}

/// The JSON line layer: the event's fields flattened, the current span's fields, and the
/// trace ids.
pub(crate) fn json_layer<S>() -> fmt::Layer<S, JsonFields, WithTraceIds>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fmt::layer()
        .json()
        .event_format(WithTraceIds(
            fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false),
        ))
        .fmt_fields(JsonFields::new())
}

/// Adds `trace_id` and `span_id` of the active OpenTelemetry span to each JSON line.
#[derive(Debug)]
pub(crate) struct WithTraceIds(fmt::format::Format<Json>);

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let context = opentelemetry::Context::current();
        let span = context.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let Some(object) = line.trim_end().strip_suffix('}') else {
            return writer.write_str(&line);
        };
        let mut out = String::with_capacity(line.len() + 70);
        out.push_str(object);
        if !object.ends_with('{') {
            out.push(',');
        }
        write!(
            out,
            "\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
            ids.trace_id(),
            ids.span_id()
        )?;
        writeln!(writer, "{out}")
    }
}

/// Installs a human-readable subscriber whose output the test harness captures (shown only
/// for failing tests), filtered by `RUST_LOG` (default `warn`). Harmless when repeated.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().compact().with_test_writer())
        .try_init();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_ids_of_the_active_span() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(json_layer().with_writer(move || writer.clone()));
        let ids = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("work", user = "u1");
            let ids = {
                let _entered = span.enter();
                tracing::info!(message = "inside", n = 1);
                span.context().span().span_context().clone()
            };
            tracing::info!(message = "outside");
            ids
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "inside");
        assert_eq!(lines[0]["n"], 1);
        assert_eq!(lines[0]["span"]["user"], "u1");
        assert_eq!(lines[0]["trace_id"], ids.trace_id().to_string());
        assert_eq!(lines[0]["span_id"], ids.span_id().to_string());
        assert_eq!(lines[1]["message"], "outside");
        assert!(lines[1].get("trace_id").is_none(), "{text}");
    }
}
