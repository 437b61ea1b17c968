//! What a message costs on the wire, as the node's stack sends it: the bytes of every IP
//! packet, headers included (what a switch or `tcpdump` counts). The payloads are the real
//! encodings; the layers under them are fixed sizes of the protocols the node runs:
//!
//! - gossip: a gossipsub `Message` (its author's peer id, sequence number, topic and
//!   signature around the data, in an RPC frame), in a yamux data frame, in a noise frame
//!   (2 bytes of length, 16 of tag), in TCP segments of at most [`TCP_MSS`] bytes, each with
//!   [`TCP_IP_HEADERS`]; the receiver acknowledges every second segment (delayed ACKs);
//! - the data plane: one QUIC stream per request, in packets of at most [`QUIC_PAYLOAD`]
//!   bytes of stream data, each with [`QUIC_PACKET_OVERHEAD`], acknowledged every second
//!   packet by a packet of [`QUIC_ACK_PACKET`] bytes.
//!
//! gossipsub's control messages IHAVE (each heartbeat, to non-mesh peers) and IDONTWANT (for
//! every copy of a large message received, to the other mesh peers) are counted too.
//!
//! Not modelled: connection set-up (TCP, noise and the membership handshake; QUIC with TLS),
//! IWANT (a node announced a message it has nearly always had it already), GRAFT and PRUNE,
//! retransmitted bytes and path-MTU probes. `scripts/sim-fidelity.sh` measures how far that leaves the model from
//! real nodes.

/// A protobuf field's tag and length prefix for `len` bytes.
fn field(len: u64) -> u64 {
    1 + varint(len) + len
}

/// Bytes of a protobuf varint.
fn varint(value: u64) -> u64 {
    (64 - u64::from(value.leading_zeros()).min(63)).div_ceil(7)
}

/// A libp2p peer id of an ed25519 key (identity multihash of its protobuf public key).
pub const PEER_ID_BYTES: u64 = 38;
/// gossipsub message sequence numbers.
pub const SEQNO_BYTES: u64 = 8;
/// An ed25519 signature.
pub const SIGNATURE_BYTES: u64 = 64;
/// yamux's data frame header.
pub const YAMUX_HEADER: u64 = 12;
/// noise: the length prefix and the AEAD tag of one transport message.
pub const NOISE_FRAME: u64 = 2 + 16;
/// noise's largest transport message payload.
pub const NOISE_MAX_PAYLOAD: u64 = 65_535 - 16;
/// IPv4 (20) and TCP (20) headers with the timestamp option (12).
pub const TCP_IP_HEADERS: u64 = 52;
/// TCP payload per segment on a 1,500-byte MTU with timestamps.
pub const TCP_MSS: u64 = 1_448;
/// UDP/IPv4 headers (28), a QUIC short header (1 + 8-byte connection id + 2-byte packet
/// number), the AEAD tag (16) and a STREAM frame header (about 5).
pub const QUIC_PACKET_OVERHEAD: u64 = 28 + 11 + 16 + 5;
/// Stream data per QUIC packet on a 1,500-byte path.
pub const QUIC_PAYLOAD: u64 = 1_472 - QUIC_PACKET_OVERHEAD + 28;
/// A QUIC packet that carries only an ACK frame.
pub const QUIC_ACK_PACKET: u64 = 28 + 11 + 16 + 6;

/// One transfer: what the receiver gets, and what the sender gets back (acknowledgements).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes that reach the receiver.
    pub forward: u64,
    /// Bytes that come back to the sender.
    pub back: u64,
}

/// A gossip message with `payload` bytes of data on topic `topic_len` bytes long.
pub fn gossip(payload: u64, topic_len: u64) -> Transfer {
    // RPC { publish: [message] }, length-prefixed on the stream.
    rpc_on_the_wire(field(message_protobuf_len(payload, topic_len)))
}

/// gossipsub's message ids here (the first 20 bytes of SHA-256 of the data).
pub const MESSAGE_ID_BYTES: u64 = 20;
/// gossipsub sends IDONTWANT for messages whose protobuf is longer than this (its default).
pub const IDONTWANT_THRESHOLD: u64 = 1_000;

/// A gossipsub RPC of `rpc_body` bytes on its own, through yamux, noise and TCP.
fn rpc_on_the_wire(rpc_body: u64) -> Transfer {
    let rpc = field(rpc_body);
    let framed = varint(rpc) + rpc + YAMUX_HEADER;
    let noise = framed + framed.div_ceil(NOISE_MAX_PAYLOAD) * NOISE_FRAME;
    let segments = noise.div_ceil(TCP_MSS).max(1);
    Transfer {
        forward: noise + segments * TCP_IP_HEADERS,
        back: segments.div_ceil(2) * TCP_IP_HEADERS,
    }
}

/// The protobuf length of a gossip message with `payload` bytes of data.
pub fn message_protobuf_len(payload: u64, topic_len: u64) -> u64 {
    field(PEER_ID_BYTES)
        + field(payload)
        + field(SEQNO_BYTES)
        + field(topic_len)
        + field(SIGNATURE_BYTES)
}

/// An IDONTWANT control message for one message id.
pub fn idontwant() -> Transfer {
    let ids = field(MESSAGE_ID_BYTES);
    rpc_on_the_wire(field(field(ids)))
}

/// An IHAVE control message announcing `ids` message ids on a topic `topic_len` long.
pub fn ihave(ids: u64, topic_len: u64) -> Transfer {
    let ihave = field(topic_len) + ids * field(MESSAGE_ID_BYTES);
    rpc_on_the_wire(field(field(ihave)))
}

/// `payload` bytes of stream data over QUIC (a request or one answer).
pub fn quic(payload: u64) -> Transfer {
    let packets = payload.div_ceil(QUIC_PAYLOAD).max(1);
    Transfer {
        forward: payload + packets * QUIC_PACKET_OVERHEAD,
        back: packets.div_ceil(2) * QUIC_ACK_PACKET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_segments_count_as_the_protocols_do() {
        assert_eq!(varint(0), 1);
        assert_eq!(varint(127), 1);
        assert_eq!(varint(128), 2);
        assert_eq!(varint(16_383), 2);
        assert_eq!(varint(16_384), 3);
        // A small message is one segment; a 4,000-byte one three.
        let small = gossip(200, 30);
        assert_eq!(small.back, TCP_IP_HEADERS);
        assert!(small.forward > 200 + 38 + 64 + TCP_IP_HEADERS);
        let large = gossip(4_000, 30);
        assert_eq!(large.back, 2 * TCP_IP_HEADERS);
        assert_eq!(quic(10).forward, 10 + QUIC_PACKET_OVERHEAD);
        assert_eq!(quic(3 * QUIC_PAYLOAD).back, 2 * QUIC_ACK_PACKET);
    }
}
