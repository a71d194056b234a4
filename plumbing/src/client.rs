//! gRPC client channels to other services, with connect timeouts, per-call deadlines and,
//! over several instances, balancing or affinity.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::Either;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt as _};

use crate::{config::UpstreamConfig, telemetry::Upstream};

/// How long establishing a connection may take before the call fails `UNAVAILABLE`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The upstream URL is not a valid URI.
#[derive(Debug, thiserror::Error)]
#[error("invalid upstream URL {url:?}")]
pub struct InvalidUpstream {
    url: String,
    #[source]
    source: tonic::transport::Error,
}

/// A lazily connecting channel: the service starts even while the upstream is down and
/// calls fail `UNAVAILABLE` until it is back. Every call carries the configured deadline.
/// A comma-separated URL lists several instances: calls are balanced across them on the
/// client side (and an instance that is down is skipped), except calls with an affinity key
/// ([`with_affinity`]), which go to the instance the key picks. Calls are traced (a client
/// span, `traceparent` in the metadata) while traces are exported.
pub fn channel(upstream: &UpstreamConfig) -> Result<Upstream, InvalidUpstream> {
    let endpoints = crate::config::url_list(&upstream.url)
        .map(|url| {
            Endpoint::from_shared(url.to_owned())
                .map(|e| {
                    e.connect_timeout(CONNECT_TIMEOUT)
                        .timeout(Duration::from_millis(upstream.timeout_ms))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_while_idle(true)
                })
                .map_err(|source| InvalidUpstream {
                    url: url.to_owned(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let route = match endpoints.as_slice() {
        [] => {
            return Err(InvalidUpstream {
                url: upstream.url.clone(),
                source: Endpoint::from_shared(String::new()).expect_err("an empty URI is invalid"),
            });
        }
        [one] => Route::new(one.connect_lazy(), Vec::new()),
        _ => {
            let instances = endpoints
                .iter()
                .map(|e| (e.uri().to_string(), e.connect_lazy()))
                .collect();
            Route::new(Channel::balance_list(endpoints.into_iter()), instances)
        }
    };
    Ok(Upstream::new(route))
}

/// The metadata key of a call's affinity key (see [`with_affinity`]).
pub const AFFINITY: &str = "x-tertulia-affinity";

/// Marks `request` with an affinity `key` (a conversation id, say): over several instances,
/// every caller sends the calls of one key to the same instance, chosen by rendezvous
/// hashing of the key and the instances' URLs, so callers agree whatever order they list the
/// instances in and a change of instances moves only the keys of the instance that changed.
/// An instance that could not be reached (an I/O error; not a deadline) is left out for a
/// few seconds (its keys go to the next choice). With one instance, or behind a mesh sidecar (whose load
/// balancer may hash the same header), the key changes nothing.
#[must_use]
pub fn with_affinity<T>(mut request: tonic::Request<T>, key: &str) -> tonic::Request<T> {
    if let Ok(value) = key.parse() {
        request.metadata_mut().insert(AFFINITY, value);
    }
    request
}

/// How long an instance whose call failed for want of a connection is left out of affinity.
const LEFT_OUT: Duration = Duration::from_secs(5);

/// Where a call goes: the balanced channel, or the instance its affinity key picks.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    balanced: Channel,
    instances: Arc<[Instance]>,
}

#[derive(Debug)]
struct Instance {
    url: String,
    channel: Channel,
    failed_at: Mutex<Option<Instant>>,
}

impl Instance {
    fn left_out(&self, now: Instant) -> bool {
        self.failed_at
            .lock()
            .expect("never held across a panic")
            .is_some_and(|at| now.duration_since(at) < LEFT_OUT)
    }
}

/// The score of `key` on the instance at `url`: FNV-1a of both, then the `MurmurHash3`
/// finaliser (FNV alone leaves the high bits, which the comparison reads, biased when URLs
/// differ only in a few bytes). Stable across processes and builds, so every caller computes
/// the same choice.
fn score(key: &[u8], url: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.iter().chain(b"@").chain(url.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// Whether `error` says the instance could not be reached: an I/O error (refused, reset)
/// somewhere in its chain.
fn unreachable(error: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<std::io::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

impl Route {
    fn new(balanced: Channel, instances: Vec<(String, Channel)>) -> Self {
        Self {
            balanced,
            instances: instances
                .into_iter()
                .map(|(url, channel)| Instance {
                    url,
                    channel,
                    failed_at: Mutex::new(None),
                })
                .collect(),
        }
    }

    /// The instance `key` picks: the highest score of key and URL among those not left out.
    fn pick(&self, key: &[u8], now: Instant) -> Option<usize> {
        self.instances
            .iter()
            .enumerate()
            .filter(|(_, instance)| !instance.left_out(now))
            .max_by_key(|(_, instance)| score(key, &instance.url))
            .map(|(i, _)| i)
    }

    pub(crate) fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tonic::transport::Error>> {
        self.balanced.poll_ready(cx)
    }

    /// Calls the instance the request's affinity key picks, or else the balanced channel
    /// (made ready by [`Route::poll_ready`]).
    pub(crate) fn call(
        &mut self,
        request: http::Request<tonic::body::Body>,
    ) -> impl Future<Output = Result<http::Response<tonic::body::Body>, tonic::transport::Error>>
    + Send
    + 'static {
        let picked = request
            .headers()
            .get(AFFINITY)
            .filter(|_| !self.instances.is_empty())
            .and_then(|key| self.pick(key.as_bytes(), Instant::now()));
        let Some(i) = picked else {
            return Either::Left(self.balanced.call(request));
        };
        let instances = Arc::clone(&self.instances);
        Either::Right(async move {
            let instance = &instances[i];
            let mut channel = instance.channel.clone();
            let result = match channel.ready().await {
                Ok(ready) => ready.call(request).await,
                Err(e) => Err(e),
            };
            // Only a failure to reach it (not a deadline passed under load, which would move
            // keys away from an instance that is merely busy).
            if result.as_ref().is_err_and(unreachable) {
                *instance
                    .failed_at
                    .lock()
                    .expect("never held across a panic") = Some(Instant::now());
            }
            result
        })
    }
}

/// Wraps a message in a request whose deadline (`grpc-timeout`) is `deadline`, so the server
/// stops working on it when the caller stops waiting.
pub fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// Calls `call` again while it answers `UNAVAILABLE` (the server shed it, at capacity, or
/// no instance could be reached), pausing before each retry for between half and one and a
/// half times the next of `pauses`, so that calls shed together do not come back together.
/// After the last pause, the last answer is the answer. Only for calls that may run twice.
pub async fn retry_unavailable<T, F, Fut>(
    pauses: &[Duration],
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut pauses = pauses.iter();
    loop {
        match call().await {
            Err(status) if status.code() == tonic::Code::Unavailable => match pauses.next() {
                Some(pause) => {
                    tokio::time::sleep(pause.mul_f64(0.5 + rand::random::<f64>())).await;
                }
                None => return Err(status),
            },
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::{
        ServingStatus,
        pb::{HealthCheckRequest, health_client::HealthClient},
    };

    use super::*;
    use crate::shutdown::Shutdown;

    fn route(urls: &[&str]) -> Route {
        let instances = urls
            .iter()
            .map(|url| {
                (
                    format!("{url}/"),
                    Endpoint::from_static("http://x").connect_lazy(),
                )
            })
            .collect();
        Route::new(Endpoint::from_static("http://x").connect_lazy(), instances)
    }

    fn picked<'a>(route: &'a Route, key: &str, now: Instant) -> &'a str {
        let i = route.pick(key.as_bytes(), now).expect("an instance");
        &route.instances[i].url
    }

    #[tokio::test]
    async fn every_caller_picks_the_same_instance_for_a_key_and_keys_spread() {
        let now = Instant::now();
        let one = route(&["http://a:1", "http://b:1", "http://c:1"]);
        let other = route(&["http://c:1", "http://a:1", "http://b:1"]);
        let mut per_instance = std::collections::HashMap::<&str, usize>::new();
        for k in 0..3000 {
            let key = format!("conversation-{k}");
            assert_eq!(picked(&one, &key, now), picked(&other, &key, now), "{key}");
            *per_instance.entry(picked(&one, &key, now)).or_default() += 1;
        }
        assert_eq!(per_instance.len(), 3, "{per_instance:?}");
        assert!(per_instance.values().all(|n| *n > 900), "{per_instance:?}");
        // An instance left out hands its keys to the others; nobody else's key moves.
        *one.instances[0].failed_at.lock().unwrap() = Some(now);
        for k in 0..3000 {
            let key = format!("conversation-{k}");
            let before = picked(&other, &key, now);
            let after = picked(&one, &key, now);
            assert_ne!(after, "http://a:1/");
            if before != "http://a:1/" {
                assert_eq!(before, after, "{key}");
            }
            // Back after its time out.
            assert_eq!(picked(&one, &key, now + LEFT_OUT), before);
        }
    }

    /// A shed call is tried again after each pause, and then the last answer stands; any
    /// other error is not retried.
    #[tokio::test(start_paused = true)]
    async fn a_shed_call_is_tried_again_and_other_errors_are_not() {
        let pauses = [Duration::from_millis(100), Duration::from_secs(1)];
        let calls = std::cell::Cell::new(0);
        let answers = |answers: Vec<Result<u8, tonic::Status>>| {
            calls.set(0);
            let answers = std::cell::RefCell::new(answers.into_iter());
            let calls = &calls;
            async move {
                let started = tokio::time::Instant::now();
                let answer = retry_unavailable(&pauses, || {
                    calls.set(calls.get() + 1);
                    let next = answers.borrow_mut().next().expect("an answer per call");
                    async move { next }
                })
                .await;
                (answer, calls.get(), started.elapsed())
            }
        };
        let shed = || Err(tonic::Status::unavailable("server at capacity, retry"));
        let (answer, n, took) = answers(vec![shed(), Ok(7)]).await;
        assert_eq!((answer.unwrap(), n), (7, 2));
        assert!(took >= Duration::from_millis(50) && took <= Duration::from_millis(150));
        let (answer, n, _) = answers(vec![shed(), shed(), shed()]).await;
        assert_eq!(
            (answer.unwrap_err().code(), n),
            (tonic::Code::Unavailable, 3)
        );
        let (answer, n, took) = answers(vec![Err(tonic::Status::permission_denied("no"))]).await;
        assert_eq!(
            (answer.unwrap_err().code(), n),
            (tonic::Code::PermissionDenied, 1)
        );
        assert_eq!(took, Duration::ZERO);
    }

    /// A health server that reports only `name` as serving (so an answer says who answered),
    /// and its task.
    async fn server(
        name: &'static str,
        shutdown: &Shutdown,
    ) -> (
        String,
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = shutdown.clone();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move { stop.cancelled().await },
                ),
        );
        (url, task)
    }

    async fn who(upstream: &Upstream, key: &str) -> Result<&'static str, tonic::Status> {
        for name in ["a", "b"] {
            let request = HealthCheckRequest {
                service: name.into(),
            };
            let request = with_affinity(tonic::Request::new(request), key);
            match HealthClient::new(upstream.clone()).check(request).await {
                Ok(_) => return Ok(name),
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(status),
            }
        }
        panic!("neither server knows itself")
    }

    #[tokio::test]
    async fn keyed_calls_stay_on_one_instance_and_move_when_it_is_gone() {
        let (a_down, b_down) = (Shutdown::new(), Shutdown::new());
        let (a, a_task) = server("a", &a_down).await;
        let (b, _) = server("b", &b_down).await;
        let upstream = channel(&UpstreamConfig::at(format!("{a},{b}"))).unwrap();
        let keys: Vec<String> = (0..40).map(|k| format!("k{k}")).collect();
        let mut first = Vec::new();
        for key in &keys {
            let answered = who(&upstream, key).await.unwrap();
            for _ in 0..3 {
                assert_eq!(who(&upstream, key).await.unwrap(), answered, "{key}");
            }
            first.push(answered);
        }
        assert!(first.contains(&"a") && first.contains(&"b"), "{first:?}");
        // `a` goes away: its next call fails for want of a connection, then its keys go to
        // `b`, and `b`'s keys stay.
        a_down.cancel();
        tokio::time::timeout(Duration::from_secs(10), a_task)
            .await
            .expect("`a` stops")
            .unwrap()
            .unwrap();
        let gone = keys.iter().zip(&first).find(|(_, w)| **w == "a").unwrap().0;
        let mut answered = who(&upstream, gone).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while answered.is_err() && Instant::now() < deadline {
            answered = who(&upstream, gone).await;
        }
        assert_eq!(answered.unwrap(), "b");
        for key in &keys {
            assert_eq!(who(&upstream, key).await.unwrap(), "b", "{key}");
        }
    }

    #[tokio::test]
    async fn one_or_several_instances_and_clear_errors() {
        assert!(channel(&UpstreamConfig::at("http://127.0.0.1:50051")).is_ok());
        assert!(
            channel(&UpstreamConfig::at(
                "http://127.0.0.1:1, http://127.0.0.1:2"
            ))
            .is_ok()
        );
        let err = channel(&UpstreamConfig::at("http://a b")).unwrap_err();
        assert!(err.to_string().contains("a b"), "{err}");
        assert!(channel(&UpstreamConfig::at(" , ")).is_err());
    }
}
