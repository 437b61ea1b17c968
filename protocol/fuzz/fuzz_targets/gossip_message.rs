//! GossipMessage (with the record and batch inside): decode, verify the record's chain and
//! signature; whatever decodes encodes back to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use zorgmesh_protocol::gossip::GossipMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = GossipMessage::from_bytes(data) {
        match &message {
            GossipMessage::Batch { record, batch } => {
                let _ = record.verify("fuzznet");
                let _ = batch.verify();
            }
            GossipMessage::Announce { record } => {
                let _ = record.verify("fuzznet");
            }
            GossipMessage::Revocations { list } => {
                let _ = list.verify(&[7; 32], "fuzznet");
            }
        }
        assert_eq!(GossipMessage::from_bytes(&message.to_bytes()).ok(), Some(message));
    }
});
