//! The QUIC data plane's door: mutual TLS against the network CA, the client's check that it
//! reached the holder it asked for, and bounded, versioned requests.

use ed25519_dalek::SigningKey;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;
use zorgmesh_certs::{CertificateAuthority, NodeIdentity, TrustAnchor};
use zorgmesh_node::data_plane::{quic_configs, DataPlane, FetchError, TlsIdentity};
use zorgmesh_node::fhir::FhirService;
use zorgmesh_node::publishing::Publisher;
use zorgmesh_node::storage::Storage;
use zorgmesh_protocol::fetch::{frame, FetchErrorCode, FetchFrame, FetchRequest, FETCH_ALPN};
use zorgmesh_protocol::{BatchPolicy, Bsn, LocatorKey, NodeId, NodeRole, PatientKey};

fn ca(seed: u8) -> CertificateAuthority {
    CertificateAuthority::create(
        "quicnet",
        SigningKey::from_bytes(&[seed; 32]),
        OffsetDateTime::now_utc(),
        30,
    )
    .unwrap()
}

fn identity(ca: &CertificateAuthority, name: &str, seed: u8) -> TlsIdentity {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let now = OffsetDateTime::now_utc();
    let node = NodeIdentity {
        name: name.into(),
        organisation_ura: "00000042".into(),
        organisation_name: format!("Org {name}"),
        region: "noord".into(),
        role: NodeRole::Institution,
    };
    let certificate_der = ca
        .issue(
            &node,
            &key,
            now - Duration::minutes(1),
            now + Duration::days(1),
        )
        .unwrap();
    TlsIdentity {
        anchor: TrustAnchor::from_der(ca.certificate_der()).unwrap(),
        certificate_der,
        key,
    }
}

struct Holder {
    _dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    node: NodeId,
    patient: PatientKey,
    _shutdown: watch::Sender<bool>,
}

async fn holder(ca: &CertificateAuthority) -> Holder {
    let dir = tempfile::tempdir().unwrap();
    let locator_key = LocatorKey::from_bytes([1; 32]);
    let storage = Arc::new(Storage::open(dir.path(), locator_key.clone()).unwrap());
    let tls = identity(ca, "holder", 10);
    let publisher =
        Publisher::new(storage.clone(), tls.key.clone(), BatchPolicy::default()).unwrap();
    let verified = tls
        .anchor
        .verify_node_certificate(&tls.certificate_der, None)
        .unwrap();
    let mesh = Arc::new(zorgmesh_node::mesh::Mesh::new(
        tls.anchor.clone(),
        storage.clone(),
        &verified,
        None,
    ));
    let fhir = FhirService::new(storage, publisher);
    let bsn = Bsn::parse("999911120").unwrap();
    fhir.update(
        "Patient",
        "p1",
        serde_json::json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": bsn.as_str()}]}),
        None,
    )
    .await
    .unwrap();
    fhir.update(
        "Observation",
        "o1",
        serde_json::json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}}),
        None,
    )
    .await
    .unwrap();
    let plane = DataPlane::bind(&tls, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = plane.local_addr().unwrap();
    let (shutdown, rx) = watch::channel(false);
    tokio::spawn(plane.serve(fhir, mesh, rx));
    Holder {
        _dir: dir,
        addr,
        node: NodeId(tls.key.verifying_key().to_bytes()),
        patient: PatientKey::derive(&locator_key, &bsn),
        _shutdown: shutdown,
    }
}

#[tokio::test]
async fn a_certified_client_fetches_the_patients_resources() {
    let ca = ca(1);
    let holder = holder(&ca).await;
    let client =
        DataPlane::bind(&identity(&ca, "client", 20), "127.0.0.1:0".parse().unwrap()).unwrap();
    let resources = client
        .fetch_patient(holder.node, "holder", holder.addr, holder.patient)
        .await
        .unwrap();
    let types: Vec<&str> = resources
        .iter()
        .map(|r| r["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Patient", "Observation"]);
    // Unknown patient: an empty, complete answer.
    let none = client
        .fetch_patient(holder.node, "holder", holder.addr, PatientKey([9; 32]))
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn a_client_certified_by_another_ca_gets_nothing() {
    let holder = holder(&ca(1)).await;
    let client = DataPlane::bind(
        &identity(&ca(2), "client", 20),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let err = client
        .fetch_patient(holder.node, "holder", holder.addr, holder.patient)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn the_client_refuses_a_server_that_is_not_the_holder_it_asked_for() {
    let ca = ca(1);
    let holder = holder(&ca).await;
    let client =
        DataPlane::bind(&identity(&ca, "client", 20), "127.0.0.1:0".parse().unwrap()).unwrap();
    let someone_else = NodeId([7; 32]);
    let err = client
        .fetch_patient(someone_else, "holder", holder.addr, holder.patient)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Identity(_)), "{err}");
}

async fn raw_exchange(holder: &Holder, client: &TlsIdentity, request: &[u8]) -> Vec<u8> {
    let (_, client_config) = quic_configs(client).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_config);
    let connection = endpoint
        .connect(holder.addr, &zorgmesh_certs::node_dns_name("holder"))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        connection
            .handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol
            .unwrap(),
        FETCH_ALPN
    );
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    // The server may stop reading an oversized request early; that is its right.
    let _ = send.write_all(request).await;
    let _ = send.finish();
    recv.read_to_end(1 << 20).await.unwrap()
}

fn first_frame(bytes: &[u8]) -> FetchFrame {
    let length = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    FetchFrame::from_bytes(&bytes[4..4 + length]).unwrap()
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_an_error_frame() {
    let ca = ca(1);
    let holder = holder(&ca).await;
    let client = identity(&ca, "client", 20);
    for request in [
        frame(b"garbage"),                              // undecodable body
        vec![1, 2],                                     // shorter than a length prefix
        [&100u32.to_le_bytes()[..], b"short"].concat(), // length prefix lies
        frame(&vec![0u8; 5000]),                        // over the 4 KiB limit
    ] {
        let response = raw_exchange(&holder, &client, &request).await;
        match first_frame(&response) {
            FetchFrame::Error { code, message } => {
                assert_eq!(code, FetchErrorCode::BadRequest);
                assert!(!message.is_empty());
            }
            other => panic!("expected an error frame, got {other:?}"),
        }
    }
    // And a well-formed request still works on the same server afterwards.
    let good = frame(
        &FetchRequest::PatientResources {
            patient: holder.patient,
        }
        .to_bytes(),
    );
    let response = raw_exchange(&holder, &client, &good).await;
    assert!(matches!(
        first_frame(&response),
        FetchFrame::Resource { .. }
    ));
}
