//! Who may call a node's API, over real HTTP with real signed JWTs: SMART Backend Services
//! (client-credentials grant, signed client assertions, SMART v2 scopes). Each attack gets
//! its stated answer: 401 with an OperationOutcome and `WWW-Authenticate`, 403 for a scope
//! that does not cover the request, `invalid_client` at the token endpoint.

use reqwest::Method;
use serde_json::Value;
use zorgmesh_node::auth::assertion::ClientCredentials;
use zorgmesh_node::auth::{now_secs, JWT_BEARER, TOKEN_PATH};
use zorgmesh_tests::{patient_bundle, TestMesh};

const BSN: &str = "999911120";
const OTHER_BSN: &str = "999990019";

/// A request to node `i` with `token` (or none); status, `WWW-Authenticate` and body.
async fn call(
    mesh: &TestMesh,
    i: usize,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<String>, Value) {
    let url = format!("http://{}{path}", mesh.node(i).http_addr);
    let mut request = mesh.http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    (
        status,
        challenge,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Asserts a 401 with a Bearer challenge and an OperationOutcome whose text contains
/// `says`.
fn assert_unauthenticated(answer: &(u16, Option<String>, Value), says: &str) {
    let (status, challenge, body) = answer;
    assert_eq!(*status, 401, "{body}");
    assert!(
        challenge
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer")),
        "{challenge:?}"
    );
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(text.contains(says), "expected {says:?} in {body}");
}

fn assert_forbidden(answer: &(u16, Option<String>, Value), says: &str) {
    let (status, _, body) = answer;
    assert_eq!(*status, 403, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_eq!(body["issue"][0]["code"], "forbidden", "{body}");
    let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(text.contains(says), "expected {says:?} in {body}");
}

/// Posts a raw token request form to node `i`; status and JSON answer.
async fn token_request(mesh: &TestMesh, i: usize, form: &[(&str, &str)]) -> (u16, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = mesh
        .http
        .post(mesh.token_endpoint(i))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn with_endpoint(credentials: &ClientCredentials, endpoint: String) -> ClientCredentials {
    let mut credentials = credentials.clone();
    credentials.token_endpoint = endpoint;
    credentials
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_token_nothing_but_discovery_answers() {
    let mesh = TestMesh::start("authnet", &[("umcg", "noord"), ("mst", "oost")])
        .await
        .unwrap();
    mesh.post_bundle(0, &patient_bundle(BSN, "umcg", 2))
        .await
        .unwrap();

    // Open: the CapabilityStatement (which names the token endpoint), SMART discovery,
    // the liveness probe.
    let (status, _, metadata) = call(&mesh, 0, Method::GET, "/fhir/metadata", None).await;
    assert_eq!(status, 200);
    let security = &metadata["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    assert_eq!(
        security["extension"][0]["extension"][0]["valueUri"],
        mesh.token_endpoint(0).as_str()
    );
    for path in [
        "/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
    ] {
        let (status, _, smart) = call(&mesh, 0, Method::GET, path, None).await;
        assert_eq!(status, 200);
        assert_eq!(smart["token_endpoint"], mesh.token_endpoint(0).as_str());
        assert!(smart["token_endpoint_auth_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "ES384"));
    }
    assert_eq!(call(&mesh, 0, Method::GET, "/health", None).await.0, 200);

    // No token: every FHIR and admin endpoint answers 401, and names the token endpoint.
    for (method, path) in [
        (Method::GET, "/fhir/Patient"),
        (Method::GET, "/fhir/Patient/anything"),
        (
            Method::GET,
            "/fhir/Patient/$dossier?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911120",
        ),
        (Method::POST, "/fhir"),
        (Method::DELETE, "/fhir/Patient/x"),
        (Method::GET, "/admin/status"),
        (Method::POST, "/admin/backup"),
        (Method::POST, "/admin/rotate"),
        (Method::GET, "/admin/revocations"),
    ] {
        let answer = call(&mesh, 0, method.clone(), path, None).await;
        assert_unauthenticated(&answer, TOKEN_PATH);
        assert_eq!(
            answer.1.as_deref(),
            Some("Bearer realm=\"zorgmesh\""),
            "{path}"
        );
    }

    // Garbage, a wrong scheme, a token of another node, an expired token, a token signed
    // with another secret: 401 with invalid_token.
    let at_mst = mesh.token(1).await.unwrap();
    assert_unauthenticated(
        &call(&mesh, 0, Method::GET, "/fhir/Patient", Some("not-a-jwt")).await,
        "not valid",
    );
    assert_unauthenticated(
        &call(&mesh, 0, Method::GET, "/fhir/Patient", Some(&at_mst)).await,
        "not issued by this node",
    );
    let answer = mesh
        .http
        .get(format!("{}/Patient", mesh.node(0).base_url()))
        .header("authorization", "Basic dGVzdHM6c2VjcmV0")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);

    // An expired token: signed with the node's own secret (read from its token.key, as
    // only the node could), but for a time gone by.
    let secret = hex::decode(
        std::fs::read_to_string(mesh.node_dir(0).join("token.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let issuer = format!("http://{}", mesh.node(0).http_addr);
    let tokens = zorgmesh_node::auth::assertion::AccessTokens::new(
        &secret,
        issuer.clone(),
        format!("{issuer}/fhir"),
    );
    let expired = tokens.issue(
        zorgmesh_tests::TEST_CLIENT,
        "system/*.cruds",
        now_secs() - 3600,
        300,
    );
    let answer = call(&mesh, 0, Method::GET, "/fhir/Patient", Some(&expired)).await;
    assert_unauthenticated(&answer, "expired");
    assert_eq!(answer.2["issue"][0]["code"], "expired");
    assert!(answer.1.unwrap().contains("error=\"invalid_token\""));
    // The same, fresh: accepted (the secret is the node's, the check is the time).
    let fresh = tokens.issue(
        zorgmesh_tests::TEST_CLIENT,
        "system/*.cruds",
        now_secs(),
        300,
    );
    assert_eq!(
        call(&mesh, 0, Method::GET, "/fhir/Patient", Some(&fresh))
            .await
            .0,
        200
    );
    // A token for a client that is not registered, though signed by the node's secret.
    let stranger = tokens.issue("stranger", "system/*.cruds", now_secs(), 300);
    assert_unauthenticated(
        &call(&mesh, 0, Method::GET, "/fhir/Patient", Some(&stranger)).await,
        "not registered",
    );
    // Altered: a token's payload changed (a wider scope) no longer verifies.
    let narrow = mesh
        .add_client(0, "narrow", "system/Observation.rs", None)
        .unwrap();
    let narrow_token = mesh.token_for(0, &narrow, None).await.unwrap();
    let mut parts: Vec<&str> = narrow_token.split('.').collect();
    let widened = {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
        claims["scope"] = "system/*.cruds".into();
        engine.encode(claims.to_string())
    };
    parts[1] = &widened;
    assert_unauthenticated(
        &call(
            &mesh,
            0,
            Method::GET,
            "/fhir/Patient",
            Some(&parts.join(".")),
        )
        .await,
        "not issued by this node",
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_takes_only_a_fresh_assertion_signed_by_the_registered_key() {
    let mesh = TestMesh::start("authnet", &[("umcg", "noord"), ("mst", "oost")])
        .await
        .unwrap();
    let ehr = mesh.add_client(0, "ehr", "system/*.rs", None).unwrap();
    let endpoint = mesh.token_endpoint(0);
    let form = |assertion: &str| {
        vec![
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("client_assertion_type".to_owned(), JWT_BEARER.to_owned()),
            ("client_assertion".to_owned(), assertion.to_owned()),
        ]
    };
    let post = |fields: Vec<(String, String)>| {
        let mesh = &mesh;
        async move {
            let pairs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            token_request(mesh, 0, &pairs).await
        }
    };

    // The good case: a token for the asked scopes that are registered.
    let assertion = ehr.assertion(now_secs(), 60).unwrap();
    let (status, grant) = post(form(&assertion)).await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(grant["token_type"], "bearer");
    assert_eq!(grant["scope"], "system/*.rs");
    assert_eq!(grant["expires_in"], 300);
    // The same assertion again: a replay.
    let (status, answer) = post(form(&assertion)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_client")),
        "{answer}"
    );
    assert!(answer["error_description"]
        .as_str()
        .unwrap()
        .contains("used before"));

    // Signed by another client's key while claiming to be ehr.
    let (impostor, _) = ClientCredentials::generate("ehr", &endpoint).unwrap();
    let (status, answer) = post(form(&impostor.assertion(now_secs(), 60).unwrap())).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_client")),
        "{answer}"
    );
    // A real client's assertion made for another node's token endpoint.
    let elsewhere = with_endpoint(&ehr, mesh.token_endpoint(1));
    let (status, answer) = post(form(&elsewhere.assertion(now_secs(), 60).unwrap())).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error_description"]
            .as_str()
            .unwrap()
            .contains("aud"),
        "{answer}"
    );
    // Expired; valid for too long; unknown client.
    let (status, _) = post(form(&ehr.assertion(now_secs() - 3600, 60).unwrap())).await;
    assert_eq!(status, 401);
    let (status, _) = post(form(&ehr.assertion(now_secs(), 3600).unwrap())).await;
    assert_eq!(status, 401);
    let (nobody, _) = ClientCredentials::generate("nobody", &endpoint).unwrap();
    let (status, answer) = post(form(&nobody.assertion(now_secs(), 60).unwrap())).await;
    assert_eq!(status, 401);
    assert!(answer["error_description"]
        .as_str()
        .unwrap()
        .contains("no active client"));

    // Scopes: what is not registered is not granted; nothing registered asked: refused.
    let mut fields = form(&ehr.assertion(now_secs(), 60).unwrap());
    fields.push((
        "scope".into(),
        "system/Observation.rs system/Patient.c".into(),
    ));
    let (status, grant) = post(fields).await;
    assert_eq!(
        (status, grant["scope"].as_str()),
        (200, Some("system/Observation.rs")),
        "{grant}"
    );
    let mut fields = form(&ehr.assertion(now_secs(), 60).unwrap());
    fields.push(("scope".into(), "zorgmesh.admin".into()));
    let (status, answer) = post(fields).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_scope")),
        "{answer}"
    );
    let mut fields = form(&ehr.assertion(now_secs(), 60).unwrap());
    fields.push(("scope".into(), "system/*.sr".into()));
    assert_eq!(post(fields).await.0, 400);

    // Malformed requests.
    let (status, answer) = post(vec![("grant_type".into(), "password".into())]).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (status, answer) = post(vec![("grant_type".into(), "client_credentials".into())]).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let response = mesh
        .http
        .post(&endpoint)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_decide_what_a_token_may_do_and_a_patient_app_sees_only_its_own_dossier() {
    let mesh = TestMesh::start("authnet", &[("umcg", "noord"), ("mst", "oost")])
        .await
        .unwrap();
    mesh.post_bundle(0, &patient_bundle(BSN, "umcg", 2))
        .await
        .unwrap();
    mesh.post_bundle(0, &patient_bundle(OTHER_BSN, "umcg", 1))
        .await
        .unwrap();
    mesh.wait_for_entries(2).await.unwrap();
    let dossier_of = |bsn: &str| {
        format!("/fhir/Patient/$dossier?identifier=http://fhir.nl/fhir/NamingSystem/bsn|{bsn}")
    };

    // A reader of Observations only.
    let labs = mesh
        .add_client(1, "labs", "system/Observation.rs", None)
        .unwrap();
    let token = mesh.token_for(1, &labs, None).await.unwrap();
    assert_eq!(
        call(&mesh, 1, Method::GET, "/fhir/Observation", Some(&token))
            .await
            .0,
        200
    );
    assert_forbidden(
        &call(&mesh, 1, Method::GET, "/fhir/Condition", Some(&token)).await,
        "system/Condition.s",
    );
    assert_forbidden(
        &call(
            &mesh,
            1,
            Method::DELETE,
            "/fhir/Observation/x",
            Some(&token),
        )
        .await,
        "delete",
    );
    assert_forbidden(
        &call(&mesh, 1, Method::GET, "/admin/status", Some(&token)).await,
        "zorgmesh.admin",
    );
    // A dossier needs to read Patient resources.
    assert_forbidden(
        &call(&mesh, 1, Method::GET, &dossier_of(BSN), Some(&token)).await,
        "Patient",
    );

    // A reader of Patients and Observations gets a dossier with just those; what it may
    // not read is left out and counted.
    let viewer = mesh
        .add_client(1, "viewer", "system/Patient.rs system/Observation.rs", None)
        .unwrap();
    let token = mesh.token_for(1, &viewer, None).await.unwrap();
    let (status, _, dossier) = call(&mesh, 1, Method::GET, &dossier_of(BSN), Some(&token)).await;
    assert_eq!(status, 200, "{dossier}");
    let types: std::collections::BTreeSet<&str> = dossier["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["resourceType"].as_str())
        .collect();
    assert_eq!(
        types,
        ["Observation", "OperationOutcome", "Patient"]
            .into_iter()
            .collect(),
        "{dossier}"
    );
    assert!(
        dossier
            .to_string()
            .contains("left out because the token's scopes"),
        "{dossier}"
    );

    // A write that needs one interaction the token lacks writes nothing.
    let writer = mesh
        .add_client(1, "writer", "system/Patient.c system/Observation.rs", None)
        .unwrap();
    let token = mesh.token_for(1, &writer, None).await.unwrap();
    let response = mesh
        .http
        .post(mesh.node(1).base_url())
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(patient_bundle("999911132", "mst", 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let (_, _, patients) = call(
        &mesh,
        1,
        Method::GET,
        "/fhir/Patient?_count=0",
        Some(&mesh.token(1).await.unwrap()),
    )
    .await;
    assert_eq!(patients["total"], 0, "{patients}");

    // A patient's app: its own dossier, nothing else.
    let app = mesh
        .add_client(1, "app", "patient/*.rs", Some(BSN))
        .unwrap();
    let token = mesh.token_for(1, &app, None).await.unwrap();
    let (status, _, own) = call(&mesh, 1, Method::GET, &dossier_of(BSN), Some(&token)).await;
    assert_eq!(status, 200, "{own}");
    assert!(own["total"].as_u64().unwrap() >= 3, "{own}");
    assert_forbidden(
        &call(&mesh, 1, Method::GET, &dossier_of(OTHER_BSN), Some(&token)).await,
        "own patient",
    );
    assert_forbidden(
        &call(&mesh, 1, Method::GET, "/fhir/Patient", Some(&token)).await,
        "patient's app",
    );
    // It acts for its patient: practitioner headers are refused.
    let response = mesh
        .http
        .get(format!(
            "http://{}{}",
            mesh.node(1).http_addr,
            dossier_of(BSN)
        ))
        .bearer_auth(&token)
        .header(
            "zorgmesh-practitioner",
            "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // A system client acting for a practitioner names them; a malformed name is refused.
    let token = mesh.token(1).await.unwrap();
    for (value, expected) in [
        (
            "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789",
            200,
        ),
        ("123456789", 401),
    ] {
        let response = mesh
            .http
            .get(format!(
                "http://{}{}",
                mesh.node(1).http_addr,
                dossier_of(BSN)
            ))
            .bearer_auth(&token)
            .header("zorgmesh-practitioner", value)
            .header("zorgmesh-practitioner-role", "01.015")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected, "{value}");
    }

    // The purpose of use travels in the signed claims: an emergency (break-the-glass) needs
    // the practitioner and a reason; a system cannot ask as the patient.
    let uzi = "http://fhir.nl/fhir/NamingSystem/uzi-nr-pers|123456789";
    for (headers, expected) in [
        (vec![("zorgmesh-purpose-of-use", "emergency")], 400),
        (
            vec![
                ("zorgmesh-purpose-of-use", "emergency"),
                ("zorgmesh-practitioner", uzi),
            ],
            400,
        ),
        (
            vec![
                ("zorgmesh-purpose-of-use", "emergency"),
                ("zorgmesh-practitioner", uzi),
                (
                    "zorgmesh-emergency-reason",
                    "unconscious at the emergency department",
                ),
            ],
            200,
        ),
        (vec![("zorgmesh-purpose-of-use", "research")], 200),
        (
            vec![("zorgmesh-purpose-of-use", "patient-self-access")],
            403,
        ),
        (vec![("zorgmesh-purpose-of-use", "marketing")], 400),
        (vec![("zorgmesh-emergency-reason", "why not")], 400),
    ] {
        let mut request = mesh
            .http
            .get(format!(
                "http://{}{}",
                mesh.node(1).http_addr,
                dossier_of(BSN)
            ))
            .bearer_auth(&token);
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, expected, "{headers:?}: {body}");
        if status == 200 {
            // Pulled from umcg over the data plane: the holder admitted the claims.
            assert!(body["total"].as_u64().unwrap() >= 3, "{body}");
            assert!(!body.to_string().contains("refused the request"), "{body}");
        }
    }

    // Revoked: the client's live token stops working within a second or so, and it gets
    // no new one.
    let viewer_token = mesh.token_for(1, &viewer, None).await.unwrap();
    zorgmesh_node::auth::registration::revoke_client(
        &mesh.node_dir(1).join("clients.json"),
        "viewer",
        now_secs(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let revoked = loop {
        if call(
            &mesh,
            1,
            Method::GET,
            "/fhir/Observation",
            Some(&viewer_token),
        )
        .await
        .0 == 401
        {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(revoked, "a revoked client's token still works");
    assert!(mesh.token_for(1, &viewer, None).await.is_err());
    mesh.shutdown().await;
}

/// An outside client (Python, PyJWT signing the assertion) discovers the token endpoint,
/// gets a token for the scopes it asks, reads a dossier pulled across the mesh, and cannot
/// use its assertion twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_client_signing_with_pyjwt_gets_a_token_and_a_dossier() {
    let Some(python) = zorgmesh_tests::outside_python() else {
        return;
    };
    let mesh = TestMesh::start("authnet", &[("umcg", "noord"), ("mst", "oost")])
        .await
        .unwrap();
    mesh.post_bundle(0, &patient_bundle(BSN, "umcg", 2))
        .await
        .unwrap();
    mesh.wait_for_entries(1).await.unwrap();
    let viewer = mesh
        .add_client(1, "outside-viewer", "system/*.rs", None)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("viewer.pem");
    std::fs::write(&key_file, &viewer.private_key_pem).unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("outside/smart_backend_client.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(mesh.node(1).base_url())
        .arg("outside-viewer")
        .arg(&viewer.kid)
        .arg(&key_file)
        .arg(BSN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let said: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(said["discovery"], 200, "{said}");
    assert_eq!(said["token"], 200, "{said}");
    assert_eq!(
        said["scope"], "system/Patient.rs system/Observation.rs",
        "{said}"
    );
    assert_eq!(said["replay"], 401, "{said}");
    assert_eq!(said["replay_error"], "invalid_client", "{said}");
    assert_eq!(said["dossier"], 200, "{said}");
    // Only what the token's scopes cover, pulled from umcg.
    assert_eq!(
        said["types"],
        serde_json::json!(["Observation", "Patient"]),
        "{said}"
    );
    mesh.shutdown().await;
}
