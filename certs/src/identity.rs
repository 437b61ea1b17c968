//! The zorgmesh identity extension of a node certificate.
//!
//! Extension value (DER): `SEQUENCE { version INTEGER (2), name UTF8String, ura UTF8String,
//! organisationName UTF8String, region UTF8String, role UTF8String, category UTF8String }`.
//! Version 1 (without `category`) is still read, as category `other`.

use zorgmesh_protocol::consent::OrganisationCategory;
use zorgmesh_protocol::NodeRole;

/// OID of the identity extension (provisional arc of the zorgmesh project).
pub const IDENTITY_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 62_817, 1, 1];

/// What a node certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Node name, unique in the network (DNS label).
    pub name: String,
    /// URA of the responsible organisation (8 digits).
    pub organisation_ura: String,
    /// Name of the responsible organisation.
    pub organisation_name: String,
    /// Region of the node (DNS label).
    pub region: String,
    /// Kind of participant.
    pub role: NodeRole,
    /// Kind of care organisation (consent rules name categories).
    pub category: OrganisationCategory,
}

impl NodeIdentity {
    /// Checks every field; the message names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        crate::validate_label("node name", &self.name)?;
        crate::validate_label("region", &self.region)?;
        if self.organisation_ura.len() != 8
            || !self.organisation_ura.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(format!("URA {:?} must be 8 digits", self.organisation_ura));
        }
        if self.organisation_name.trim().is_empty() || self.organisation_name.len() > 200 {
            return Err("organisation name must be 1-200 characters".into());
        }
        Ok(())
    }

    pub(crate) fn to_der(&self) -> Vec<u8> {
        yasna::construct_der(|writer| {
            writer.write_sequence(|seq| {
                seq.next().write_u32(2);
                seq.next().write_utf8_string(&self.name);
                seq.next().write_utf8_string(&self.organisation_ura);
                seq.next().write_utf8_string(&self.organisation_name);
                seq.next().write_utf8_string(&self.region);
                seq.next().write_utf8_string(self.role.as_str());
                seq.next().write_utf8_string(self.category.as_str());
            })
        })
    }

    pub(crate) fn from_der(der: &[u8]) -> Result<Self, String> {
        let parsed = yasna::parse_der(der, |reader| {
            reader.read_sequence(|seq| {
                let version = seq.next().read_u32()?;
                let name = seq.next().read_utf8string()?;
                let ura = seq.next().read_utf8string()?;
                let organisation_name = seq.next().read_utf8string()?;
                let region = seq.next().read_utf8string()?;
                let role = seq.next().read_utf8string()?;
                let category = if version >= 2 {
                    Some(seq.next().read_utf8string()?)
                } else {
                    None
                };
                Ok((
                    version,
                    name,
                    ura,
                    organisation_name,
                    region,
                    role,
                    category,
                ))
            })
        })
        .map_err(|e| format!("identity extension is not valid DER: {e}"))?;
        let (version, name, organisation_ura, organisation_name, region, role, category) = parsed;
        if !(1..=2).contains(&version) {
            return Err(format!(
                "identity extension version {version} is not supported"
            ));
        }
        let identity = Self {
            name,
            organisation_ura,
            organisation_name,
            region,
            role: role.parse()?,
            category: category.map(|c| c.parse()).transpose()?.unwrap_or_default(),
        };
        identity.validate()?;
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_category_is_certified_and_a_version_1_extension_reads_as_other() {
        let identity = NodeIdentity {
            name: "huisarts-haren".into(),
            organisation_ura: "00010003".into(),
            organisation_name: "Huisartsenpraktijk Haren".into(),
            region: "noord".into(),
            role: NodeRole::Institution,
            category: OrganisationCategory::GeneralPractice,
        };
        assert_eq!(
            NodeIdentity::from_der(&identity.to_der()).unwrap(),
            identity
        );
        let version_1 = yasna::construct_der(|writer| {
            writer.write_sequence(|seq| {
                seq.next().write_u32(1);
                seq.next().write_utf8_string("huisarts-haren");
                seq.next().write_utf8_string("00010003");
                seq.next().write_utf8_string("Huisartsenpraktijk Haren");
                seq.next().write_utf8_string("noord");
                seq.next().write_utf8_string("institution");
            })
        });
        let read = NodeIdentity::from_der(&version_1).unwrap();
        assert_eq!(read.category, OrganisationCategory::Other);
        let mut bad = identity.to_der();
        let at = bad.len() - 1;
        bad[at] = b'!';
        assert!(NodeIdentity::from_der(&bad)
            .unwrap_err()
            .contains("category"));
    }
}
