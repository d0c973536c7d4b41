//! `vigil mqtt-acl`: the same rules the embedded broker's gate enforces, written as
//! Mosquitto's `password_file` and `acl_file` for sites that run their own broker. Every MQTT
//! device of the registry logs in with its id and its password (its own, else
//! `mqtt.device_password`), hashed as `mosquitto_passwd` does (PBKDF2-SHA512, 101 rounds,
//! `$7$`); each profile route whose identity key is a topic level becomes a `pattern write`
//! line with `%u` in that level, so a device writes only its own topics (last wills
//! included); only vigil's own user (`mqtt.username`) reads. Pure: the caller writes the files.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;

use crate::profiles::ProfileSet;
use crate::registry::{Admission, Device, Protocol};

/// Mosquitto's files, and what they hold.
#[derive(Debug, Clone)]
pub struct Files {
    pub passwords: String,
    pub acl: String,
    pub devices: usize,
    /// Profiles whose routes cannot be held to one device (their key is not a topic level).
    pub unrestricted: Vec<String>,
}

/// A `mosquitto_passwd` line's hash of `password`: `$7$101$<salt>$<PBKDF2-SHA512>`.
pub fn hash(password: &str, salt: &[u8; 12]) -> String {
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, 101, &mut out);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("$7$101${}${}", b64.encode(salt), b64.encode(out))
}

fn salt() -> [u8; 12] {
    let mut s = [0u8; 12];
    s.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..12]);
    s
}

/// The capture a profile's identity key is, if it is exactly one topic level.
fn key_capture(pattern: &crate::profiles::route::Pattern, p: &crate::profiles::Profile) -> Option<String> {
    let marked: Vec<(String, String)> = pattern.captures().map(|n| (n.to_owned(), format!("\u{1}{n}\u{1}"))).collect();
    let key = crate::profiles::identity_from_route(p, &marked)?;
    let name = key.strip_prefix('\u{1}')?.strip_suffix('\u{1}')?;
    pattern.captures().any(|n| n == name).then(|| name.to_owned())
}

/// Mosquitto's files for the registry's MQTT devices (`vigil`: vigil's own login, which
/// reads everything the profiles route).
pub fn mosquitto(
    devices: &[Arc<Device>],
    profiles: &ProfileSet,
    device_password: &str,
    vigil: Option<(&str, &str)>,
) -> Files {
    let mut passwords = String::new();
    let mut acl = String::from(
        "# Written by `vigil mqtt-acl`: each device writes only the topics its profile maps to its\n\
         # own id (%u); no device reads; vigil's own user reads the routes.\n",
    );
    let mut count = 0;
    for d in devices.iter().filter(|d| d.protocol == Protocol::Mqtt && d.enabled && d.admission != Admission::Rejected)
    {
        if d.id.contains([':', '\n', '\r']) {
            continue; // not representable in a password file
        }
        let pw = d.password.as_deref().unwrap_or(device_password);
        let _ = writeln!(passwords, "{}:{}", d.id, hash(pw, &salt()));
        count += 1;
    }
    let mut lines: Vec<String> = Vec::new();
    let mut unrestricted = Vec::new();
    for (pattern, p) in profiles.mqtt_routes() {
        match key_capture(pattern, p) {
            Some(cap) => lines.push(format!("pattern write {}", pattern.filter_with(&cap, "%u"))),
            None => unrestricted.push(format!("{} ({})", p.id, pattern.text())),
        }
    }
    lines.sort();
    lines.dedup();
    for l in &lines {
        let _ = writeln!(acl, "{l}");
    }
    if let Some((user, pw)) = vigil {
        let _ = writeln!(passwords, "{user}:{}", hash(pw, &salt()));
        let _ = writeln!(acl, "\nuser {user}");
        let mut filters = profiles.mqtt_filters();
        filters.dedup();
        for f in filters {
            let _ = writeln!(acl, "topic read {f}");
        }
    }
    Files { passwords, acl, devices: count, unrestricted }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout `mosquitto_passwd` writes (that Mosquitto takes it is the integration
    /// test's to show, against the real broker).
    #[test]
    fn the_hash_has_mosquitto_passwds_layout() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt: [u8; 12] = b64.decode("c2FsdHNhbHRzYWx0").expect("b64").try_into().expect("12 bytes");
        let h = hash("12345678", &salt);
        assert!(h.starts_with("$7$101$c2FsdHNhbHRzYWx0$"), "{h}");
        assert_eq!(h.rsplit('$').next().map(|x| b64.decode(x).map(|v| v.len())), Some(Ok(64)));
    }
}
