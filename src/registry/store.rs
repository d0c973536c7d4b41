//! SQL for orgs, devices and channels. One query text serves SQLite and PostgreSQL
//! (`$n` placeholders, BIGINT times, 0/1 flags). Only the `Registry` handle calls it.

use sqlx::AnyPool;
use sqlx::Row;

use super::{Admission, Channel, Device, DeviceKind, NewDevice, Org, OrgKind, Protocol};
use crate::clock::Millis;
use crate::db::{insert_json_rows, Col, Db};

fn decode_err(column: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("column {column}: unexpected value {value:?}").into())
}

fn attrs_from(text: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(text).unwrap_or_default()
}

pub async fn load_orgs(pool: &AnyPool) -> Result<Vec<Org>, sqlx::Error> {
    // Parents first, so the cache can link children as it goes.
    let rows = sqlx::query("SELECT id, name, kind, parent_id, gb_prefix FROM orgs ORDER BY created_at, id")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            let kind: String = r.try_get("kind")?;
            Ok(Org {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                kind: OrgKind::parse(&kind).ok_or_else(|| decode_err("orgs.kind", &kind))?,
                parent_id: r.try_get("parent_id")?,
                gb_prefix: r.try_get("gb_prefix")?,
            })
        })
        .collect()
}

pub async fn insert_org(pool: &AnyPool, o: &Org, now: Millis) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO orgs (id, name, kind, parent_id, gb_prefix, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&o.id)
        .bind(&o.name)
        .bind(o.kind.as_str())
        .bind(&o.parent_id)
        .bind(&o.gb_prefix)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn update_org(pool: &AnyPool, o: &Org) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orgs SET name = $2, kind = $3, parent_id = $4, gb_prefix = $5 WHERE id = $1")
        .bind(&o.id)
        .bind(&o.name)
        .bind(o.kind.as_str())
        .bind(&o.parent_id)
        .bind(&o.gb_prefix)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn delete_org(pool: &AnyPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM orgs WHERE id = $1").bind(id).execute(pool).await?;
    Ok(())
}

type DeviceRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    String,
    String,
    i64,
);

pub async fn load_devices(db: &Db) -> Result<Vec<(NewDevice, bool, bool, Millis)>, sqlx::Error> {
    crate::db::load_json_pages(
        db,
        "devices",
        "id",
        "id, name, kind, protocol, org_id, profile, rtsp_url, password, enabled, maintenance, admission, attrs, created_at",
        |(id, name, kind, protocol, org_id, profile, rtsp_url, password, enabled, maintenance, admission, attrs, created_at): DeviceRow| {
            Ok((
                NewDevice {
                    id,
                    name,
                    kind: DeviceKind::parse(&kind).ok_or_else(|| decode_err("devices.kind", &kind))?,
                    protocol: Protocol::parse(&protocol).ok_or_else(|| decode_err("devices.protocol", &protocol))?,
                    org_id,
                    profile,
                    rtsp_url,
                    password,
                    admission: Admission::parse(&admission).ok_or_else(|| decode_err("devices.admission", &admission))?,
                    attrs: attrs_from(&attrs),
                },
                enabled != 0,
                maintenance != 0,
                created_at,
            ))
        },
    )
    .await
}

const DEVICE_COLUMNS: [(&str, Col); 12] = [
    ("id", Col::Text),
    ("name", Col::Text),
    ("kind", Col::Text),
    ("protocol", Col::Text),
    ("org_id", Col::Text),
    ("profile", Col::Text),
    ("rtsp_url", Col::Text),
    ("password", Col::Text),
    ("admission", Col::Text),
    ("attrs", Col::Text),
    ("created_at", Col::BigInt),
    ("updated_at", Col::BigInt),
];

const DEVICE_UPSERT: &str = "ON CONFLICT (id) DO UPDATE SET name = excluded.name, kind = excluded.kind, \
     protocol = excluded.protocol, org_id = excluded.org_id, profile = excluded.profile, rtsp_url = excluded.rtsp_url, \
     password = COALESCE(excluded.password, devices.password), admission = excluded.admission, \
     attrs = excluded.attrs, updated_at = excluded.updated_at";

/// Rows per statement of a bulk device write (one JSON parameter each).
const DEVICES_PER_INSERT: usize = 5_000;

