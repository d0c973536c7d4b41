//! Events as GA/T 1400 objects for an upper view library: a face capture as a `FaceObject`,
//! a vehicle pass as a `MotorVehicleObject`, each under its stored 48-digit id with its
//! pictures inline (`SubImageList`, base64 `Data`). Field names follow GA/T 1400.3 as the
//! public implementations use them (shared reference relay.md §1.5); a district's own
//! interface document decides the optional fields. Pure; the pictures are passed in.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::event::{Event, EventBody};
use crate::protocol::gat1400::codec::local_time;

use super::client::Collection;

/// The GA/T 1400 image type of a picture role: face crop 11, scene 14, plate 02, vehicle 01.
fn image_type(role: &str) -> &'static str {
    match role {
        "face" => "11",
        "plate" => "02",
        "vehicle" => "01",
        _ => "14",
    }
}

/// The collection an event goes to: a standard one, or one of the extension path.
pub fn collection(e: &Event) -> Collection {
    match e.body {
        EventBody::FaceCapture(_) => Collection::Faces,
        EventBody::VehiclePass(_) => Collection::MotorVehicles,
        EventBody::Access(_) => Collection::AccessRecords,
        EventBody::Alarm(_) => Collection::AlarmRecords,
        EventBody::Status { .. } => Collection::DeviceStatuses,
        EventBody::OnlineRate(_) => Collection::OnlineRates,
    }
}

/// A record of the extension path: the envelope in GA/T 1400 style (`RecordID` the event's
/// UUID, device and times as the standard writes them) and the normalized body as vigil
/// stores it under `Data`, with any pictures as a `SubImageList`. The district's interface
/// document names the fields its platform wants; this is the documented default.
pub fn extension_object(
    e: &Event,
    device_id: &str,
    gateway_id: &str,
    tz: &chrono_tz::Tz,
    pictures: &[(String, Vec<u8>)],
) -> Value {
    let time = local_time(e.occurred_at, tz);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut data = serde_json::to_value(&e.body).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut data {
        m.remove("kind");
    }
    let mut o = json!({
        "RecordID": e.id,
        "RecordType": e.kind().as_str(),
        "DeviceID": device_id,
        "SourceDeviceID": e.device_id,
        "GatewayID": gateway_id,
        "EventTime": time,
        "ReceiveTime": local_time(e.received_at, tz),
        "OfflineReplay": u8::from(e.offline_replay),
        "Data": data,
    });
    if let Some(org) = &e.org_id {
        o["OrgID"] = org.clone().into();
    }
    if !pictures.is_empty() {
        let images: Vec<Value> = pictures
            .iter()
            .enumerate()
            .map(|(i, (role, bytes))| {
                json!({"ImageID": format!("{}-{}", e.id, i + 1), "Type": image_type(role), "FileFormat": "Jpeg",
                       "ShotTime": time, "Data": b64.encode(bytes)})
            })
            .collect();
        o["SubImageList"] = json!({ "SubImageInfoObject": images });
    }
    o
}

fn put<T: Into<Value>>(o: &mut Map<String, Value>, k: &str, v: Option<T>) {
    if let Some(v) = v {
        o.insert(k.into(), v.into());
    }
}

/// The object for `e` under `object_id`, sent as from `device_id` (20 digits), with its
/// pictures as (role, bytes). `None` for an event GA/T 1400 has no object for.
pub fn object(
    e: &Event,
    object_id: &str,
    device_id: &str,
    tz: &chrono_tz::Tz,
    pictures: &[(String, Vec<u8>)],
) -> Option<Value> {
    let time = local_time(e.occurred_at, tz);
    let source_id = object_id.get(..41).unwrap_or(object_id);
    let b64 = base64::engine::general_purpose::STANDARD;
    let images: Vec<Value> = pictures
        .iter()
        .enumerate()
        .map(|(i, (role, bytes))| {
            json!({
                "ImageID": format!("{source_id}{:02}", i + 1),
                "EventSort": 10,
                "DeviceID": device_id,
                "Type": image_type(role),
                "FileFormat": "Jpeg",
                "ShotTime": time,
                "Data": b64.encode(bytes),
            })
        })
        .collect();
    let mut o = Map::new();
    match &e.body {
        EventBody::FaceCapture(f) => {
            o.insert("FaceID".into(), object_id.into());
            o.insert("InfoKind".into(), f.info_kind.unwrap_or(1).into());
            o.insert("SourceID".into(), source_id.into());
            o.insert("DeviceID".into(), device_id.into());
            o.insert("FaceAppearTime".into(), time.clone().into());
            o.insert("LocationMarkTime".into(), time.clone().into());
            if let Some(bb) = &f.bbox {
                put(&mut o, "LeftTopX", bb.left);
                put(&mut o, "LeftTopY", bb.top);
                put(&mut o, "RightBtmX", bb.right);
                put(&mut o, "RightBtmY", bb.bottom);
            }
            put(&mut o, "GenderCode", f.gender.clone());
            put(&mut o, "AgeLowerLimit", f.age_low);
            put(&mut o, "AgeUpLimit", f.age_high);
        }
        EventBody::VehiclePass(v) => {
            o.insert("MotorVehicleID".into(), object_id.into());
            o.insert("InfoKind".into(), 1.into());
            o.insert("SourceID".into(), source_id.into());
            o.insert("DeviceID".into(), device_id.into());
            o.insert("PassTime".into(), time.clone().into());
            o.insert("HasPlate".into(), if v.plate.is_some() { "1" } else { "0" }.into());
            put(&mut o, "PlateNo", v.plate.clone());
            put(&mut o, "PlateColor", v.plate_color.clone());
            put(&mut o, "PlateClass", v.plate_class.clone());
            put(&mut o, "LaneNo", v.lane);
            put(&mut o, "Speed", v.speed);
            put(&mut o, "Direction", v.direction.clone());
            put(&mut o, "VehicleColor", v.vehicle_color.clone());
            put(&mut o, "VehicleClass", v.vehicle_class.clone());
            put(&mut o, "TollgateID", v.tollgate_id.clone());
        }
        _ => return None,
    }
    if !images.is_empty() {
        o.insert("SubImageList".into(), json!({ "SubImageInfoObject": images }));
    }
    Some(Value::Object(o))
}
