//! Per-meter MQTT passwords (DESIGN §7) — a wire contract for provisioning systems.
//!
//! A tenant may hold a `meter_secret`; a meter's MQTT password is then
//! `lowercase_hex(HMAC-SHA256(key = meter_secret as UTF-8, message = "{tenant}.{meter}"))`
//! — 64 hex digits, the HMAC of the meter's client id. meterflow stores no per-meter
//! secret, and knowing one meter's password tells nothing about another's. The same
//! value comes from `printf '%s' "$TENANT.$METER" | openssl dgst -sha256 -hmac "$SECRET"`.
//! Verification accepts either hex case.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{MeterId, TenantId};

fn mac_of(meter_secret: &str, tenant: &TenantId, meter: &MeterId) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(meter_secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(tenant.as_str().as_bytes());
    mac.update(b".");
    mac.update(meter.as_str().as_bytes());
    mac
}

/// The MQTT password of `meter` of `tenant`, derived from the tenant's secret.
pub fn meter_password(meter_secret: &str, tenant: &TenantId, meter: &MeterId) -> String {
    hex::encode(mac_of(meter_secret, tenant, meter).finalize().into_bytes())
}

/// Whether `password` is `meter`'s derived password; compared in constant time.
pub fn verify_meter_password(
    meter_secret: &str,
    tenant: &TenantId,
    meter: &MeterId,
    password: &[u8],
) -> bool {
    let Ok(expected) = hex::decode(password) else {
        return false;
    };
    mac_of(meter_secret, tenant, meter)
        .verify_slice(&expected)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(tenant: &str, meter: &str) -> (TenantId, MeterId) {
        (
            TenantId::try_from(tenant).unwrap(),
            MeterId::try_from(meter).unwrap(),
        )
    }

    #[test]
    fn known_answer_from_openssl() {
        // printf '%s' 'acme.m000001' | openssl dgst -sha256 -hmac 'correct-horse-battery-staple'
        let (t, m) = ids("acme", "m000001");
        assert_eq!(
            meter_password("correct-horse-battery-staple", &t, &m),
            "db8c56dcdc219c1e367a0d2fc41188c65562e7a94f37ef023684e8bc92564b1b"
        );
    }

    #[test]
    fn a_password_opens_only_its_own_meter() {
        let (t, m1) = ids("acme", "m1");
        let (_, m2) = ids("acme", "m2");
        let p1 = meter_password("secret-secret-secret", &t, &m1);
        assert_eq!(p1.len(), 64);
        let opens = |secret: &str, meter: &MeterId, password: &[u8]| {
            verify_meter_password(secret, &t, meter, password)
        };
        assert!(opens("secret-secret-secret", &m1, p1.as_bytes()));
        assert!(!opens("secret-secret-secret", &m2, p1.as_bytes()));
        assert!(!opens("other-secret-secret", &m1, p1.as_bytes()));
        assert!(!opens("secret-secret-secret", &m1, &p1.as_bytes()[..62]));
        assert!(opens(
            "secret-secret-secret",
            &m1,
            p1.to_uppercase().as_bytes()
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_verifies_nor_panics(password in proptest::collection::vec(any::<u8>(), 0..100)) {
            let (t, m) = ids("acme", "m1");
            prop_assert!(!verify_meter_password("secret-secret-secret", &t, &m, &password));
        }
    }
}
