//! Shutdown signalling shared by every task of a service.
//!
//! A [`Shutdown`] is a cancellation token: `main` trips it on SIGTERM or SIGINT, tests trip it
//! by hand, and every server and background loop watches it.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(message = "Cannot listen for Ctrl-C.", %error);
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(message = "Cannot listen for SIGTERM.", %error);
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(message = "SIGINT received, shutting down."),
        () = term => tracing::info!(message = "SIGTERM received, shutting down."),
    }
}

/// A token that trips on the first signal; what every `main` passes to `run`.
#[must_use]
pub fn on_signal() -> Shutdown {
    let token = Shutdown::new();
    let trip = token.clone();
    tokio::spawn(async move {
        signal().await;
        trip.cancel();
    });
    token
}
