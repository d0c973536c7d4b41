//! Identifier newtypes parsed at every boundary: `GbCode` (the 20-digit GB/T 28181 code),
//! `DeviceId` and `OrgId`. Pure: no I/O. Imports nothing else of ours but `error`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// Why a string is not an acceptable identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a GB/T 28181 code has 20 digits, this one has {len}: {excerpt:?}")]
    GbLength { len: usize, excerpt: String },
    #[error("a GB/T 28181 code is digits only; character {pos} is {ch:?} in {excerpt:?}")]
    GbNonDigit { pos: usize, ch: char, excerpt: String },
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; at most {max} are allowed")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("{what} may hold letters, digits and - _ . : only; character {pos} is {ch:?}")]
    BadChar { what: &'static str, pos: usize, ch: char },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

fn excerpt(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A 20-digit GB/T 28181 code (Annex D): `CCCCCCCC II TTT N SSSSSS` —
/// centre (admin division), industry, type, network, serial.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GbCode(String);

impl GbCode {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let len = s.chars().count();
        if len != 20 {
            return Err(Error::GbLength { len, excerpt: excerpt(s) });
        }
        if let Some((pos, ch)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_digit()) {
            return Err(Error::GbNonDigit { pos: pos + 1, ch, excerpt: excerpt(s) });
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Digits 1–8: the centre code (GB/T 2260 administrative division, zero-padded).
    pub fn centre(&self) -> &str {
        &self.0[0..8]
    }
    /// Digits 9–10: the industry code (00 social-security road, 01 community, ...).
    pub fn industry(&self) -> &str {
        &self.0[8..10]
    }
    /// Digits 11–13: the type code (118 NVR, 131 camera, 132 IPC, 200 platform, ...).
    pub fn type_code(&self) -> u16 {
        // Three ASCII digits, checked in parse().
        self.0.as_bytes()[10..13].iter().fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'))
    }
    /// Digit 14: the network (0/1 public-security video network, 7 internet, ...).
    pub fn network(&self) -> u8 {
        self.0.as_bytes()[13] - b'0'
    }
    /// Digits 15–20: the serial number.
    pub fn serial(&self) -> &str {
        &self.0[14..20]
    }
    /// The SIP domain: the first 10 digits (centre + industry).
    pub fn sip_domain(&self) -> &str {
        &self.0[0..10]
    }
    /// The device kind the type code names, where it names one we count.
    pub fn device_kind(&self) -> Option<crate::domain::DeviceKind> {
        use crate::domain::DeviceKind as K;
        Some(match self.type_code() {
            111 | 112 | 113 | 118 | 130 => K::Nvr,
            121 => K::VehicleCheckpoint,
            124 | 142 | 143 => K::AccessControl,
            131 | 132 => K::Camera,
            134 => K::Sensor,
            141 => K::Barrier,
            200 | 209 => K::Platform,
            _ => return None,
        })
    }
}

impl fmt::Display for GbCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks an operator- or vendor-chosen identifier (device or org id).
pub fn check_plain_id(what: &'static str, s: &str, max: usize) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::Empty { what });
    }
    let len = s.chars().count();
    if len > max {
        return Err(Error::TooLong { what, len, max });
    }
    if let Some((pos, ch)) =
        s.chars().enumerate().find(|(_, c)| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(Error::BadChar { what, pos: pos + 1, ch });
    }
    Ok(())
}

/// A device id: the GB/T 28181 code where there is one, else the vendor's or operator's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    pub const MAX_LEN: usize = 64;
    pub fn parse(s: &str) -> Result<Self, Error> {
        check_plain_id("device id", s, Self::MAX_LEN)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An org node id (district, street, community, unit), chosen by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrgId(String);

impl OrgId {
    pub const MAX_LEN: usize = 64;
    pub fn parse(s: &str) -> Result<Self, Error> {
        check_plain_id("org id", s, Self::MAX_LEN)?;
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gb_code_splits_into_its_annex_d_fields() {
        let c = GbCode::parse("42010400001320000001").expect("valid code");
        assert_eq!(c.centre(), "42010400");
        assert_eq!(c.industry(), "00");
        assert_eq!(c.type_code(), 132);
        assert_eq!(c.network(), 0);
        assert_eq!(c.serial(), "000001");
        assert_eq!(c.sip_domain(), "4201040000");
        assert_eq!(c.device_kind(), Some(crate::domain::DeviceKind::Camera));
    }

    #[test]
    fn gb_code_errors_say_what_is_wrong() {
        let e = GbCode::parse("4201040000132000001").expect_err("19 digits");
        assert_eq!(e.to_string(), "a GB/T 28181 code has 20 digits, this one has 19: \"4201040000132000001\"");
        let e = GbCode::parse("42010400001320000O01").expect_err("letter O");
        assert!(e.to_string().contains("character 18 is 'O'"), "{e}");
        assert!(GbCode::parse("").is_err());
        // Multi-byte input must not panic on slicing.
        assert!(GbCode::parse("四二〇一〇四〇〇〇〇一三二〇〇〇〇〇〇一").is_err());
    }

    #[test]
    fn plain_ids_reject_spaces_and_slashes() {
        assert!(DeviceId::parse("cam-gutian-001").is_ok());
        assert!(DeviceId::parse("cam 1").is_err());
        assert!(OrgId::parse("a/b").is_err());
        assert!(OrgId::parse(&"x".repeat(65)).is_err());
        assert!(OrgId::parse("古田街道").is_ok());
    }
}
