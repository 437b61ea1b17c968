//! Patient identity on the mesh: the BSN stays home, only a pseudonym travels.
//!
//! The pseudonym ([`PatientKey`]) is the threshold-OPRF output of [`crate::oprf`]: no node
//! can compute it alone, so no node can test a guessed BSN against the index.

use std::fmt;

/// FHIR identifier system of the BSN.
pub const BSN_SYSTEM: &str = "http://fhir.nl/fhir/NamingSystem/bsn";

/// A Dutch citizen service number that passed the 11-proef.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bsn(String);

/// Why a string is not a BSN.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BsnError {
    /// A BSN has exactly nine digits.
    #[error("a BSN has 9 digits, got {0} characters")]
    Length(usize),
    /// Only ASCII digits are allowed.
    #[error("a BSN has digits only")]
    NotDigits,
    /// The weighted checksum does not hold.
    #[error("the BSN fails the 11-proef")]
    Checksum,
}

impl Bsn {
    /// Parses and checks a BSN (nine digits, 11-proef).
    pub fn parse(text: &str) -> Result<Self, BsnError> {
        let text = text.trim();
        if text.len() != 9 {
            return Err(BsnError::Length(text.chars().count()));
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BsnError::NotDigits);
        }
        if !Self::passes_eleven_test(text.as_bytes()) {
            return Err(BsnError::Checksum);
        }
        Ok(Self(text.to_owned()))
    }

    fn passes_eleven_test(digits: &[u8]) -> bool {
        let mut sum: i64 = 0;
        for (i, d) in digits.iter().enumerate() {
            let value = i64::from(d - b'0');
            let weight = if i == 8 { -1 } else { 9 - i as i64 };
            sum += value * weight;
        }
        sum % 11 == 0 && digits != b"000000000"
    }

    /// Completes eight digits with the check digit that makes a valid BSN, if one exists.
    pub fn from_first_eight(first_eight: u32) -> Option<Self> {
        let text = format!("{first_eight:08}");
        if text.len() != 8 {
            return None;
        }
        let partial: i64 = text
            .bytes()
            .enumerate()
            .map(|(i, d)| i64::from(d - b'0') * (9 - i as i64))
            .sum();
        let check = partial % 11;
        if check > 9 {
            return None;
        }
        Self::parse(&format!("{text}{check}")).ok()
    }

    /// The nine digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Bsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a BSN in full in logs.
        write!(f, "Bsn(*****{})", &self.0[5..])
    }
}

/// The 32-byte pseudonym of a patient on the mesh.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, bincode::Encode, bincode::Decode)]
pub struct PatientKey(pub [u8; 32]);

impl PatientKey {
    /// Lower-case hex of the key.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for PatientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PatientKey({}..)", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eleven_test_accepts_known_valid_and_rejects_invalid() {
        assert!(Bsn::parse("999911120").is_ok());
        assert!(Bsn::parse("111222333").is_ok());
        assert_eq!(Bsn::parse("111222334"), Err(BsnError::Checksum));
        assert_eq!(Bsn::parse("12345678"), Err(BsnError::Length(8)));
        assert_eq!(Bsn::parse("12345678a"), Err(BsnError::NotDigits));
        assert_eq!(Bsn::parse("000000000"), Err(BsnError::Checksum));
    }

    #[test]
    fn completion_yields_valid_bsns() {
        let mut made = 0;
        for n in 10_000_000..10_000_100 {
            if let Some(bsn) = Bsn::from_first_eight(n) {
                assert!(Bsn::parse(bsn.as_str()).is_ok());
                made += 1;
            }
        }
        assert!(made > 80, "most prefixes complete to a BSN, got {made}");
    }

    #[test]
    fn a_bsn_never_prints_in_full() {
        let bsn = Bsn::parse("999911120").unwrap();
        assert!(!format!("{bsn:?}").contains("9999"));
    }
}
