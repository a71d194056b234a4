//! Real-time delivery to connected clients.
//!
//! - [`hub`]: one core NATS subscription to `deliver.<user_id>` per connected user on this
//!   gateway, fanned into a bounded queue per connection.
//! - [`feed`]: per connection and conversation, the last `seq` delivered; resume from history,
//!   drop duplicates, fill gaps from history, so a client never sees a hole or a reordering.
//! - [`frames`]: the JSON frames of the protocol.
//! - [`typing`]: ephemeral typing indicators, relayed over core NATS and never stored.
//! - [`ws`]: the WebSocket transport.

pub mod feed;
pub mod frames;
pub mod hub;
pub mod typing;
pub mod ws;

use std::time::Duration;

use serde::Deserialize;

/// Limits and timers of real-time connections.
#[derive(Debug, Clone, Deserialize)]
pub struct RealtimeConfig {
    /// Time a new WebSocket has to send `hello`, in seconds.
    pub hello_timeout_s: u64,
    /// A connection silent for this long (no frame, no pong) is closed, in seconds.
    pub idle_timeout_s: u64,
    /// How often the server pings, in seconds.
    pub ping_interval_s: u64,
    /// Events queued per connection before it counts as too slow (close 1013).
    pub outbound_queue: usize,
    /// How long one write to a client may take before it counts as too slow, in ms.
    pub send_timeout_ms: u64,
    /// Largest client frame, in bytes (close 1009 above).
    pub max_frame_bytes: usize,
    /// Client frames per second allowed on one connection, sustained.
    pub frames_per_second: u32,
    /// Client frames allowed in a burst.
    pub frame_burst: u32,
    /// Rejected frames in a row before the connection is closed (1008).
    pub max_rejected_in_a_row: u32,
}

impl RealtimeConfig {
    /// The documented defaults.
    #[must_use]
    pub fn standard() -> Self {
        Self {
            hello_timeout_s: 10,
            idle_timeout_s: 75,
            ping_interval_s: 25,
            outbound_queue: 256,
            send_timeout_ms: 5000,
            max_frame_bytes: 64 * 1024,
            frames_per_second: 20,
            frame_burst: 40,
            max_rejected_in_a_row: 20,
        }
    }

    fn hello_timeout(&self) -> Duration {
        Duration::from_secs(self.hello_timeout_s)
    }
    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }
    fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_s.max(1))
    }
    fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }
}
