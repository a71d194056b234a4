//! Structured logs: one JSON object per line on stdout, filtered by `RUST_LOG`
//! (default `info`). Spans are flattened into each event so `trace_id` and friends travel with
//! every line.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Installs the global subscriber for `service`. Calling it twice (tests) is harmless.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TERTULIA_LOG_FORMAT").map_or(true, |f| f != "pretty");
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    } else {
        registry.with(fmt::layer().compact()).try_init()
    };
    if result.is_ok() {
        tracing::info!(message = "Logging initialised.", service);
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
