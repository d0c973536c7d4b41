//! Online-rate rollup: every org node (500) × kind over 100,000 devices
//! (issue target: <= 5 ms). `cargo bench --bench rate`

use criterion::{criterion_group, criterion_main, Criterion};
use vigil::rate::RateIndex;
use vigil::registry::{Admission, Cache, DeviceKind, NewDevice, Org, OrgKind, Protocol};

/// 1 district, 20 streets, 479 communities and units: 500 org nodes.
fn district() -> Cache {
    let mut orgs = vec![Org {
        id: "d".into(),
        name: "硚口区".into(),
        kind: OrgKind::District,
        parent_id: None,
        gb_prefix: Some("420104".into()),
    }];
    for s in 0..20 {
        orgs.push(Org {
            id: format!("s{s}"),
            name: format!("街道{s}"),
            kind: OrgKind::Street,
            parent_id: Some("d".into()),
            gb_prefix: None,
        });
    }
    for c in 0..479 {
        orgs.push(Org {
            id: format!("c{c}"),
            name: format!("社区{c}"),
            kind: OrgKind::Community,
            parent_id: Some(format!("s{}", c % 20)),
            gb_prefix: None,
        });
    }
    let devices = (0..100_000)
        .map(|i| {
            (
                NewDevice {
                    id: format!("dev-{i:06}"),
                    name: String::new(),
                    kind: DeviceKind::ALL[i % DeviceKind::ALL.len()],
                    protocol: Protocol::ALL[i % Protocol::ALL.len()],
                    org_id: Some(format!("c{}", i % 479)),
                    profile: None,
                    rtsp_url: None,
                    password: None,
                    admission: if i % 97 == 0 { Admission::Quarantined } else { Admission::Approved },
                    attrs: Default::default(),
                },
                true,
                i % 101 == 0,
                0,
            )
        })
        .collect();
    Cache::build(orgs, devices, Vec::new())
}

fn bench(c: &mut Criterion) {
    let cache = district();
    let index = RateIndex::build(&cache, false);
    let states: Vec<u8> = (0..cache.key_space()).map(|k| if k % 25 == 0 { 2 } else { 1 }).collect();
    let mut g = c.benchmark_group("rate");
    g.bench_function("rollup_100k_devices_500_orgs", |b| b.iter(|| index.rollup(&states, &Default::default(), 0)));
    g.sample_size(10);
    g.bench_function("index_build_100k_devices_500_orgs", |b| b.iter(|| RateIndex::build(&cache, false)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
