//! The store, the same tests on SQLite and on PostgreSQL (a fresh database per test):
//! registry writes and reloads, all-or-nothing upserts, presence batches and history,
//! state-as-of queries, rate samples.

use std::sync::Arc;

use vigil::config::Admission as AdmissionConfig;
use vigil::db::Db;
use vigil::presence::{store as pstore, AliveKind, Reason, State, StateRow, Transition};
use vigil::registry::{Admission, Channel, DeviceKind, DevicePatch, NewDevice, Org, OrgKind, Protocol, Registry};

use crate::support::postgres::TestDb;

/// Runs a store test body on both backends.
macro_rules! on_both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/vigil.db", dir.path().display());
                super::$body(vigil::db::Db::connect(&url, None).await.expect("sqlite")).await;
            }
            #[tokio::test]
            async fn postgres() {
                let pg = crate::support::postgres::TestDb::create().await;
                super::$body(vigil::db::Db::connect(&pg.url, None).await.expect("postgres")).await;
            }
        }
    };
}

fn org(id: &str, kind: OrgKind, parent: Option<&str>, prefix: Option<&str>) -> Org {
    Org {
        id: id.into(),
        name: format!("{id} 名"),
        kind,
        parent_id: parent.map(Into::into),
        gb_prefix: prefix.map(Into::into),
    }
}

fn device(id: &str, protocol: Protocol, org: Option<&str>) -> NewDevice {
    NewDevice {
        id: id.into(),
        name: format!("设备 {id}"),
        kind: DeviceKind::Camera,
        protocol,
        org_id: org.map(Into::into),
        profile: None,
        rtsp_url: None,
        password: Some("secret".into()),
        admission: Admission::Approved,
        attrs: serde_json::Map::from_iter([("ip".to_string(), serde_json::json!("10.0.0.1"))]),
    }
}

async fn registry_round_trip(db: Db) {
    let reg = Registry::load(db.clone(), AdmissionConfig::default()).await.expect("load");
    reg.create_org(org("qiaokou", OrgKind::District, None, Some("420104"))).await.expect("district");
    reg.create_org(org("gutian", OrgKind::Street, Some("qiaokou"), Some("42010401"))).await.expect("street");
    assert!(reg.create_org(org("qiaokou", OrgKind::District, None, None)).await.is_err(), "duplicate org");
    let cam = reg.prepare_device(device("42010401001320000001", Protocol::Gb28181, None)).expect("valid");
    assert_eq!(cam.org_id.as_deref(), Some("gutian"), "placed by the longest prefix");
    let mut batch = vec![cam];
    for i in 0..1200 {
        batch.push(
            reg.prepare_device(device(&format!("ext-{i:04}"), Protocol::External, Some("qiaokou"))).expect("valid"),
        );
    }
    let (written, updated) = reg.upsert_devices(batch.clone(), |_| {}).await.expect("upsert");
    assert_eq!((written.len(), updated), (1201, 0));
    let (_, updated) = reg.upsert_devices(batch, |_| {}).await.expect("re-upsert");
    assert_eq!(updated, 1201);
    reg.update_device("ext-0001", DevicePatch { maintenance: Some(true), enabled: Some(false), ..Default::default() })
        .await
        .expect("patch");
    reg.replace_channels(
        "42010401001320000001",
        vec![Channel {
            id: "42010401001310000001".into(),
            name: "通道 1".into(),
            status_on: true,
            attrs: Default::default(),
        }],
    )
    .await
    .expect("channels");
    reg.delete_device("ext-0002").await.expect("delete");
    assert!(reg.delete_org("qiaokou").await.is_err(), "org with devices and children");

    // A second load sees exactly what was written.
    let again = Registry::load(db.clone(), AdmissionConfig::default()).await.expect("reload");
    {
        let c = again.read();
        assert_eq!((c.org_count(), c.device_count()), (2, 1200));
        let d = c.device("ext-0001").expect("ext-0001");
        assert!(d.maintenance && !d.enabled);
        assert_eq!(d.password.as_deref(), Some("secret"));
        assert_eq!(d.attrs["ip"], "10.0.0.1");
        assert_eq!(c.device("42010401001320000001").expect("cam").name, "设备 42010401001320000001");
        assert_eq!(c.channels("42010401001320000001").expect("channels")[0].name, "通道 1");
        assert!(c.device("ext-0002").is_none());
    }
    db.close().await;
}
on_both_backends!(registry_writes_survive_a_reload, registry_round_trip);

