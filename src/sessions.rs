//! What vigil knows of each registered GB/T 28181 device's SIP side: where it registered
//! from and over what, its contact, when it registered and until when, its last keepalive,
//! the keepalive window in use (learned from the device where it reports one), its charset
//! and SIP/GB version. The server task owns the sessions and publishes them on a
//! `SessionBoard` that the API reads (this module sits beside, not inside, the source so the
//! API never imports a source); the board is saved (at most every `SAVE_EVERY`, when
//! it changed) so that after a restart a device is still known by its granted expiry and
//! registered address until it registers again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// The `gateway_state` key the board is saved under.
pub const STATE_KEY: &str = "gb28181.sessions";
/// How often a changed board is saved.
pub const SAVE_EVERY_MS: Millis = 30_000;

/// One device's SIP session, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The address its REGISTER came from (after NAT: where answers go).
    pub source: SocketAddr,
    /// `udp` or `tcp`.
    pub transport: String,
    /// The Contact header it registered.
    pub contact: String,
    pub registered_at: Millis,
    pub expires_at: Millis,
    pub last_keepalive: Option<Millis>,
    /// Offline after this long without a keepalive (interval × misses).
    pub keepalive_window_ms: Millis,
    /// Where the window came from: `config`, or `device` (ConfigDownload/BasicParam,
    /// clamped) with what the device reported.
    pub keepalive_from: String,
    /// `GB2312` or `UTF-8`: what its messages declared, used for what vigil sends it.
    pub charset: String,
    pub user_agent: Option<String>,
    /// `X-GB-Ver` (GB/T 28181-2022 devices send 3.0).
    pub gb_version: Option<String>,
    /// Until when its catalog subscription runs (it answered 200 to SUBSCRIBE).
    pub catalog_subscription_until: Option<Millis>,
}

/// The sessions, readable by the API. Written only by the SIP server task.
#[derive(Clone, Default)]
pub struct SessionBoard(Arc<RwLock<HashMap<String, SessionInfo>>>);

impl SessionBoard {
    pub fn get(&self, device: &str) -> Option<SessionInfo> {
        self.0.read().ok()?.get(device).cloned()
    }

    pub fn len(&self) -> usize {
        self.0.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn put(&self, device: &str, info: SessionInfo) {
        if let Ok(mut m) = self.0.write() {
            m.insert(device.to_owned(), info);
        }
    }

    pub(super) fn update(&self, device: &str, f: impl FnOnce(&mut SessionInfo)) {
        if let Ok(mut m) = self.0.write() {
            if let Some(s) = m.get_mut(device) {
                f(s);
            }
        }
    }

    pub(super) fn remove(&self, device: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(device);
        }
    }

    /// The board as JSON, for saving.
    pub(super) fn to_json(&self) -> String {
        self.0.read().ok().and_then(|m| serde_json::to_string(&*m).ok()).unwrap_or_else(|| "{}".into())
    }

    /// Sessions saved by an earlier run whose registration has not expired at `now`.
    pub(super) fn restore(json: &str, now: Millis) -> HashMap<String, SessionInfo> {
        let mut all: HashMap<String, SessionInfo> = serde_json::from_str(json).unwrap_or_default();
        all.retain(|_, s| s.expires_at > now);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_sessions_restore_only_while_their_registration_holds() {
        let board = SessionBoard::default();
        let info = |expires_at| SessionInfo {
            source: "10.0.0.5:5060".parse().expect("address"),
            transport: "udp".into(),
            contact: "<sip:x@10.0.0.5:5060>".into(),
            registered_at: 0,
            expires_at,
            last_keepalive: Some(10),
            keepalive_window_ms: 180_000,
            keepalive_from: "config".into(),
            charset: "GB2312".into(),
            user_agent: None,
            gb_version: Some("3.0".into()),
            catalog_subscription_until: None,
        };
        board.put("a", info(5_000));
        board.put("b", info(50_000));
        let back = SessionBoard::restore(&board.to_json(), 10_000);
        assert_eq!(back.keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(back["b"], info(50_000));
        assert!(SessionBoard::restore("not json", 0).is_empty());
    }
}
