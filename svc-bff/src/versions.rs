//! API versions and their dated lifecycle: `active → deprecated → sunset`, per version and
//! optionally per route, from one policy file (`versions.toml`).
//!
//! - *deprecated*: answers carry `Deprecation: @<unix>` (RFC 9745), `Sunset: <HTTP-date>`
//!   (RFC 8594) when a sunset is set, and `Link` headers to the successor version
//!   (`rel="successor-version"`) and the migration guide (`rel="deprecation"`); WebSocket
//!   clients get a `deprecation` frame after `ready`.
//! - *sunset*: a route whose contract the successor keeps answers 308 to its twin there; any
//!   other answers 410 `gone`, naming the successor.
//!
//! The clock is injectable so that every phase can be tested on a running gateway.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{FromRequestParts, MatchedPath, Request, State},
    http::request::Parts,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tertulia_plumbing::clock::http_date;
pub use tertulia_plumbing::clock::{Clock, ManualClock, SystemClock};
use time::OffsetDateTime;

use tertulia_plumbing::token::TokenVerifier;

use crate::{problem::ApiError, usage::ApiUsage};

/// Longest `User-Agent` kept in usage counts.
const MAX_USER_AGENT_CHARS: usize = 160;

/// The built-in policy (`svc-bff/versions.toml`).
pub const DEFAULT_POLICY: &str = include_str!("../versions.toml");

/// Dates of one version or route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dates {
    /// From when it is deprecated.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub deprecated_at: Option<OffsetDateTime>,
    /// From when it is gone.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub sunset_at: Option<OffsetDateTime>,
}

/// One version's lifecycle.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionLifecycle {
    /// The version's own dates.
    #[serde(flatten)]
    pub dates: Dates,
    /// The version that replaces it (e.g. `v2`).
    pub successor: Option<String>,
    /// Where clients read how to migrate.
    pub migration_guide: Option<String>,
    /// Route patterns (relative to the version prefix) whose contract the successor changes:
    /// `/path` (every method) or `METHOD /path` (that method only).
    #[serde(default)]
    pub changed_in_successor: Vec<String>,
    /// Dates of single routes, overriding the version's.
    #[serde(default)]
    pub routes: BTreeMap<String, Dates>,
}

/// Every version's lifecycle.
#[derive(Debug, Clone, Default)]
pub struct VersionPolicy {
    versions: BTreeMap<String, VersionLifecycle>,
}

/// Where a route is in its life at some instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Nothing to say.
    Active,
    /// Still served, with a notice.
    Deprecated,
    /// No longer served.
    Sunset,
}

/// What a deprecated answer tells its client (also the WebSocket `deprecation` frame).
#[derive(Debug, Clone)]
pub struct Notice {
    /// The version called.
    pub version: String,
    /// Since when it is deprecated.
    pub deprecated_at: OffsetDateTime,
    /// When it goes, if decided.
    pub sunset_at: Option<OffsetDateTime>,
    /// `/api/<successor>`, if any.
    pub successor: Option<String>,
    /// The migration guide, if any.
    pub migration_guide: Option<String>,
}

impl Notice {
    /// The `Deprecation`, `Sunset` and `Link` headers.
    #[must_use]
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        let deprecation = format!("@{}", self.deprecated_at.unix_timestamp());
        h.insert(
            "deprecation",
            HeaderValue::from_str(&deprecation).expect("ASCII"),
        );
        if let Some(sunset) = self.sunset_at {
            h.insert(
                "sunset",
                HeaderValue::from_str(&http_date(sunset)).expect("ASCII"),
            );
        }
        for link in self.links() {
            if let Ok(value) = HeaderValue::from_str(&link) {
                h.append(header::LINK, value);
            }
        }
        h
    }

    fn links(&self) -> Vec<String> {
        let mut links = Vec::new();
        if let Some(successor) = &self.successor {
            links.push(format!("<{successor}>; rel=\"successor-version\""));
        }
        if let Some(guide) = &self.migration_guide {
            links.push(format!(
                "<{guide}>; rel=\"deprecation\"; type=\"text/html\""
            ));
        }
        links
    }

    /// The WebSocket frame.
    #[must_use]
    pub fn frame(&self) -> serde_json::Value {
        let rfc3339 = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        };
        serde_json::json!({
            "type": "deprecation",
            "version": self.version,
            "deprecated_at": rfc3339(self.deprecated_at),
            "sunset_at": self.sunset_at.and_then(rfc3339),
            "successor": self.successor,
            "migration_guide": self.migration_guide,
        })
    }
}