async fn upsert_is_all_or_nothing(db: Db) {
    let reg = Registry::load(db.clone(), AdmissionConfig::default()).await.expect("load");
    reg.create_org(org("d", OrgKind::District, None, None)).await.expect("org");
    // A row whose org does not exist passes no check here, so the database refuses it
    // (foreign key) and the whole batch must be rolled back.
    let mut batch: Vec<NewDevice> =
        (0..700).map(|i| device(&format!("ok-{i}"), Protocol::External, Some("d"))).collect();
    batch.push(device("orphan", Protocol::External, Some("missing-org")));
    assert!(reg.upsert_devices(batch, |_| {}).await.is_err());
    let again = Registry::load(db.clone(), AdmissionConfig::default()).await.expect("reload");
    assert_eq!(again.read().device_count(), 0, "half a batch was written");
    db.close().await;
}
on_both_backends!(a_failed_upsert_writes_nothing, upsert_is_all_or_nothing);

fn tr(id: &str, at: i64, from: State, to: State, reason: Reason) -> Transition {
    Transition {
        device: 0,
        device_id: Arc::from(id),
        protocol: "external",
        at,
        from,
        to,
        reason,
        detail: Some("why".into()),
    }
}

async fn presence_history(db: Db) {
    let p = &db.pool;
    let transitions = vec![
        tr("a", 1_000, State::Unknown, State::Online, Reason::Alive),
        tr("a", 5_000, State::Online, State::Offline, Reason::TtlExpired),
        tr("b", 2_000, State::Unknown, State::Offline, Reason::Dead),
        tr("a", 9_000, State::Offline, State::Online, Reason::Alive),
    ];
    let states = vec![StateRow {
        device_id: Arc::from("a"),
        state: State::Online,
        since: 9_000,
        last_seen: Some(9_000),
        reason: Reason::Alive,
        detail: None,
        alive_until: Some(99_000),
        alive_kind: Some(AliveKind::Ttl),
        registered_until: None,
    }];
    pstore::write_batch(&db, &transitions, &states, Some(9_500), 9_500).await.expect("write");
    pstore::write_batch(&db, &[], &states, Some(10_000), 10_000).await.expect("upsert state");
    assert_eq!(pstore::last_checkpoint(p).await.expect("checkpoint"), Some(10_000));
    let loaded = pstore::load_states(&db).await.expect("states");
    assert_eq!(loaded, states);
    let h = pstore::history(p, "a", 0, 100_000, 100).await.expect("history");
    assert_eq!(
        h.iter().map(|r| (r.at, r.to)).collect::<Vec<_>>(),
        vec![(1_000, State::Online), (5_000, State::Offline), (9_000, State::Online)]
    );
    let mut at = pstore::states_at(p, 6_000).await.expect("as of");
    at.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        at,
        vec![("a".into(), State::Offline, "ttl_expired".into()), ("b".into(), State::Offline, "dead".into())]
    );
    let between = pstore::transitions_between(p, 2_000, 9_000).await.expect("between");
    assert_eq!(between.len(), 2);
    assert_eq!(pstore::prune(p, 2_000).await.expect("prune"), 1);
    db.close().await;
}
on_both_backends!(presence_batches_history_and_states_as_of, presence_history);

async fn rate_samples(db: Db) {
    use vigil::rate::sampling::{insert_samples, samples};
    use vigil::rate::RateIndex;
    let reg = Registry::load(db.clone(), AdmissionConfig::default()).await.expect("load");
    reg.create_org(org("d", OrgKind::District, None, None)).await.expect("org");
    reg.upsert_devices(
        vec![device("x", Protocol::External, Some("d")), device("y", Protocol::External, Some("d"))],
        |_| {},
    )
    .await
    .expect("devices");
    let index = RateIndex::build(&reg.read(), false);
    let x = reg.read().device("x").expect("x").key as usize;
    let mut states = vec![0u8; 2];
    states[x] = State::Online as u8;
    let rollup = index.rollup(&states, &Default::default(), 3_600_000);
    let rows = insert_samples(&db.pool, 3_600_000, &index, &rollup).await.expect("insert");
    assert_eq!(rows, 4, "gateway all+camera, org d all+camera");
    // Sampling the same instant twice (a restart at the hour) replaces, not duplicates.
    insert_samples(&db.pool, 3_600_000, &index, &rollup).await.expect("insert again");
    let s = samples(&db.pool, "d", "camera", 0, 10_000_000).await.expect("read");
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].online, s[0].total), (1, 2));
    db.close().await;
}
on_both_backends!(rate_samples_are_stored_once_per_instant, rate_samples);

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let err = Db::connect("postgres://postgres@127.0.0.1:1/none", None).await.expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), vigil::error::ErrorKind::Unavailable);
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let _unused = TestDb::create; // the helper is shared with the macro above
}

