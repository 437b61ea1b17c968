//! Trust material from the wire: revocation lists, hand-overs and their chains, the signed
//! evaluator set.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zorgmesh_protocol::codec;
use zorgmesh_protocol::handover::{verify_chain, SignedHandOver, MAX_HANDOVER_BYTES};
use zorgmesh_protocol::oprf::SignedEvaluatorSet;
use zorgmesh_protocol::revocation::SignedRevocationList;
use zorgmesh_protocol::NodeId;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = SignedRevocationList::from_bytes(data) {
        let _ = list.verify(&[7; 32], "fuzznet");
        assert_eq!(SignedRevocationList::from_bytes(&list.to_bytes()).ok(), Some(list));
    }
    if let Ok(handover) = codec::decode::<SignedHandOver>(data, MAX_HANDOVER_BYTES) {
        let _ = handover.verify();
        let _ = verify_chain(handover.body.log, "fuzznet", std::slice::from_ref(&handover));
        let _ = verify_chain(NodeId([1; 32]), "fuzznet", &[handover.clone(), handover]);
    }
    if let Ok(set) = SignedEvaluatorSet::from_bytes(data) {
        let _ = set.verify(&[7; 32], "fuzznet");
    }
});