impl VersionPolicy {
    /// Parses and checks a policy (TOML): sunsets never before deprecations, successors known.
    pub fn parse(text: &str) -> Result<Self, String> {
        use figment::{
            Figment,
            providers::{Format as _, Toml},
        };
        let versions: BTreeMap<String, VersionLifecycle> = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| format!("version policy: {e}"))?;
        for (name, v) in &versions {
            let mut all = vec![(String::new(), &v.dates)];
            all.extend(v.routes.iter().map(|(r, d)| (r.clone(), d)));
            for (route, dates) in all {
                if let (Some(d), Some(s)) = (dates.deprecated_at, dates.sunset_at)
                    && s < d
                {
                    return Err(format!(
                        "version policy: {name}{route} sets its sunset before its deprecation"
                    ));
                }
                if dates.sunset_at.is_some() && dates.deprecated_at.is_none() {
                    return Err(format!(
                        "version policy: {name}{route} has a sunset but no deprecation date"
                    ));
                }
            }
            if let Some(bad) = v.changed_in_successor.iter().find(|entry| {
                let route = entry.split_once(' ').map_or(entry.as_str(), |(m, r)| {
                    if m.chars().all(|c| c.is_ascii_uppercase()) {
                        r
                    } else {
                        ""
                    }
                });
                !route.starts_with('/')
            }) {
                return Err(format!(
                    "version policy: {name}.changed_in_successor entry {bad:?} is neither \"/path\" nor \"METHOD /path\""
                ));
            }
            if let Some(s) = &v.successor
                && !versions.contains_key(s)
            {
                return Err(format!(
                    "version policy: {name}'s successor {s} is not a version"
                ));
            }
        }
        Ok(Self { versions })
    }

    /// The phase of `route` (a pattern relative to the version prefix) of `version` at `now`,
    /// and the notice to give while deprecated.
    #[must_use]
    pub fn phase(
        &self,
        version: &str,
        route: &str,
        now: OffsetDateTime,
    ) -> (Phase, Option<Notice>) {
        let Some(v) = self.versions.get(version) else {
            return (Phase::Active, None);
        };
        let dates = v.routes.get(route).unwrap_or(&v.dates);
        let notice = dates.deprecated_at.map(|deprecated_at| Notice {
            version: version.to_owned(),
            deprecated_at,
            sunset_at: dates.sunset_at,
            successor: v.successor.as_ref().map(|s| format!("/api/{s}")),
            migration_guide: v.migration_guide.clone(),
        });
        let phase = match (dates.deprecated_at, dates.sunset_at) {
            (_, Some(s)) if now >= s => Phase::Sunset,
            (Some(d), _) if now >= d => Phase::Deprecated,
            _ => Phase::Active,
        };
        (phase, notice)
    }

    /// Whether the successor of `version` keeps the contract of `method route`.
    #[must_use]
    pub fn kept_in_successor(&self, version: &str, method: &str, route: &str) -> bool {
        self.versions.get(version).is_some_and(|v| {
            v.successor.is_some()
                && !v
                    .changed_in_successor
                    .iter()
                    .any(|entry| match entry.split_once(' ') {
                        Some((m, r)) => m.eq_ignore_ascii_case(method) && r == route,
                        None => entry == route,
                    })
        })
    }
}

/// What the lifecycle layer of one version prefix needs.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The policy.
    pub policy: Arc<VersionPolicy>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The version this layer guards (`v1`).
    pub version: &'static str,
    /// Where calls to deprecated and sunset routes are counted.
    pub usage: Arc<ApiUsage>,
    /// Names the caller of a counted call.
    pub verifier: TokenVerifier,
}

impl Gate {
    /// Counts a call to a deprecated or sunset route, by token subject and `User-Agent`.
    async fn count(&self, headers: &HeaderMap, route: &str) {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_owned());
        // Bounded: the client names its counter, and a counter's key must stay short.
        let user_agent: String = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .take(MAX_USER_AGENT_CHARS)
            .collect();
        let subject = match token {
            Some(token) => self
                .verifier
                .verify(&token)
                .await
                .map_or_else(|_| "invalid-token".to_owned(), |claims| claims.sub),
            None => "anonymous".to_owned(),
        };
        let caller = crate::usage::Caller {
            version: self.version.to_owned(),
            route: route.to_owned(),
            subject,
            user_agent,
        };
        self.usage.record(caller, self.clock.now());
    }
}

/// The lifecycle layer: notices while deprecated, 308 or 410 after sunset.
pub async fn lifecycle(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let prefix = format!("/api/{}", gate.version);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| {
            m.as_str()
                .strip_prefix(&prefix)
                .unwrap_or(m.as_str())
                .to_owned()
        })
        .unwrap_or_default();
    let (phase, notice) = gate.policy.phase(gate.version, &route, gate.clock.now());
    if phase != Phase::Active {
        let headers = request.headers().clone();
        gate.count(&headers, &route).await;
    }
    match (phase, notice) {
        (Phase::Deprecated, Some(notice)) => {
            request.extensions_mut().insert(notice.clone());
            let mut response = next.run(request).await;
            response.headers_mut().extend(notice.headers());
            response
        }
        (Phase::Sunset, notice) => {
            let headers = notice.as_ref().map(Notice::headers).unwrap_or_default();
            let successor = notice.and_then(|n| n.successor);
            let mut response = match successor {
                Some(to)
                    if gate.policy.kept_in_successor(
                        gate.version,
                        request.method().as_str(),
                        &route,
                    ) =>
                {
                    let uri = request.uri();
                    let rest = uri.path().strip_prefix(&prefix).unwrap_or(uri.path());
                    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
                    let location = format!("{to}{rest}{query}");
                    let mut r = StatusCode::PERMANENT_REDIRECT.into_response();
                    if let Ok(v) = HeaderValue::from_str(&location) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    r
                }
                Some(to) => ApiError::new(
                    StatusCode::GONE,
                    "gone",
                    format!("/api/{} has been sunset; this route changed in {to}: see the migration guide", gate.version),
                )
                .into_response(),
                None => ApiError::new(
                    StatusCode::GONE,
                    "gone",
                    format!("/api/{} has been sunset", gate.version),
                )
                .into_response(),
            };
            response.headers_mut().extend(headers);
            response
        }
        _ => next.run(request).await,
    }
}

