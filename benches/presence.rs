//! Presence throughput: observations into the pure state machine with 100,000 tracked
//! devices (issue target: >= 2,000,000 observations/s on one core).
//! `cargo bench --bench presence`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use vigil::event::{Evidence, Observation};
use vigil::presence::PresenceTable;

const DEVICES: u32 = 100_000;
const BATCH: usize = 100_000;

fn table() -> PresenceTable {
    let mut t = PresenceTable::new();
    for k in 0..DEVICES {
        t.track(k, Arc::from(format!("42010400001320{k:06}")), "gb28181", 0);
    }
    // Everyone registered and online, as in steady state.
    for k in 0..DEVICES {
        t.observe(
            0,
            &Observation {
                device: k,
                at: 0,
                evidence: Evidence::SipRegister { expires_ms: 3_600_000, window_ms: 180_000 },
                detail: None,
            },
        );
    }
    t
}

fn observations(start: i64) -> Vec<Observation> {
    // Keepalives in a scattered order (a multiplicative walk over the keys).
    (0..BATCH as u64)
        .map(|i| {
            let k = ((i * 7919) % u64::from(DEVICES)) as u32;
            let at = start + (i as i64) / 100;
            Observation { device: k, at, evidence: Evidence::SipKeepalive { window_ms: 180_000 }, detail: None }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("presence");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(30);
    let mut t = table();
    let obs = observations(1_000);
    let mut now = 1_000;
    g.bench_function("observe_keepalive_100k_devices", |b| {
        b.iter(|| {
            now += 1;
            let mut n = 0;
            for o in &obs {
                n += usize::from(t.observe(now, o).is_some());
            }
            n
        })
    });
    // Mixed: 1 in 50 observations is an un-REGISTER or a re-REGISTER (transitions and timers).
    let mixed: Vec<Observation> = observations(2_000)
        .into_iter()
        .enumerate()
        .map(|(i, mut o)| {
            if i % 100 == 0 {
                o.evidence = Evidence::SipUnregister;
            } else if i % 100 == 50 {
                o.evidence = Evidence::SipRegister { expires_ms: 3_600_000, window_ms: 180_000 };
            }
            o
        })
        .collect();
    g.bench_function("observe_mixed_with_transitions_100k_devices", |b| {
        b.iter_batched(
            table,
            |mut t| {
                let mut n = 0;
                for o in &mixed {
                    n += usize::from(t.observe(2_000, o).is_some());
                }
                n
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
    c.bench_function("presence/tick_expire_100k_devices", |b| {
        b.iter_batched(table, |mut t| t.tick(10_000_000).len(), BatchSize::LargeInput)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