/// Arbitrary bytes as a CSV import never panic, and whatever is refused names a line.
#[tokio::test]
async fn csv_import_never_panics_on_arbitrary_input() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::connect(&format!("sqlite://{}/vigil.db", dir.path().display()), None).await.expect("sqlite");
    let reg = Registry::load(db, AdmissionConfig::default()).await.expect("load");
    reg.create_org(org("d", OrgKind::District, None, Some("420104"))).await.expect("org");
    let mut runner = TestRunner::new(Config { cases: 256, ..Config::default() });
    let header = "id,name,kind,protocol,org_id,rtsp_url,profile\n";
    let cells = prop::collection::vec(
        prop_oneof![
            Just("camera".to_string()),
            Just("gb28181".to_string()),
            Just("d".to_string()),
            Just("\"a,b\"".to_string()),
            Just("42010400001320000001".to_string()),
            Just("rtsp://u:p@h/1".to_string()),
            "[ -~]{0,12}",
            "\\PC{0,6}",
        ],
        0..30,
    );
    runner
        .run(&(cells, prop::collection::vec(any::<u8>(), 0..64)), |(cells, noise)| {
            let mut body = header.as_bytes().to_vec();
            for (i, c) in cells.iter().enumerate() {
                body.extend_from_slice(c.as_bytes());
                body.push(if i % 7 == 6 { b'\n' } else { b',' });
            }
            body.extend_from_slice(&noise);
            match vigil::registry::import::parse(&reg, &body) {
                Ok(devices) => prop_assert!(devices.iter().all(|d| !d.id.is_empty())),
                Err(e) => prop_assert!(!e.rows.is_empty() || !e.message.is_empty()),
            }
            Ok(())
        })
        .expect("no input panics the importer");
}

/// Concurrent read-modify-writes of one device (sources merging what they learned while an
/// operator patches it) keep every change.
async fn concurrent_merges(db: Db) {
    let reg = Registry::load(db.clone(), AdmissionConfig::default()).await.expect("load");
    let d = reg.prepare_device(device("42010401001320000009", Protocol::Gb28181, None)).expect("valid");
    reg.upsert_devices(vec![d], |_| {}).await.expect("upsert");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let reg = reg.clone();
        tasks.push(tokio::spawn(async move {
            let mut attrs = serde_json::Map::new();
            attrs.insert(format!("k{i}"), serde_json::json!(i));
            reg.merge_attrs("42010401001320000009", attrs).await.expect("merge");
        }));
    }
    let patch = reg.clone();
    tasks.push(tokio::spawn(async move {
        patch
            .update_device("42010401001320000009", DevicePatch { maintenance: Some(true), ..Default::default() })
            .await
            .expect("patch");
    }));
    for t in tasks {
        t.await.expect("task");
    }
    // A batch: one device twice (both kept), one unchanged (not written), one unknown (skipped).
    let a = |k: &str, v: i64| {
        let mut m = serde_json::Map::new();
        m.insert(k.into(), serde_json::json!(v));
        m
    };
    let id = "42010401001320000009".to_owned();
    let batch = vec![(id.clone(), a("x", 1)), (id.clone(), a("y", 2)), ("nobody".into(), a("x", 1))];
    assert_eq!(reg.merge_attrs_many(batch).await.expect("batch"), 1);
    assert_eq!(reg.merge_attrs_many(vec![(id.clone(), a("x", 1))]).await.expect("batch"), 0, "nothing changed");
    let again = Registry::load(db.clone(), AdmissionConfig::default()).await.expect("reload");
    let d = again.read().device("42010401001320000009").expect("device");
    assert!(d.maintenance);
    assert_eq!((0..20).filter(|i| d.attrs.contains_key(&format!("k{i}"))).count(), 20, "{:?}", d.attrs);
    assert_eq!((d.attrs["x"].as_i64(), d.attrs["y"].as_i64()), (Some(1), Some(2)));
    db.close().await;
}
on_both_backends!(concurrent_merges_lose_nothing, concurrent_merges);

