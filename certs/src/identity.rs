//! The zorgmesh identity extension of a node certificate.
//!
//! Extension value (DER): `SEQUENCE { version INTEGER (1), name UTF8String, ura UTF8String,
//! organisationName UTF8String, region UTF8String, role UTF8String }`.

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
                seq.next().write_u32(1);
                seq.next().write_utf8_string(&self.name);
                seq.next().write_utf8_string(&self.organisation_ura);
                seq.next().write_utf8_string(&self.organisation_name);
                seq.next().write_utf8_string(&self.region);
                seq.next().write_utf8_string(self.role.as_str());
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
                Ok((version, name, ura, organisation_name, region, role))
            })
        })
        .map_err(|e| format!("identity extension is not valid DER: {e}"))?;
        let (version, name, organisation_ura, organisation_name, region, role) = parsed;
        if version != 1 {
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
        };
        identity.validate()?;
        Ok(identity)
    }
}
