//! The loaded profiles: reading `device-profiles/*.toml` (a profile that does not compile
//! or fails its own vectors is refused, with the reason), and choosing the profile for a
//! message by its route: the profile already assigned to the device when it is one of the
//! candidates, else the most specific route.

use std::path::Path;
use std::sync::Arc;

use super::route::Pattern;
use super::{compile, run_vectors, spec, Ingress, Profile};

/// The profiles in use and their routes, most specific first.
#[derive(Debug, Default, Clone)]
pub struct ProfileSet {
    profiles: Vec<Arc<Profile>>,
    /// (pattern, profile index, is the last-will topic)
    mqtt: Vec<(Pattern, usize, bool)>,
    http: Vec<(Pattern, usize)>,
}

/// A profile chosen for one message.
#[derive(Debug, Clone)]
pub struct Selected {
    pub profile: Arc<Profile>,
    pub captures: Vec<(String, String)>,
    /// The message is the device's last will (or its online announcement) on the
    /// profile's `liveness.lwt` topic.
    pub lwt: bool,
}

/// What loading a directory found.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub set: ProfileSet,
    /// (file, problem) for every refused profile.
    pub problems: Vec<(String, String)>,
}

impl ProfileSet {
    pub fn new(profiles: Vec<Profile>) -> ProfileSet {
        let profiles: Vec<Arc<Profile>> = profiles.into_iter().map(Arc::new).collect();
        let mut mqtt = Vec::new();
        let mut http = Vec::new();
        for (i, p) in profiles.iter().enumerate() {
            for r in &p.routes {
                match r.ingress {
                    Ingress::Mqtt => mqtt.push((r.pattern.clone(), i, false)),
                    Ingress::Http => http.push((r.pattern.clone(), i)),
                }
            }
            if let Some(l) = &p.liveness.lwt {
                mqtt.push((l.pattern.clone(), i, true));
            }
        }
        mqtt.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.specificity()));
        http.sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        ProfileSet { profiles, mqtt, http }
    }

    /// Reads every `*.toml` in `dir`. A missing directory is an empty set with a problem.
    pub fn load_dir(dir: &Path) -> LoadReport {
        let mut report = LoadReport::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                report.problems.push((dir.display().to_string(), format!("cannot read the profiles directory: {e}")));
                return report;
            }
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut good: Vec<Profile> = Vec::new();
        for f in files {
            let name = f.display().to_string();
            match load_file(&f) {
                Ok(p) => {
                    if let Some(other) = good.iter().find(|g| g.name == p.name) {
                        report
                            .problems
                            .push((name, format!("profile {:?} is defined twice (also as {})", p.name, other.id)));
                    } else {
                        good.push(p);
                    }
                }
                Err(m) => report.problems.push((name, m)),
            }
        }
        report.set = ProfileSet::new(good);
        report
    }

    pub fn profiles(&self) -> &[Arc<Profile>] {
        &self.profiles
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// By name (`vzenith.ivs-plate`) or id (`vzenith.ivs-plate@3`: the version is ignored, so
    /// devices follow a profile's upgrades).
    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        let name = name.split('@').next().unwrap_or(name);
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Every MQTT route (last-will topics included) with its profile.
    pub fn mqtt_routes(&self) -> impl Iterator<Item = (&super::route::Pattern, &Arc<Profile>)> {
        self.mqtt.iter().map(|(p, i, _)| (p, &self.profiles[*i]))
    }

    /// MQTT subscription filters, without duplicates.
    pub fn mqtt_filters(&self) -> Vec<String> {
        let mut f: Vec<String> = self.mqtt.iter().map(|(p, _, _)| p.filter()).collect();
        f.sort();
        f.dedup();
        f
    }

    /// The profile for a message on MQTT `topic`; `assigned` is the device's profile when the
    /// caller already knows the device.
    pub fn select_mqtt(&self, topic: &str, assigned: Option<&str>) -> Option<Selected> {
        let mut first: Option<Selected> = None;
        for (pat, i, lwt) in &self.mqtt {
            if let Some(captures) = pat.matches(topic) {
                let s = Selected { profile: self.profiles[*i].clone(), captures, lwt: *lwt };
                if assigned.is_some_and(|a| self.get(a).is_some_and(|p| p.name == s.profile.name)) {
                    return Some(s);
                }
                first.get_or_insert(s);
            }
        }
        first
    }

    /// The profile for an HTTP push to `path`.
    pub fn select_http(&self, path: &str) -> Option<Selected> {
        self.http.iter().find_map(|(pat, i)| {
            pat.matches(path).map(|captures| Selected { profile: self.profiles[*i].clone(), captures, lwt: false })
        })
    }

    /// The profile whose model globs fit `model`, to suggest to the operator.
    pub fn suggest(&self, model: &str) -> Option<&Arc<Profile>> {
        self.profiles.iter().find(|p| p.fits_model(model))
    }
}

/// Reads, compiles and checks one profile file.
pub fn load_file(path: &Path) -> Result<Profile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let file: spec::ProfileFile = toml::from_str(&text).map_err(|e| e.to_string())?;
    let p = compile(file).map_err(|e| e.to_string())?;
    if p.tests.is_empty() {
        return Err(format!("profile {} has no [[tests]]: every profile ships with test vectors", p.id));
    }
    let failures = run_vectors(&p);
    if !failures.is_empty() {
        return Err(failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped profile compiles and passes its own vectors (what `check-config` and
    /// start-up also check).
    #[test]
    fn shipped_profiles_pass_their_vectors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("device-profiles");
        let report = ProfileSet::load_dir(&dir);
        let problems: Vec<String> = report.problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        assert!(problems.is_empty(), "{}", problems.join("\n\n"));
        let names: Vec<&str> = report.set.profiles().iter().map(|p| p.name.as_str()).collect();
        for want in [
            "hikvision.acs-event",
            "vzenith.ivs-plate",
            "gat1400.face",
            "gat1400.motor-vehicle",
            "hikvision.alarm-panel",
            "generic.json",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let filters = report.set.mqtt_filters();
        assert!(filters.contains(&"device/+/message/up/+".to_owned()), "{filters:?}");
        assert!(filters.contains(&"hik/+/+/status".to_owned()), "last-will topics are subscribed: {filters:?}");
        let sel = report.set.select_mqtt("hik/XQ001/FX1/status", None).expect("lwt route");
        assert!(sel.lwt);
        assert_eq!(
            report.set.select_http("/VIID/Faces").map(|s| s.profile.name.clone()).as_deref(),
            Some("gat1400.face")
        );
        assert_eq!(report.set.suggest("DS-K1T341M").map(|p| p.name.as_str()), Some("hikvision.acs-event"));
    }

    /// A profile whose vector fails is refused with the test named and the difference shown.
    #[test]
    fn a_failing_vector_refuses_the_profile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("device-profiles/generic-json.toml");
        let text = std::fs::read_to_string(src)
            .expect("read")
            .replace(r#"dedup_key = "access:AC-0001:7|1716001203412""#, r#"dedup_key = "access:AC-0001:8""#);
        std::fs::write(dir.path().join("generic-json.toml"), text).expect("write");
        let report = ProfileSet::load_dir(dir.path());
        assert!(report.set.is_empty());
        let (_, msg) = &report.problems[0];
        assert!(msg.contains("access with an inline image") && msg.contains("dedup_key"), "{msg}");
    }
}
