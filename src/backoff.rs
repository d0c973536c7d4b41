//! Retry pacing shared by every client that reconnects (the MQTT client, RTSP pulls, the
//! upstream sinks and the QUIC link): exponential backoff with full jitter, so a thousand peers that
//! failed together do not come back together. Pure; no timers here.

use std::time::Duration;

/// Exponential backoff with full jitter: uniform in [min, min(max, min·2^(n-1))].
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let cap = min.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(max);
    let span = cap.saturating_sub(min).as_millis() as u64;
    let jitter = if span == 0 { 0 } else { jitter_ms() % (span + 1) };
    min + Duration::from_millis(jitter)
}

/// A uniform pick in [0, span].
pub fn uniform(span: Duration) -> Duration {
    let ms = span.as_millis() as u64;
    if ms == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(jitter_ms() % (ms + 1))
    }
}

fn jitter_ms() -> u64 {
    // Enough randomness for spreading reconnects: the UUID v7 random bits.
    let u = uuid::Uuid::now_v7().as_u128();
    (u as u64) ^ ((u >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        for n in 1..40 {
            let d = backoff(n, min, max);
            assert!(d >= min && d <= max, "{n}: {d:?}");
            let cap = min.saturating_mul(1 << (n - 1).min(16)).min(max);
            assert!(d <= cap, "{n}: {d:?} over {cap:?}");
        }
        let picks: Vec<Duration> = (0..200).map(|_| uniform(Duration::from_secs(10))).collect();
        assert!(picks.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(
            picks.iter().any(|d| *d > Duration::from_secs(5)) && picks.iter().any(|d| *d < Duration::from_secs(5)),
            "spread"
        );
    }
}
