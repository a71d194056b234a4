//! The dated lifecycle of gRPC packages: a deprecated method still answers, with the notice
//! in its response metadata (`deprecation: @<unix>`, `sunset: <HTTP-date>`,
//! `link: <successor>; rel="successor-version"`); after its sunset it fails `UNIMPLEMENTED`
//! with status details naming the successor (`google.rpc.ErrorInfo`, reason `SUNSET`,
//! metadata `successor`, and a `google.rpc.Help` link to the migration guide).
//!
//! The policy is a TOML file named by `grpc.lifecycle_file`, one table per service:
//!
//! ```toml
//! ["tertulia.chat.v1.ChatService"]
//! deprecated_at = "2027-01-01T00:00:00Z"
//! sunset_at = "2027-07-01T00:00:00Z"
//! successor = "tertulia.chat.v2.ChatService"
//! migration_guide = "https://docs.tertulia.dev/api/migrating-v1-to-v2"
//! methods = ["SendMessage", "ListMessages"]   # every method when empty
//! ```

use std::{
    collections::BTreeMap,
    sync::Arc,
    task::{Context, Poll},
};

use serde::Deserialize;
use time::OffsetDateTime;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use tower::{Layer, Service};

use crate::clock::{Clock, http_date};

/// One service's lifecycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLifecycle {
    /// From when it is deprecated.
    #[serde(with = "time::serde::rfc3339")]
    pub deprecated_at: OffsetDateTime,
    /// From when it is gone.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub sunset_at: Option<OffsetDateTime>,
    /// The service that replaces it (full name).
    pub successor: String,
    /// Where callers read how to migrate.
    pub migration_guide: Option<String>,
    /// The methods concerned; every method when empty.
    #[serde(default)]
    pub methods: Vec<String>,
}

/// Every service's lifecycle, by full service name.
#[derive(Debug, Clone, Default)]
pub struct GrpcLifecycle {
    services: BTreeMap<String, ServiceLifecycle>,
}

impl GrpcLifecycle {
    /// Parses and checks a policy: sunsets never before deprecations.
    pub fn parse(text: &str) -> Result<Self, String> {
        use figment::{
            Figment,
            providers::{Format as _, Toml},
        };
        let services: BTreeMap<String, ServiceLifecycle> = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| format!("gRPC lifecycle policy: {e}"))?;
        for (name, s) in &services {
            if s.sunset_at.is_some_and(|sunset| sunset < s.deprecated_at) {
                return Err(format!(
                    "gRPC lifecycle policy: {name} sets its sunset before its deprecation"
                ));
            }
        }
        Ok(Self { services })
    }

    /// Every service's lifecycle, by full service name.
    #[must_use]
    pub fn services(&self) -> &BTreeMap<String, ServiceLifecycle> {
        &self.services
    }

    /// What applies to the call at `path` (`/package.Service/Method`).
    fn lookup(&self, path: &str) -> Option<&ServiceLifecycle> {
        let (service, method) = path.trim_start_matches('/').split_once('/')?;
        self.services
            .get(service)
            .filter(|s| s.methods.is_empty() || s.methods.iter().any(|m| m == method))
    }
}

/// Applies a [`GrpcLifecycle`] to every call.
#[derive(Debug, Clone)]
pub struct GrpcLifecycleLayer {
    policy: Arc<GrpcLifecycle>,
    clock: Arc<dyn Clock>,
}

impl GrpcLifecycleLayer {
    /// The layer for `policy`, reading `clock`.
    #[must_use]
    pub fn new(policy: Arc<GrpcLifecycle>, clock: Arc<dyn Clock>) -> Self {
        Self { policy, clock }
    }
}

impl<S> Layer<S> for GrpcLifecycleLayer {
    type Service = GrpcLifecycleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcLifecycleService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`GrpcLifecycleLayer`].
#[derive(Debug, Clone)]
pub struct GrpcLifecycleService<S> {
    inner: S,
    layer: GrpcLifecycleLayer,
}

fn notice_headers(entry: &ServiceLifecycle) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (
            "deprecation",
            format!("@{}", entry.deprecated_at.unix_timestamp()),
        ),
        (
            "link",
            format!("<{}>; rel=\"successor-version\"", entry.successor),
        ),
    ];
    if let Some(sunset) = entry.sunset_at {
        headers.push(("sunset", http_date(sunset)));
    }
    headers
}

fn sunset_status(path: &str, entry: &ServiceLifecycle) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        "SUNSET",
        "tertulia.dev",
        std::collections::HashMap::from([("successor".to_owned(), entry.successor.clone())]),
    );
    if let Some(guide) = &entry.migration_guide {
        details.add_help_link("migration guide", guide.clone());
    }
    Status::with_error_details(
        Code::Unimplemented,
        format!("{path} has been sunset; use {}", entry.successor),
        details,
    )
}

impl<S, B> Service<http::Request<B>> for GrpcLifecycleService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = crate::grpc::BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let now = self.layer.clock.now();
        let Some(entry) = self
            .layer
            .policy
            .lookup(&path)
            .filter(|e| now >= e.deprecated_at)
            .cloned()
        else {
            return Box::pin(self.inner.call(request));
        };
        if entry.sunset_at.is_some_and(|sunset| now >= sunset) {
            let status = sunset_status(&path, &entry);
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            for (name, value) in notice_headers(&entry) {
                if let Ok(value) = http::HeaderValue::from_str(&value) {
                    response.headers_mut().append(name, value);
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_match_methods() {
        let p = GrpcLifecycle::parse(
            "[\"tertulia.chat.v1.ChatService\"]\ndeprecated_at = \"2027-01-01T00:00:00Z\"\nsuccessor = \"tertulia.chat.v2.ChatService\"\nmethods = [\"SendMessage\"]\n",
        )
        .unwrap();
        assert!(
            p.lookup("/tertulia.chat.v1.ChatService/SendMessage")
                .is_some()
        );
        assert!(
            p.lookup("/tertulia.chat.v1.ChatService/GetConversation")
                .is_none()
        );
        assert!(p.lookup("/tertulia.auth.v1.AuthService/Login").is_none());
        let early = "[\"a.B\"]\ndeprecated_at = \"2027-02-01T00:00:00Z\"\nsunset_at = \"2027-01-01T00:00:00Z\"\nsuccessor = \"a.C\"\n";
        assert!(GrpcLifecycle::parse(early).is_err());
    }
}
