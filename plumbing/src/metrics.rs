//! Prometheus metrics: each service instance owns one [`Registry`] (never a global one, so
//! several instances in one process, as in tests, keep their own series) and serves it as
//! OpenMetrics text at `GET /metrics`.

pub use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's series as OpenMetrics text.
#[must_use]
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct Labels {
        route: String,
    }

    #[test]
    fn families_render_as_openmetrics() {
        let mut registry = Registry::with_prefix("tertulia");
        let calls = Family::<Labels, Counter>::default();
        registry.register("calls", "Calls", calls.clone());
        calls
            .get_or_create(&Labels {
                route: "/ws".into(),
            })
            .inc();
        let text = render(&registry);
        assert!(
            text.contains("tertulia_calls_total{route=\"/ws\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