/// The event log: a batch commit, duplicates by dedup key stored once, filters and paging.
async fn event_log(db: Db) {
    use vigil::event::{AlarmBody, Event, EventBody, TimeSource};
    let alarm = |n: i64, dedup: &str| Event {
        id: Event::new_id(),
        dedup_key: dedup.into(),
        source: "gb28181".into(),
        device_id: if n % 2 == 0 { "cam-a".into() } else { "cam-b".into() },
        org_id: Some("gutian".into()),
        occurred_at: 1_000 * n,
        occurred_at_raw: None,
        time_source: TimeSource::Device,
        received_at: 1_000 * n + 5,
        seq: Some(n),
        offline_replay: false,
        profile: None,
        media: vec![],
        body: EventBody::Alarm(AlarmBody { description: format!("告警 {n}"), ..Default::default() }),
    };
    use vigil::events::store::Row;
    let batch: Vec<Row> = (1..=6).map(|n| Row::new(alarm(n, &format!("k{n}")), None)).collect();
    let routes =
        std::sync::Arc::new(vigil::outbox::Routes(vec![("district".into(), vec![vigil::event::EventKind::Alarm])]));
    let mut writer = vigil::events::store::Writer::new(&db);
    let (_, new) = writer.insert(&db, batch, |b| b.iter().collect(), &routes, 0).await;
    assert_eq!(new.expect("insert"), vec![true; 6]);
    // The same records again (new ids, same dedup keys) and one new: only the new one is written.
    let again: Vec<Row> =
        vec![Row::new(alarm(1, "k1"), None), Row::new(alarm(7, "k7"), None), Row::new(alarm(7, "k7"), None)];
    let (_, new) = writer.insert(&db, again, |b| b.iter().collect(), &routes, 0).await;
    assert_eq!(new.expect("insert again"), vec![false, true, false], "k1 stored before; k7 new once");
    drop(writer);
    // One delivery row per new event, none for the duplicates.
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT d.event_seq FROM deliveries d JOIN events e ON e.seq = d.event_seq ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .expect("deliveries");
    assert_eq!(rows.len(), 7, "{rows:?}");

    let mut f = vigil::events::Filter { limit: 3, ..Default::default() };
    let page = vigil::events::store::list(&db, &f).await.expect("list");
    let seqs: Vec<Option<i64>> = page.iter().map(|(_, e)| e.seq).collect();
    assert_eq!(seqs, vec![Some(7), Some(6), Some(5)], "newest first");
    let last = page.last().expect("a page");
    f.before = Some((last.1.occurred_at, last.0));
    let page2 = vigil::events::store::list(&db, &f).await.expect("page 2");
    assert_eq!(page2.iter().map(|(_, e)| e.seq).collect::<Vec<_>>(), vec![Some(4), Some(3), Some(2)]);
    let f = vigil::events::Filter {
        device: Some("cam-a".into()),
        since: Some(2_000),
        until: Some(6_000),
        orgs: Some(vec!["gutian".into()]),
        kind: Some("alarm".into()),
        limit: 100,
        ..Default::default()
    };
    let got = vigil::events::store::list(&db, &f).await.expect("filtered");
    assert_eq!(got.iter().map(|(_, e)| e.seq).collect::<Vec<_>>(), vec![Some(4), Some(2)]);
    let one = vigil::events::store::get(&db, &got[0].1.id).await.expect("get").expect("found");
    assert_eq!(one, got[0].1);

    // A new writer (as after a restart or a kill -9, with the last one's unfolded tail known
    // only to the database) still knows every record, and the device view reads the folded
    // events and the new tail together, page by page across the boundary.
    let mut writer = vigil::events::store::Writer::new(&db);
    let next: Vec<Row> =
        vec![Row::new(alarm(3, "k3"), None), Row::new(alarm(8, "k8"), None), Row::new(alarm(10, "k10"), None)];
    let (_, new) = writer.insert(&db, next, |b| b.iter().collect(), &routes, 0).await;
    assert_eq!(new.expect("insert after reopening"), vec![false, true, true], "k3 stored before");
    let cam_a =
        |limit, before| vigil::events::Filter { device: Some("cam-a".into()), limit, before, ..Default::default() };
    let seqs = |page: &[(i64, vigil::event::Event)]| page.iter().map(|(_, e)| e.seq).collect::<Vec<_>>();
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = vigil::events::store::list(&db, &cam_a(2, before)).await.expect("device page");
        let Some(last) = page.last() else { break };
        before = Some((last.1.occurred_at, last.0));
        pages.push(seqs(&page));
    }
    assert_eq!(pages, vec![vec![Some(10), Some(8)], vec![Some(6), Some(4)], vec![Some(2)]]);
    // Folded: the keys are found in `event_keys`, the events through `event_devices`.
    let folded = writer.fold().await.expect("fold");
    let own_file = db.backend == vigil::db::Backend::Sqlite && db.path.is_some();
    assert_eq!(folded, if own_file { 2 } else { 0 }, "the pooled writer folds in every commit");
    let again: Vec<Row> = vec![Row::new(alarm(8, "k8"), None), Row::new(alarm(12, "k12"), None)];
    let (_, new) = writer.insert(&db, again, |b| b.iter().collect(), &routes, 0).await;
    assert_eq!(new.expect("insert after a fold"), vec![false, true], "k8 folded before");
    let all = vigil::events::store::list(&db, &cam_a(100, None)).await.expect("device view");
    assert_eq!(seqs(&all), [12, 10, 8, 6, 4, 2].map(Some));
    let b =
        vigil::events::Filter { device: Some("cam-b".into()), since: Some(3_000), limit: 100, ..Default::default() };
    let got = vigil::events::store::list(&db, &b).await.expect("cam-b");
    assert_eq!(seqs(&got), [7, 5, 3].map(Some));
    drop(writer);
    db.close().await;
}
on_both_backends!(events_are_stored_once_and_listed, event_log);

