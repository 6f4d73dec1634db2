//! EUI-64 identifiers (Device IDs and Entity IDs), written the way the SMKI web service
//! writes them: uppercase hex octets joined by hyphens, e.g. `90-B3-D5-1F-30-00-00-01`.

use std::fmt;
use std::str::FromStr;

/// An 8-byte EUI-64 identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Eui64(pub [u8; 8]);

impl Eui64 {
    /// From exactly 8 bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Eui64> {
        Some(Eui64(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// Why a text is not an EUI-64.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an EUI-64 (16 hex digits, optionally separated by '-' or ':')")]
pub struct ParseEui64Error(String);

impl FromStr for Eui64 {
    type Err = ParseEui64Error;

    /// Accepts `90-B3-D5-1F-30-00-00-01`, `90:b3:…` and `90B3D51F30000001`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: String = s.chars().filter(|c| *c != '-' && *c != ':').collect();
        let bytes = hex::decode(&digits).map_err(|_| ParseEui64Error(s.to_string()))?;
        Eui64::from_slice(&bytes).ok_or_else(|| ParseEui64Error(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_uppercase_hyphenated() {
        let id = Eui64([0x90, 0xb3, 0xd5, 0x1f, 0x30, 0, 0, 1]);
        assert_eq!(id.to_string(), "90-B3-D5-1F-30-00-00-01");
    }

    #[test]
    fn parses_the_usual_spellings() {
        let id = Eui64([0x90, 0xb3, 0xd5, 0x1f, 0x30, 0, 0, 1]);
        for s in [
            "90-B3-D5-1F-30-00-00-01",
            "90:b3:d5:1f:30:00:00:01",
            "90B3D51F30000001",
        ] {
            assert_eq!(s.parse::<Eui64>().unwrap(), id);
        }
        assert!("90-B3".parse::<Eui64>().is_err());
        assert!("zz-B3-D5-1F-30-00-00-01".parse::<Eui64>().is_err());
    }
}
