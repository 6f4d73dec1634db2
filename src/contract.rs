//! The protobuf messages of `proto/`, generated at build time, and the conventions around
//! them that both producers and this service must agree on: the certificate id used as the
//! Kafka record key, and the status codes and transitions of the SMKI web service.

#[allow(missing_docs, clippy::all)]
/// Generated code, one module per protobuf package.
pub mod smki {
    /// The public event contract, package `smki.v1`.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/smki.v1.rs"));
    }
    /// The private encoding of the state store, package `smki.store.v1`.
    pub mod store {
        /// Version 1 of the store encoding.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/smki.store.v1.rs"));
        }
    }
}

pub use smki::store::v1::{
    CertificateRecord, CertificateType as StoredType, DayClose, ForcedCut, KeyUsage as StoredUsage,
    PartitionClock,
};
pub use smki::v1::{
    certificate_event::Body, CertificateEvent, CertificateId, CertificateIssued, CertificateStatus,
    EventFileRecord, StatusChanged,
};

use sha2::{Digest, Sha256};

/// First 8 bytes of SHA-256 over the issuer Name DER: a short, fixed-size stand-in for the
/// issuer in keys. The full issuer DER is kept in the record and compared, so a collision
/// cannot silently merge two certificates.
pub fn issuer_hash(issuer_name_der: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(issuer_name_der);
    digest[..8].try_into().expect("8 bytes")
}

/// The Kafka record key of every event about a certificate: `<issuer-hash hex>-<SERIAL HEX>`
/// (see `proto/smki/v1/events.proto`).
pub fn record_key(issuer_name_der: &[u8], serial: &[u8]) -> String {
    format!(
        "{}-{}",
        hex::encode(issuer_hash(issuer_name_der)),
        hex::encode_upper(serial)
    )
}

impl CertificateStatus {
    /// The one-letter code of the SMKI web service (`P`, `I`, `N`, `E`, `R`).
    pub fn code(self) -> &'static str {
        match self {
            CertificateStatus::Unspecified => "?",
            CertificateStatus::Pending => "P",
            CertificateStatus::InUse => "I",
            CertificateStatus::NotInUse => "N",
            CertificateStatus::Expired => "E",
            CertificateStatus::Revoked => "R",
        }
    }

    /// `E` and `R` are final: no transition leaves them.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CertificateStatus::Expired | CertificateStatus::Revoked
        )
    }

    /// The lifecycle of DESIGN §3: P→I, I→N, N→I, and P/I/N→R or →E.
    pub fn may_become(self, next: CertificateStatus) -> bool {
        use CertificateStatus::*;
        matches!(
            (self, next),
            (Pending, InUse)
                | (InUse, NotInUse)
                | (NotInUse, InUse)
                | (Pending | InUse | NotInUse, Revoked | Expired)
        )
    }

    /// Every status a certificate can have, in code order (reports and tests).
    pub const ALL: [CertificateStatus; 5] = [
        CertificateStatus::Pending,
        CertificateStatus::InUse,
        CertificateStatus::NotInUse,
        CertificateStatus::Expired,
        CertificateStatus::Revoked,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use CertificateStatus::*;

    #[test]
    fn transitions_follow_the_lifecycle() {
        let allowed = [
            (Pending, InUse),
            (InUse, NotInUse),
            (NotInUse, InUse),
            (Pending, Revoked),
            (InUse, Revoked),
            (NotInUse, Revoked),
            (Pending, Expired),
            (InUse, Expired),
            (NotInUse, Expired),
        ];
        for from in CertificateStatus::ALL {
            for to in CertificateStatus::ALL {
                assert_eq!(
                    from.may_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
            assert!(!from.may_become(Unspecified));
        }
        assert!(Expired.is_final() && Revoked.is_final() && !InUse.is_final());
    }

    #[test]
    fn record_key_is_issuer_hash_and_serial() {
        let key = record_key(b"\x30\x00", &[0xAB, 0x01]);
        let (hash, serial) = key.split_once('-').unwrap();
        assert_eq!(hash.len(), 16);
        assert_eq!(hash, hash.to_lowercase());
        assert_eq!(serial, "AB01");
        assert_ne!(record_key(b"\x30\x01", &[0xAB, 0x01]), key);
    }
}
