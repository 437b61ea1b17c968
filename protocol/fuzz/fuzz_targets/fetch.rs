//! The data plane's requests and response frames, and the membership frames.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zorgmesh_protocol::fetch::{FetchFrame, FetchRequest};
use zorgmesh_protocol::membership::{MemberAnswer, MemberHello};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = FetchRequest::from_bytes(data) {
        assert_eq!(FetchRequest::from_bytes(&request.to_bytes()).ok(), Some(request));
    }
    if let Ok(frame) = FetchFrame::from_bytes(data) {
        assert_eq!(FetchFrame::from_bytes(&frame.to_bytes()).ok(), Some(frame));
    }
    if let Ok(hello) = MemberHello::from_bytes(data) {
        assert_eq!(MemberHello::from_bytes(&hello.to_bytes()).ok(), Some(hello));
    }
    if let Ok(answer) = MemberAnswer::from_bytes(data) {
        assert_eq!(MemberAnswer::from_bytes(&answer.to_bytes()).ok(), Some(answer));
    }
});