/// The API version a request was made to, for the handlers shared by both versions that
/// answer in the version's shape (messages in real-time frames, a conversation's last
/// message). Taken from the matched route (`/api/v2/...` is v2, anything else v1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `text` messages, no reactions.
    V1,
    /// `content` messages with `reactions`, and `reactions` frames.
    V2,
}

impl Api {
    /// Both versions, in the order of [`Api::index`].
    pub const ALL: [Self; 2] = [Self::V1, Self::V2];

    /// A dense index, for per-version tables.
    #[must_use]
    pub fn index(self) -> usize {
        match self {
            Self::V1 => 0,
            Self::V2 => 1,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Api {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let path = parts
            .extensions
            .get::<MatchedPath>()
            .map_or_else(|| parts.uri.path(), MatchedPath::as_str);
        Ok(if path.starts_with("/api/v2/") {
            Self::V2
        } else {
            Self::V1
        })
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const POLICY: &str = r#"
[v1]
deprecated_at = "2027-01-01T00:00:00Z"
sunset_at = "2027-07-01T00:00:00Z"
successor = "v2"
migration_guide = "https://example.test/migrate"
changed_in_successor = ["/ws", "PATCH /conversations/{id}/messages/{message_id}"]

[v1.routes."/videos"]
deprecated_at = "2027-03-01T00:00:00Z"

[v2]
"#;

    #[test]
    fn phases_follow_the_dates_per_version_and_route() {
        let p = VersionPolicy::parse(POLICY).unwrap();
        assert_eq!(
            p.phase("v1", "/conversations", datetime!(2026-12-31 23:59 UTC))
                .0,
            Phase::Active
        );
        let (phase, notice) = p.phase("v1", "/conversations", datetime!(2027-01-01 00:00 UTC));
        assert_eq!(phase, Phase::Deprecated);
        let h = notice.unwrap().headers();
        assert_eq!(h["deprecation"], "@1798761600");
        assert_eq!(h["sunset"], "Thu, 01 Jul 2027 00:00:00 GMT");
        let links: Vec<_> = h
            .get_all(header::LINK)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(links[0], "</api/v2>; rel=\"successor-version\"");
        assert!(links[1].contains("rel=\"deprecation\""));
        assert_eq!(
            p.phase("v1", "/videos", datetime!(2027-02-01 00:00 UTC)).0,
            Phase::Active,
            "route override"
        );
        assert_eq!(
            p.phase("v1", "/videos", datetime!(2028-01-01 00:00 UTC)).0,
            Phase::Deprecated,
            "no sunset for it"
        );
        assert_eq!(
            p.phase("v1", "/conversations", datetime!(2027-07-01 00:00 UTC))
                .0,
            Phase::Sunset
        );
        assert_eq!(
            p.phase("v2", "/conversations", datetime!(2030-01-01 00:00 UTC))
                .0,
            Phase::Active
        );
        assert!(p.kept_in_successor("v1", "GET", "/conversations"));
        assert!(!p.kept_in_successor("v1", "GET", "/ws"));
        let message = "/conversations/{id}/messages/{message_id}";
        assert!(!p.kept_in_successor("v1", "PATCH", message), "per method");
        assert!(p.kept_in_successor("v1", "DELETE", message));
        assert!(
            !p.kept_in_successor("v2", "GET", "/conversations"),
            "no successor"
        );
    }

    #[test]
    fn inconsistent_policies_are_refused() {
        let early = "[v1]\ndeprecated_at = \"2027-02-01T00:00:00Z\"\nsunset_at = \"2027-01-01T00:00:00Z\"\n";
        assert!(
            VersionPolicy::parse(early)
                .unwrap_err()
                .contains("before its deprecation")
        );
        let orphan = "[v1]\nsunset_at = \"2027-01-01T00:00:00Z\"\n";
        assert!(VersionPolicy::parse(orphan).is_err());
        assert!(
            VersionPolicy::parse("[v1]\nsuccessor = \"v9\"\n")
                .unwrap_err()
                .contains("v9")
        );
        assert!(VersionPolicy::parse("[v1]\nbogus = 1\n").is_err());
        for bad in ["ws", "get /ws", "GET ws"] {
            let policy = format!("[v1]\nchanged_in_successor = [{bad:?}]\n");
            assert!(
                VersionPolicy::parse(&policy)
                    .unwrap_err()
                    .contains("METHOD /path"),
                "{bad}"
            );
        }
        assert!(VersionPolicy::parse(DEFAULT_POLICY).is_ok());
    }
}