/// A burst from several devices, folded from the writer's memory in multi-row statements
/// (and their remainder): every record is then a duplicate, and each device's view lists
/// exactly its own events, newest first.
async fn fold_of_a_burst(db: Db) {
    use vigil::event::{AlarmBody, Event, EventBody, TimeSource};
    use vigil::events::store::{list, Row, Writer};
    const DEVICES: i64 = 7;
    const EVENTS: i64 = 1_001;
    let alarm = |n: i64| Event {
        id: Event::new_id(),
        dedup_key: format!("alarm:dev-{}:{n}", n % DEVICES),
        source: "gb28181".into(),
        device_id: format!("dev-{}", n % DEVICES),
        org_id: None,
        // Out of arrival order within a device now and then (an offline cache replayed).
        occurred_at: if n % 10 == 0 { 1_000 * n - 5_500 } else { 1_000 * n },
        occurred_at_raw: None,
        time_source: TimeSource::Device,
        received_at: 1_000 * n,
        seq: Some(n),
        offline_replay: false,
        profile: None,
        media: vec![],
        body: EventBody::Alarm(AlarmBody::default()),
    };
    let routes = std::sync::Arc::new(vigil::outbox::Routes::default());
    let mut writer = Writer::new(&db);
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<Row> = chunk.iter().map(|&n| Row::new(alarm(n), None)).collect();
        let (_, new) = writer.insert(&db, batch, |b| b.iter().collect(), &routes, 0).await;
        assert!(new.expect("insert").iter().all(|n| *n));
    }
    writer.fold().await.expect("fold");
    if db.backend == vigil::db::Backend::Sqlite {
        let (keys, entries): (i64, i64) =
            sqlx::query_as("SELECT (SELECT COUNT(*) FROM event_keys), (SELECT COUNT(*) FROM event_devices)")
                .fetch_one(&db.pool)
                .await
                .expect("counts");
        assert_eq!((keys, entries), (EVENTS, EVENTS));
    }
    let again: Vec<Row> = (0..EVENTS).map(|n| Row::new(alarm(n), None)).collect();
    let (_, new) = writer.insert(&db, again, |b| b.iter().collect(), &routes, 0).await;
    assert!(new.expect("insert again").iter().all(|n| !*n), "every record was stored before");
    for d in 0..DEVICES {
        let f = vigil::events::Filter { device: Some(format!("dev-{d}")), limit: 1_000, ..Default::default() };
        let got = list(&db, &f).await.expect("device view");
        let mut want: Vec<(i64, Option<i64>)> =
            (0..EVENTS).filter(|n| n % DEVICES == d).map(|n| (alarm(n).occurred_at, Some(n))).collect();
        want.sort_by(|a, b| b.cmp(a));
        assert_eq!(got.iter().map(|(_, e)| (e.occurred_at, e.seq)).collect::<Vec<_>>(), want, "dev-{d}");
    }
    drop(writer);
    db.close().await;
}
on_both_backends!(a_folded_burst_keeps_every_key_and_device_entry, fold_of_a_burst);

/// An in-memory SQLite database: no file for the writer's own connection, so the pooled
/// writer commits and folds in one transaction.
#[tokio::test]
async fn events_are_stored_once_and_listed_in_memory() {
    let url = format!("sqlite:file:vigil-events-{}?mode=memory&cache=shared", std::process::id());
    event_log(Db::connect(&url, Some(3)).await.expect("in-memory sqlite")).await;
}
