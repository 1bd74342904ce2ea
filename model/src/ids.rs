//! Tenant and meter ids. Both follow one rule, `[A-Za-z0-9_-]{1,64}`: it keeps ids safe
//! inside MQTT topics, Redis keys, CQL partition keys and URL paths without escaping.
//! An id is validated once, where it enters (topic, config, URL), and is a plain
//! string afterwards.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::reject::Reject;

/// Longest id accepted: long enough for a serial number with a vendor prefix, short
/// enough that a Redis key built from two ids stays well under 200 bytes.
pub const MAX_ID_LEN: usize = 64;

/// Whether `raw` is a well-formed id.
pub fn is_valid_id(raw: &[u8]) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_ID_LEN
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Box<str>);

        impl $name {
            /// Validates raw bytes (from a topic or a URL) as an id.
            pub fn parse(raw: &[u8]) -> Result<Self, Reject> {
                if is_valid_id(raw) {
                    // Valid ids are ASCII, so this cannot fail.
                    Ok(Self(String::from_utf8_lossy(raw).into()))
                } else {
                    Err(Reject::BadId)
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Reject;
            fn try_from(raw: String) -> Result<Self, Reject> {
                if is_valid_id(raw.as_bytes()) {
                    Ok(Self(raw.into()))
                } else {
                    Err(Reject::BadId)
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Reject;
            fn try_from(raw: &str) -> Result<Self, Reject> {
                Self::parse(raw.as_bytes())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.into()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
    };
}

id_type!(
    /// A utility (tenant) id, e.g. `demo` or `acme-water`.
    TenantId
);
id_type!(
    /// A meter id, unique within its tenant, e.g. a serial number.
    MeterId
);

/// One meter of one tenant: the unit of ordering, dedupe and state.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeterKey {
    pub tenant: TenantId,
    pub meter: MeterId,
}

impl MeterKey {
    pub fn new(tenant: TenantId, meter: MeterId) -> Self {
        Self { tenant, meter }
    }

    /// Validates a tenant id and a meter id read back from storage or an event.
    pub fn parse(tenant: &[u8], meter: &[u8]) -> Result<Self, Reject> {
        Ok(Self::new(TenantId::parse(tenant)?, MeterId::parse(meter)?))
    }
}

impl fmt::Display for MeterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.meter)
    }
}

impl fmt::Debug for MeterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_key_parses_from_two_valid_ids_only() {
        let key = MeterKey::parse(b"acme", b"m-1").unwrap();
        assert_eq!(key.to_string(), "acme/m-1");
        assert_eq!(MeterKey::parse(b"ac me", b"m1"), Err(Reject::BadId));
        assert_eq!(MeterKey::parse(b"acme", b""), Err(Reject::BadId));
    }

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(TenantId::try_from("acme-Water_01").is_ok());
        assert!(MeterId::try_from("a".repeat(64).as_str()).is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        for bad in ["", "a/b", "a+b", "#", "$sys", "é", "a.b", "a b"] {
            assert_eq!(MeterId::try_from(bad), Err(Reject::BadId), "{bad:?}");
        }
        assert_eq!(
            MeterId::try_from("a".repeat(65).as_str()),
            Err(Reject::BadId)
        );
        assert_eq!(MeterId::parse(&[0xff, 0x41]), Err(Reject::BadId));
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<TenantId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"not ok\"").is_err());
    }
}
