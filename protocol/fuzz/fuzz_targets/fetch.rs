//! The data plane's requests (with their requester claims, which are also checked as a
//! holder checks them) and response frames, and the membership frames.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zorgmesh_protocol::fetch::{FetchFrame, FetchRequest};
use zorgmesh_protocol::membership::{MemberAnswer, MemberHello};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = FetchRequest::from_bytes(data) {
        if let FetchRequest::PatientResources { claims }
        | FetchRequest::AccessLog { claims }
        | FetchRequest::ConsentRecords { claims } = &request
        {
            let mut guard = zorgmesh_protocol::claims::ClaimsGuard::default();
            let _ = guard.admit(
                claims,
                "zorgnet",
                &claims.claims.requester,
                &claims.claims.channel,
                claims.claims.issued_at_ms,
            );
        }
        assert_eq!(FetchRequest::from_bytes(&request.to_bytes()).ok(), Some(request));
    }
    if let Ok(frame) = FetchFrame::from_bytes(data) {
        if let FetchFrame::AccessEntry { bytes } = &frame {
            if let Ok(entry) = zorgmesh_protocol::audit::AuditEntry::from_bytes(bytes) {
                assert_eq!(
                    zorgmesh_protocol::audit::AuditEntry::from_bytes(&entry.to_bytes()).ok(),
                    Some(entry)
                );
            }
        }
        assert_eq!(FetchFrame::from_bytes(&frame.to_bytes()).ok(), Some(frame));
    }
    if let Ok(hello) = MemberHello::from_bytes(data) {
        assert_eq!(MemberHello::from_bytes(&hello.to_bytes()).ok(), Some(hello));
    }
    if let Ok(answer) = MemberAnswer::from_bytes(data) {
        assert_eq!(MemberAnswer::from_bytes(&answer.to_bytes()).ok(), Some(answer));
    }
});
