//! Device-profile mapping throughput (issue #5 target: >= 200,000 messages/s per core for a
//! ~1 KB access event). The shipped Hikvision access-terminal profile maps a realistic ISAPI
//! AccessControllerEvent (lookup tables, privacy hashing, time parsing, dedup key), and the
//! Vzenith plate profile an envelope with a base64 plate; both on one thread.
//! `cargo bench --bench profile_map`

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The allocator the vigil binary uses (src/main.rs), so the figure is the product's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use vigil::profiles::{map, ProfileSet};

fn access_event(serial: u64) -> Vec<u8> {
    format!(
        r#"{{
  "ipAddress": "10.21.3.41", "portNo": 80, "protocol": "HTTP",
  "macAddress": "c0:56:e3:12:ab:9f", "channelID": 1,
  "dateTime": "2024-05-18T08:12:31+08:00",
  "activePostCount": 1, "eventType": "AccessControllerEvent", "eventState": "active",
  "eventDescription": "Access Controller Event",
  "AccessControllerEvent": {{
    "deviceName": "3栋1单元门口机", "majorEventType": 5, "subEventType": 1,
    "name": "张三", "cardReaderKind": 1, "cardReaderNo": 1, "verifyNo": 205, "cardNo": "0695915616",
    "cardType": 1, "doorNo": 1, "whiteListNo": 0, "reportChannel": 1, "cardReaderKind": 1,
    "employeeNoString": "R2024000311", "serialNo": {serial}, "userType": "normal",
    "currentVerifyMode": "cardOrFace", "currentEvent": true, "frontSerialNo": {prev},
    "attendanceStatus": "undefined", "statusValue": 0, "mask": "no", "picturesNumber": 0,
    "helmet": "unknown", "purePwdVerifyEnable": true, "FaceRect": {{"height": 0.31, "width": 0.17, "x": 0.41, "y": 0.22}},
    "currTemperature": 36.4, "thermometryUnit": "celsius", "isAbnomalTemperature": false
  }}
}}"#,
        prev = serial - 1
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let report = ProfileSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("device-profiles"));
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let set = report.set;
    let hik = set.select_mqtt("hik/XQ001/FX1234567/event", None).expect("hik route");
    let vz = set.select_mqtt("device/2a7e1c40-85e01fb7/message/up/ivs_result", None).expect("vzenith route");
    let received = 1_716_000_800_000;

    let payload = access_event(44170);
    assert!((900..1400).contains(&payload.len()), "~1 KB: {}", payload.len());
    let mut g = c.benchmark_group("profile_map");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("hikvision_access_{}B", payload.len()), |b| {
        b.iter(|| {
            let out = map(&hik.profile, &hik.captures, &payload, received).expect("maps");
            assert_eq!(out.len(), 1);
            out
        })
    });
    let plate = r#"{"id":"q8Zf3kL0aP2mX7cR","bv":12378,"sn":"2a7e1c40-85e01fb7","name":"ivs_result","version":"1.0","timestamp":1716001203,"payload":{"AlarmInfoPlate":{"channel":0,"deviceName":"南门入口","ipaddr":"10.21.9.12","result":{"PlateResult":{"license":"6YSCQUI3NTUz","colorType":1,"type":1,"confidence":97,"direction":4,"triggerType":8,"plateid":594786,"isoffline":0,"location":{"RECT":{"left":954,"top":502,"right":1109,"bottom":555}},"timeStamp":{"Timeval":{"sec":1716001203,"usec":412000}}}},"serialno":"2a7e1c40-85e01fb7"}}}"#.as_bytes();
    g.bench_function(format!("vzenith_plate_{}B", plate.len()), |b| {
        b.iter(|| map(&vz.profile, &vz.captures, plate, 1_716_001_204_000).expect("maps"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