/// Inserts or replaces devices in one transaction (all or none); flags of existing
/// devices are kept.
pub async fn upsert_devices(
    db: &Db,
    devices: &[NewDevice],
    now: Millis,
    mut progress: impl FnMut(usize),
) -> Result<(), sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    let mut done = 0;
    for chunk in devices.chunks(DEVICES_PER_INSERT) {
        let rows: Vec<serde_json::Value> = chunk
            .iter()
            .map(|d| {
                serde_json::json!([
                    d.id,
                    d.name,
                    d.kind.as_str(),
                    d.protocol.as_str(),
                    d.org_id,
                    d.profile,
                    d.rtsp_url,
                    d.password,
                    d.admission.as_str(),
                    serde_json::Value::Object(d.attrs.clone()).to_string(),
                    now,
                    now
                ])
            })
            .collect();
        let text = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into());
        insert_json_rows(&mut tx, db.backend, "devices", &DEVICE_COLUMNS, text, DEVICE_UPSERT).await?;
        done += chunk.len();
        progress(done);
    }
    tx.commit().await
}

pub async fn update_device(pool: &AnyPool, d: &Device, now: Millis) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE devices SET name = $2, org_id = $3, enabled = $4, maintenance = $5, admission = $6, updated_at = $7, \
         password = $8 WHERE id = $1",
    )
    .bind(&d.id)
    .bind(&d.name)
    .bind(&d.org_id)
    .bind(i64::from(d.enabled))
    .bind(i64::from(d.maintenance))
    .bind(d.admission.as_str())
    .bind(now)
    .bind(&d.password)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn update_attrs(pool: &AnyPool, id: &str, attrs: &str, now: Millis) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE devices SET attrs = $2, updated_at = $3 WHERE id = $1")
        .bind(id)
        .bind(attrs)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(())
}

/// Writes many devices' attributes in one statement: `rows` is a JSON array of
/// `[id, attrs-json]`.
pub async fn update_attrs_many(db: &crate::db::Db, rows: &str, now: Millis) -> Result<(), sqlx::Error> {
    let sql = match db.backend {
        crate::db::Backend::Sqlite => {
            "UPDATE devices SET attrs = j.attrs, updated_at = $2 \
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS attrs FROM json_each($1)) AS j WHERE devices.id = j.id"
        }
        crate::db::Backend::Postgres => {
            "UPDATE devices SET attrs = j.attrs, updated_at = $2 \
             FROM (SELECT e ->> 0 AS id, e ->> 1 AS attrs FROM json_array_elements($1::json) AS e) AS j WHERE devices.id = j.id"
        }
    };
    sqlx::query(sql).bind(rows).bind(now).execute(&db.pool).await?;
    Ok(())
}

pub async fn delete_device(pool: &AnyPool, id: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM channels WHERE device_id = $1").bind(id).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM presence_state WHERE device_id = $1").bind(id).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM presence_transitions WHERE device_id = $1").bind(id).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM devices WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await
}

pub async fn load_channels(pool: &AnyPool) -> Result<Vec<(String, Channel)>, sqlx::Error> {
    let rows = sqlx::query("SELECT device_id, id, name, status_on, attrs FROM channels ORDER BY device_id, id")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            let status: i64 = r.try_get("status_on")?;
            let attrs: String = r.try_get("attrs")?;
            Ok((
                r.try_get("device_id")?,
                Channel {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    status_on: status != 0,
                    attrs: attrs_from(&attrs),
                },
            ))
        })
        .collect()
}

const CHANNEL_COLUMNS: [(&str, Col); 5] = [
    ("device_id", Col::Text),
    ("id", Col::Text),
    ("name", Col::Text),
    ("status_on", Col::BigInt),
    ("attrs", Col::Text),
];

/// Replaces a device's channels in one transaction (a catalog of 10,000 channels is a few
/// statements: one JSON parameter per 5,000 rows).
pub async fn replace_channels(db: &Db, device_id: &str, channels: &[Channel]) -> Result<(), sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("DELETE FROM channels WHERE device_id = $1").bind(device_id).execute(&mut *tx).await?;
    for chunk in channels.chunks(DEVICES_PER_INSERT) {
        let rows: Vec<serde_json::Value> = chunk
            .iter()
            .map(|c| {
                serde_json::json!([
                    device_id,
                    c.id,
                    c.name,
                    i64::from(c.status_on),
                    serde_json::Value::Object(c.attrs.clone()).to_string()
                ])
            })
            .collect();
        let text = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into());
        insert_json_rows(
            &mut tx,
            db.backend,
            "channels",
            &CHANNEL_COLUMNS,
            text,
            "ON CONFLICT (device_id, id) DO NOTHING",
        )
        .await?;
    }
    tx.commit().await
}
