//! The process's file descriptors: the soft `RLIMIT_NOFILE` raised to the hard limit at start,
//! and the split of what there is between the listeners, so that a flood on one device port
//! fills that port's share and never the descriptors the API, `/health`, the database and the
//! other ports need ("Too many open files" everywhere at once is what an unsplit limit gives).

use tracing::{info, warn};

/// Each listener's share of the descriptors, and the part kept for everything that is not an
/// accepted connection (database, SQLite and its WAL, pictures being written, RTSP pulls,
/// upstream links).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft limit the split was made from.
    pub nofile: u64,
    pub sip_tcp: usize,
    pub gat1400: usize,
    pub mqtt: usize,
    pub http: usize,
}

/// The smallest share a listener gets, whatever the limit.
const MIN_SHARE: usize = 8;

impl Budget {
    /// Splits `nofile` descriptors: a quarter (at least 64) kept back, then of the rest SIP
    /// over TCP 45 %, MQTT 25 %, GA/T 1400 15 %, the API and dashboard 15 %.
    pub fn split(nofile: u64) -> Budget {
        let nofile_usize = usize::try_from(nofile).unwrap_or(usize::MAX);
        let reserve = (nofile_usize / 4).max(64);
        let usable = nofile_usize.saturating_sub(reserve);
        let share = |percent: usize| (usable / 100 * percent + usable % 100 * percent / 100).max(MIN_SHARE);
        Budget { nofile, sip_tcp: share(45), mqtt: share(25), gat1400: share(15), http: share(15) }
    }

    /// Connections one address may hold on a listener of `total`: an eighth, between `min`
    /// and `max` (a NAT in front of a whole community shares one address).
    pub fn per_address(total: usize, min: usize, max: usize) -> usize {
        (total / 8).clamp(min, max).min(total)
    }
}

/// Raises the soft open-file limit to the hard one and answers the soft limit now in force.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    let (soft, hard) = (lim.current, lim.maximum);
    let raised = match (soft, hard) {
        (Some(s), Some(h)) if h > s => {
            let mut want = lim;
            want.current = Some(h);
            match setrlimit(Resource::Nofile, want) {
                Ok(()) => {
                    info!(from = s, to = h, "Raised the open-file limit to the hard limit.");
                    h
                }
                Err(e) => {
                    warn!(soft = s, hard = h, error = %e, "Cannot raise the open-file limit; listeners get shares of the soft one.");
                    s
                }
            }
        }
        (Some(s), _) => s,
        // Unlimited: split a generous but finite number.
        (None, _) => 1 << 20,
    };
    raised
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_leave_room_for_everything_else() {
        for nofile in [256u64, 1024, 65_536, 1 << 20] {
            let b = Budget::split(nofile);
            let listeners = (b.sip_tcp + b.mqtt + b.gat1400 + b.http) as u64;
            assert!(listeners <= nofile * 3 / 4, "{nofile}: {b:?}");
            assert!(b.http >= MIN_SHARE && b.gat1400 >= MIN_SHARE, "{b:?}");
        }
        assert_eq!(Budget::split(1024).sip_tcp, 345);
        assert_eq!(Budget::per_address(345, 16, 1024), 43);
        assert_eq!(Budget::per_address(20, 16, 1024), 16);
        assert_eq!(Budget::per_address(10, 16, 1024), 10);
    }
}
