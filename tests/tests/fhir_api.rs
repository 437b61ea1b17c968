//! The FHIR API of one node over real HTTP: versions, ETags, search paging, atomic
//! transactions, batches, and an OperationOutcome with the right status for bad input.

use serde_json::{json, Value};
use zorgmesh_tests::TestMesh;

async fn send(
    mesh: &TestMesh,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let url = format!("{}/{path}", mesh.node(0).base_url());
    let mut request = mesh
        .http
        .request(method, url)
        .bearer_auth(mesh.token(0).await.unwrap());
    if let Some(body) = body {
        request = request
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, headers, body)
}

fn assert_outcome(status: u16, body: &Value, expected_status: u16) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_versions_and_etags() {
    use reqwest::Method;
    let mesh = TestMesh::start("apitest", &[("api", "noord")])
        .await
        .unwrap();
    let patient = json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}], "name": [{"family": "Jansen"}]});

    let (status, headers, created) =
        send(&mesh, Method::POST, "Patient", Some(patient.clone()), &[]).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["meta"]["versionId"], "1");
    assert!(created["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(headers["etag"], "W/\"1\"");
    assert!(headers["location"]
        .to_str()
        .unwrap()
        .ends_with(&format!("/Patient/{id}/_history/1")));

    let mut updated = created.clone();
    updated["name"][0]["family"] = json!("Jansen-de Vries");
    let (status, headers, body) = send(
        &mesh,
        Method::PUT,
        &format!("Patient/{id}"),
        Some(updated.clone()),
        &[("if-match", "W/\"1\"")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["etag"], "W/\"2\"");
    // A stale If-Match is refused.
    let (status, _, body) = send(
        &mesh,
        Method::PUT,
        &format!("Patient/{id}"),
        Some(updated),
        &[("if-match", "W/\"1\"")],
    )
    .await;
    assert_outcome(status, &body, 412);

    let (status, _, v1) = send(
        &mesh,
        Method::GET,
        &format!("Patient/{id}/_history/1"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v1["name"][0]["family"], "Jansen");
    let (status, headers, current) =
        send(&mesh, Method::GET, &format!("Patient/{id}"), None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["etag"], "W/\"2\"");
    assert!(headers.contains_key("last-modified"));
    assert_eq!(current["name"][0]["family"], "Jansen-de Vries");

    // Update-as-create with a client id.
    let (status, _, body) = send(
        &mesh,
        Method::PUT,
        "Organization/umcg",
        Some(json!({"resourceType": "Organization", "id": "umcg", "name": "UMCG"})),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let (status, _, _) = send(&mesh, Method::DELETE, &format!("Patient/{id}"), None, &[]).await;
    assert_eq!(status, 204);
    let (status, _, history) = send(
        &mesh,
        Method::GET,
        &format!("Patient/{id}/_history"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], 3, "create, update, delete: {history}");
    assert_eq!(history["entry"][0]["request"]["method"], "DELETE");
    assert_eq!(
        history["entry"][2]["resource"]["name"][0]["family"],
        "Jansen"
    );
    let (status, _, body) = send(&mesh, Method::GET, &format!("Patient/{id}"), None, &[]).await;
    assert_outcome(status, &body, 410);
    let (status, _, body) = send(&mesh, Method::GET, "Patient/does-not-exist", None, &[]).await;
    assert_outcome(status, &body, 404);
    let (status, _, body) = send(
        &mesh,
        Method::GET,
        &format!("Patient/{id}/_history/9"),
        None,
        &[],
    )
    .await;
    assert_outcome(status, &body, 404);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_operation_outcome_and_changes_nothing() {
    use reqwest::Method;
    let mesh = TestMesh::start("apitest", &[("api", "noord")])
        .await
        .unwrap();
    let url = format!("{}/Patient", mesh.node(0).base_url());
    let response = mesh
        .http
        .post(&url)
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("content-type", "application/fhir+json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_outcome(status, &response.json().await.unwrap(), 400);
    let response = mesh
        .http
        .post(&url)
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_outcome(status, &response.json().await.unwrap(), 415);
    // application/json is accepted as well.
    let response = mesh
        .http
        .post(&url)
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("content-type", "application/json")
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    let (status, _, body) = send(
        &mesh,
        Method::POST,
        "Patient",
        Some(json!({"resourceType": "Observation"})),
        &[],
    )
    .await;
    assert_outcome(status, &body, 400);
    let (status, _, body) = send(&mesh, Method::POST, "Patient", Some(json!([1, 2])), &[]).await;
    assert_outcome(status, &body, 400);
    let bad_bsn = json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "123456789"}]});
    let (status, _, body) = send(&mesh, Method::POST, "Patient", Some(bad_bsn), &[]).await;
    assert_outcome(status, &body, 400);
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("11-proef"),
        "{body}"
    );
    let (status, _, body) = send(&mesh, Method::GET, "NotAType/1", None, &[]).await;
    assert_outcome(status, &body, 404);
    let (status, _, body) = send(
        &mesh,
        Method::PUT,
        "Patient/a",
        Some(json!({"resourceType": "Patient", "id": "b"})),
        &[],
    )
    .await;
    assert_outcome(status, &body, 400);
    let (status, _, body) = send(
        &mesh,
        Method::PUT,
        "Patient/bad%20id",
        Some(json!({"resourceType": "Patient"})),
        &[],
    )
    .await;
    assert_outcome(status, &body, 400);
    // PATCH of a resource that does not exist.
    let (status, _, body) = send(&mesh, Method::PATCH, "Patient/a", Some(json!({})), &[]).await;
    assert_outcome(status, &body, 404);
    let (status, _, body) = send(&mesh, Method::PATCH, "Patient", Some(json!({})), &[]).await;
    assert_outcome(status, &body, 405);
    let (status, _, body) = send(&mesh, Method::GET, "Patient?_count=many", None, &[]).await;
    assert_outcome(status, &body, 400);
    let (status, _, body) = send(
        &mesh,
        Method::GET,
        "Patient/$dossier?identifier=http://fhir.nl/fhir/NamingSystem/bsn|123456789",
        None,
        &[],
    )
    .await;
    assert_outcome(status, &body, 400);
    let (status, _, body) = send(&mesh, Method::GET, "Patient/$dossier", None, &[]).await;
    assert_outcome(status, &body, 400);
    let response = mesh
        .http
        .get(format!("http://{}/elsewhere", mesh.node(0).http_addr))
        .bearer_auth(mesh.token(0).await.unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_outcome(status, &response.json().await.unwrap(), 404);

    // A transaction with one bad entry writes nothing.
    let before = send(&mesh, Method::GET, "Observation", None, &[]).await.2["total"].clone();
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "ok"}}, "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Observation", "id": "x", "status": "final", "code": {"text": "ok"}}, "request": {"method": "PUT", "url": "Observation/y"}}
    ]});
    let (status, _, body) = send(&mesh, Method::POST, "", Some(transaction), &[]).await;
    assert_outcome(status, &body, 400);
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("entry[1]"),
        "{body}"
    );
    let after = send(&mesh, Method::GET, "Observation", None, &[]).await.2["total"].clone();
    assert_eq!(before, after, "a failed transaction left data behind");

    // bdl-7: two entries with one fullUrl, named both; a urn:uuid reference that names no
    // entry; a Bundle without a Content-Type. Each is refused and writes nothing.
    let observation = |text: &str| json!({"resourceType": "Observation", "status": "final", "code": {"text": text}});
    let duplicate = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7d1c0e6a-0000-4000-8000-000000000001", "resource": observation("a"), "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:7d1c0e6a-0000-4000-8000-000000000002", "resource": observation("b"), "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:7d1c0e6a-0000-4000-8000-000000000001", "resource": observation("c"), "request": {"method": "POST", "url": "Observation"}}
    ]});
    let (status, _, body) = send(&mesh, Method::POST, "", Some(duplicate), &[]).await;
    assert_outcome(status, &body, 400);
    let diagnostics = body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.contains("entry[0]")
            && diagnostics.contains("entry[2]")
            && diagnostics.contains("bdl-7"),
        "{body}"
    );
    let dangling = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7d1c0e6a-0000-4000-8000-000000000003", "resource": {
            "resourceType": "Observation", "status": "final", "code": {"text": "d"},
            "subject": {"reference": "urn:uuid:7d1c0e6a-0000-4000-8000-00000000dead"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let (status, _, body) = send(&mesh, Method::POST, "", Some(dangling.clone()), &[]).await;
    assert_outcome(status, &body, 400);
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("00000000dead"),
        "{body}"
    );
    let response = mesh
        .http
        .post(mesh.node(0).base_url())
        .bearer_auth(mesh.token(0).await.unwrap())
        .body(dangling.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_outcome(status, &response.json().await.unwrap(), 415);
    let after = send(&mesh, Method::GET, "Observation", None, &[]).await.2["total"].clone();
    assert_eq!(before, after, "a refused Bundle left data behind");
    let (status, _, body) = send(
        &mesh,
        Method::POST,
        "",
        Some(json!({"resourceType": "Bundle", "type": "collection"})),
        &[],
    )
    .await;
    assert_outcome(status, &body, 400);

    // A batch reports each entry on its own.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1"}, "request": {"method": "PUT", "url": "Patient/p1"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "FROB", "url": "Patient"}}
    ]});
    let (status, _, body) = send(&mesh, Method::POST, "", Some(batch), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "batch-response");
    assert_eq!(body["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(body["entry"][1]["response"]["status"], "404 Not Found");
    assert_eq!(body["entry"][2]["response"]["status"], "400 Bad Request");
    assert_eq!(
        body["entry"][2]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_by_patient_identifier_and_last_updated_with_paging() {
    use reqwest::Method;
    let mesh = TestMesh::start("apitest", &[("api", "noord")])
        .await
        .unwrap();
    let response = mesh
        .post_bundle(0, &zorgmesh_tests::patient_bundle("999911120", "here", 7))
        .await
        .unwrap();
    let patient = zorgmesh_tests::created_patient_id(&response);
    mesh.post_bundle(0, &zorgmesh_tests::patient_bundle("111222333", "other", 2))
        .await
        .unwrap();

    let (status, _, page) = send(
        &mesh,
        Method::GET,
        &format!("Observation?patient=Patient/{patient}&_count=3"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["total"], 7);
    let mut seen = Vec::new();
    let mut page = page;
    loop {
        for entry in page["entry"].as_array().unwrap() {
            seen.push(entry["resource"]["id"].as_str().unwrap().to_owned());
        }
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
        let Some(next) = next else { break };
        page = mesh
            .http
            .get(next)
            .bearer_auth(mesh.token(0).await.unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7, "paging lost or repeated entries");

    let (_, _, by_subject) = send(
        &mesh,
        Method::GET,
        &format!("Condition?subject={patient}"),
        None,
        &[],
    )
    .await;
    assert_eq!(by_subject["total"], 1);
    let (_, _, by_identifier) = send(
        &mesh,
        Method::GET,
        "Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|111222333",
        None,
        &[],
    )
    .await;
    assert_eq!(by_identifier["total"], 1);
    let (_, _, by_value) = send(
        &mesh,
        Method::GET,
        "Patient?identifier=999911120",
        None,
        &[],
    )
    .await;
    assert_eq!(by_value["total"], 1);
    let (_, _, recent) = send(
        &mesh,
        Method::GET,
        "Observation?_lastUpdated=ge2020-01-01",
        None,
        &[],
    )
    .await;
    assert_eq!(recent["total"], 9);
    let (_, _, future) = send(
        &mesh,
        Method::GET,
        "Observation?_lastUpdated=gt2999-01-01",
        None,
        &[],
    )
    .await;
    assert_eq!(future["total"], 0);
    let (_, _, ignored) = send(&mesh, Method::GET, "Observation?colour=abc", None, &[]).await;
    let last = ignored["entry"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["search"]["mode"], "outcome",
        "unknown parameters are reported"
    );

    let (status, _, metadata) = send(&mesh, Method::GET, "metadata", None, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(metadata["resourceType"], "CapabilityStatement");
    assert_eq!(metadata["fhirVersion"], "4.0.1");
    mesh.shutdown().await;
}

/// Creates `count` small Patients one after the other (each must get 201); the slowest
/// request's time.
async fn create_small_patients(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    count: usize,
) -> std::time::Duration {
    let mut slowest = std::time::Duration::ZERO;
    for k in 0..count {
        let started = std::time::Instant::now();
        let response = client
            .post(format!("{base}/Patient"))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(
                json!({"resourceType": "Patient", "name": [{"family": format!("Small{k}")}]})
                    .to_string(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {k} was kept out: {e}"));
        assert_eq!(response.status().as_u16(), 201);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Opens a TCP connection to `to` from the loopback address `from`.
async fn connect_from(
    from: &str,
    to: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_do_not_keep_others_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = TestMesh::start("apinet", &[("solo", "noord")])
        .await
        .unwrap();
    let addr = mesh.node(0).http_addr;
    // 300 clients from one host send a request's headers and then never its body: each
    // would hold one of the API's 256 request slots. 1,000 more connections from another
    // host stay idle.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let Ok(mut stream) = connect_from("127.0.0.2", addr).await else {
            continue;
        };
        let head = format!(
            "POST /fhir/Patient HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/fhir+json\r\ncontent-length: 1000\r\n\r\n{{"
        );
        let _ = stream.write_all(head.as_bytes()).await;
        slow.push(stream);
    }
    let mut idle = Vec::new();
    for _ in 0..1000 {
        if let Ok(stream) = connect_from("127.0.0.3", addr).await {
            idle.push(stream);
        }
    }
    // The legitimate client is served throughout.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let base = mesh.node(0).base_url();
    let slowest = create_small_patients(&client, &base, &mesh.token(0).await.unwrap(), 20).await;
    // Connections over a host's share are closed at once: they hold no descriptor.
    let mut closed = 0;
    for stream in idle.iter_mut().rev() {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            stream.read(&mut byte),
        )
        .await
        {
            closed += 1;
        }
        if closed >= 900 {
            break;
        }
    }
    assert!(
        closed >= 900,
        "only {closed} of {} idle connections were closed",
        idle.len()
    );
    eprintln!(
        "with 300 stalled bodies and 1,000 idle connections: 20 requests served, slowest {slowest:?}; {closed} idle connections closed by the node"
    );
    drop(slow);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_bundles_is_parsed_a_few_at_a_time_and_others_are_served() {
    let mesh = TestMesh::start("burstnet", &[("solo", "noord")])
        .await
        .unwrap();
    let base = mesh.node(0).base_url();
    // 12 Bundles of about 30 MB whose one entry is invalid at the end: each must be read
    // and parsed in full before it is refused.
    let filler = "x".repeat(30 * 1024 * 1024);
    let large = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Basic", "code": {"text": filler}}, "request": {"method": "POST", "url": "Basic"}},
        {"request": {"method": "FROB", "url": "Basic"}}
    ]})
    .to_string();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap();
    let token = mesh.token(0).await.unwrap();
    let burst: Vec<_> = (0..12)
        .map(|_| {
            let (client, url, body) = (client.clone(), base.clone(), large.clone());
            let token = token.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/fhir+json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    // Small requests keep being served while the burst is parsed.
    let slowest = create_small_patients(&client, &base, &mesh.token(0).await.unwrap(), 20).await;
    let mut statuses = Vec::new();
    for request in burst {
        statuses.push(request.await.unwrap().unwrap());
    }
    // Each large Bundle was refused as invalid (400) or, when the budget stayed full, as
    // busy (503); none was taken.
    assert!(
        statuses.iter().all(|s| *s == 400 || *s == 503),
        "{statuses:?}"
    );
    // At most the budget's worth of bodies was in memory at once (about four of these).
    let (_, status) = mesh.get(0, "../admin/status").await.unwrap();
    let budget = &status["http"]["body_budget"];
    let peak = budget["peak_in_flight_bytes"].as_u64().unwrap();
    assert!(peak >= 30 * 1024 * 1024, "{budget}");
    assert!(peak <= budget["budget_bytes"].as_u64().unwrap(), "{budget}");
    eprintln!(
        "12 Bundles of 30 MB at once: {statuses:?}; 20 small requests served, slowest {slowest:?}; bodies in memory at once at most {} MiB (budget {} MiB)",
        peak / (1024 * 1024),
        budget["budget_bytes"].as_u64().unwrap() / (1024 * 1024)
    );
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_patch_applies_whole_or_not_at_all_and_honours_if_match() {
    use reqwest::Method;
    let mesh = TestMesh::start("apitest", &[("api", "noord")])
        .await
        .unwrap();
    let (status, _, created) = send(
        &mesh,
        Method::POST,
        "Patient",
        Some(json!({"resourceType": "Patient", "name": [{"family": "Jansen"}], "active": true})),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("Patient/{id}");
    let patch = |ops: Value, headers: Vec<(&'static str, String)>| {
        let url = format!("{}/{path}", mesh.node(0).base_url());
        let mesh = &mesh;
        async move {
            let mut request = mesh
                .http
                .patch(url)
                .bearer_auth(mesh.token(0).await.unwrap())
                .body(ops.to_string());
            for (k, v) in headers {
                request = request.header(k, v);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let json_patch = ("content-type", "application/json-patch+json".to_owned());

    let (status, body) = patch(
        json!([{"op": "test", "path": "/name/0/family", "value": "Jansen"},
               {"op": "replace", "path": "/name/0/family", "value": "Jansen-de Vries"},
               {"op": "remove", "path": "/active"}]),
        vec![json_patch.clone(), ("if-match", "W/\"1\"".into())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"][0]["family"], "Jansen-de Vries");
    assert!(body.get("active").is_none());
    assert_eq!(body["meta"]["versionId"], "2");

    // A stale If-Match: 412.
    let (status, body) = patch(
        json!([{"op": "add", "path": "/gender", "value": "female"}]),
        vec![json_patch.clone(), ("if-match", "W/\"1\"".into())],
    )
    .await;
    assert_outcome(status, &body, 412);
    // A failing test: 422, and the replace before it is not kept.
    let (status, body) = patch(
        json!([{"op": "replace", "path": "/name/0/family", "value": "X"},
               {"op": "test", "path": "/gender", "value": "male"}]),
        vec![json_patch.clone()],
    )
    .await;
    assert_outcome(status, &body, 422);
    // Changing the id or the type: 422.
    let (status, body) = patch(
        json!([{"op": "replace", "path": "/id", "value": "other"}]),
        vec![json_patch.clone()],
    )
    .await;
    assert_outcome(status, &body, 422);
    // Not a JSON Patch body: 400; another media type: 415.
    let (status, body) = patch(json!({"op": "add"}), vec![json_patch.clone()]).await;
    assert_outcome(status, &body, 400);
    let (status, body) = patch(json!([]), vec![("content-type", "text/plain".into())]).await;
    assert_outcome(status, &body, 415);
    // A FHIRPath Patch without operations: 400; one whose path finds nothing: 422.
    let fhir_json = ("content-type", "application/fhir+json".to_owned());
    let (status, body) = patch(
        json!({"resourceType": "Parameters", "parameter": []}),
        vec![fhir_json.clone()],
    )
    .await;
    assert_outcome(status, &body, 400);
    let replace_gender = |value: &str| {
        json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.gender"},
            {"name": "value", "valueCode": value}]}]})
    };
    let (status, body) = patch(replace_gender("female"), vec![fhir_json.clone()]).await;
    assert_outcome(status, &body, 422);
    assert!(body.to_string().contains("finds nothing"), "{body}");
    // Nothing of the failures stuck.
    let (_, _, now) = send(&mesh, Method::GET, &format!("Patient/{id}"), None, &[]).await;
    assert_eq!(now["meta"]["versionId"], "2");
    assert_eq!(now["name"][0]["family"], "Jansen-de Vries");
    // A merge patch (RFC 7396, what fhirpy sends): fields set, null removes.
    let (status, body) = patch(
        json!({"gender": "female", "name": null}),
        vec![("content-type", "application/json".into())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["gender"], "female");
    assert!(body.get("name").is_none());
    assert_eq!(body["meta"]["versionId"], "3");
    // FHIRPath Patch: replace, add (a list element becomes a list), insert, with If-Match.
    let (status, body) = patch(
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "operation", "part": [{"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Patient.gender"},
                {"name": "value", "valueCode": "other"}]},
            {"name": "operation", "part": [{"name": "type", "valueCode": "add"},
                {"name": "path", "valueString": "Patient"},
                {"name": "name", "valueString": "name"},
                {"name": "value", "valueHumanName": {"family": "Visser"}}]},
            {"name": "operation", "part": [{"name": "type", "valueCode": "insert"},
                {"name": "path", "valueString": "Patient.name"},
                {"name": "index", "valueInteger": 0},
                {"name": "value", "valueHumanName": {"family": "Bakker", "use": "maiden"}}]}]}),
        vec![fhir_json.clone(), ("if-match", "W/\"3\"".into())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["gender"], "other");
    assert_eq!(
        body["name"],
        json!([{"family": "Bakker", "use": "maiden"}, {"family": "Visser"}])
    );
    assert_eq!(body["meta"]["versionId"], "4");
    // A FHIRPath Patch that would leave an invalid resource: 422 naming the element.
    let (status, body) = patch(replace_gender("F"), vec![fhir_json.clone()]).await;
    assert_outcome(status, &body, 422);
    assert_eq!(
        body["issue"][0]["expression"][0], "Patient.gender",
        "{body}"
    );
    // A missing resource: 404.
    let (status, _, body) = send(&mesh, Method::GET, "Patient/nobody", None, &[]).await;
    assert_outcome(status, &body, 404);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_return_conditional_reads_and_xml_refused() {
    use reqwest::Method;
    let mesh = TestMesh::start("apitest", &[("api", "noord")])
        .await
        .unwrap();
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Jansen"}]});
    // Prefer: return=minimal: no body, the headers still.
    let url = format!("{}/Patient", mesh.node(0).base_url());
    let response = mesh
        .http
        .post(&url)
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(response.headers().contains_key("etag"));
    assert!(response.text().await.unwrap().is_empty());
    let id = location
        .split("/Patient/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // Prefer: return=OperationOutcome.
    let (status, _, body) = send(
        &mesh,
        Method::PUT,
        &format!("Patient/{id}"),
        Some(json!({"resourceType": "Patient", "id": id, "name": [{"family": "de Vries"}]})),
        &[("prefer", "return=OperationOutcome")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["resourceType"], "OperationOutcome");

    // Conditional reads: the current version or a later date is 304, an old one 200.
    let (status, _, _) = send(
        &mesh,
        Method::GET,
        &format!("Patient/{id}"),
        None,
        &[("if-none-match", "W/\"2\"")],
    )
    .await;
    assert_eq!(status, 304);
    let (status, _, body) = send(
        &mesh,
        Method::GET,
        &format!("Patient/{id}"),
        None,
        &[("if-none-match", "W/\"1\"")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["meta"]["versionId"], "2");
    let (status, _, _) = send(
        &mesh,
        Method::GET,
        &format!("Patient/{id}"),
        None,
        &[("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")],
    )
    .await;
    assert_eq!(status, 304);
    let (status, _, _) = send(
        &mesh,
        Method::GET,
        &format!("Patient/{id}"),
        None,
        &[("if-modified-since", "Thu, 01 Jan 2015 00:00:00 GMT")],
    )
    .await;
    assert_eq!(status, 200);

    // XML asked for: 406 with an OperationOutcome (in JSON).
    for (path, accept) in [
        (format!("Patient/{id}"), "application/fhir+xml"),
        (format!("Patient/{id}?_format=xml"), "application/fhir+json"),
    ] {
        let (status, _, body) = send(&mesh, Method::GET, &path, None, &[("accept", accept)]).await;
        assert_outcome(status, &body, 406);
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_and_system_history_page_newest_first_with_since() {
    use reqwest::Method;
    let mesh = TestMesh::start("apitest", &[("api", "noord")])
        .await
        .unwrap();
    let mut ids = Vec::new();
    for family in ["A", "B", "C"] {
        let (status, _, created) = send(
            &mesh,
            Method::POST,
            "Patient",
            Some(json!({"resourceType": "Patient", "name": [{"family": family}]})),
            &[],
        )
        .await;
        assert_eq!(status, 201);
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let (status, _, _) = send(
        &mesh,
        Method::POST,
        "Observation",
        Some(json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    let (status, _, _) = send(
        &mesh,
        Method::PUT,
        &format!("Patient/{}", ids[0]),
        Some(json!({"resourceType": "Patient", "id": ids[0], "name": [{"family": "A2"}]})),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        mesh.delete(0, &format!("Patient/{}", ids[1]))
            .await
            .unwrap(),
        204
    );

    // Type level, two per page: every Patient version, newest first, across the pages.
    let (status, _, mut page) =
        send(&mesh, Method::GET, "Patient/_history?_count=2", None, &[]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["type"], "history");
    let mut seen = Vec::new();
    loop {
        for entry in page["entry"].as_array().unwrap() {
            seen.push(format!(
                "{} {}",
                entry["request"]["method"].as_str().unwrap(),
                entry["response"]["etag"].as_str().unwrap()
            ));
        }
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
        let Some(next) = next else { break };
        page = mesh
            .http
            .get(next)
            .bearer_auth(mesh.token(0).await.unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    }
    assert_eq!(
        seen,
        [
            "DELETE W/\"2\"",
            "PUT W/\"2\"",
            "PUT W/\"1\"",
            "PUT W/\"1\"",
            "PUT W/\"1\""
        ],
        "newest first"
    );
    // System level holds the Observation too.
    let (_, _, all) = send(&mesh, Method::GET, "_history", None, &[]).await;
    assert_eq!(all["entry"].as_array().unwrap().len(), 6);
    // _since in the future: nothing; a bad cursor or parameter: 400.
    let (_, _, none) = send(
        &mesh,
        Method::GET,
        "_history?_since=2999-01-01T00:00:00Z",
        None,
        &[],
    )
    .await;
    assert!(none["entry"].as_array().unwrap().is_empty());
    let (status, _, body) =
        send(&mesh, Method::GET, "Patient/_history?_cursor=zz", None, &[]).await;
    assert_outcome(status, &body, 400);
    let (status, _, body) = send(&mesh, Method::GET, "Patient/_history?family=A", None, &[]).await;
    assert_outcome(status, &body, 400);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_apps_get_cors_only_from_configured_origins() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut mesh = TestMesh::start("apitest", &[("api", "noord")])
        .await
        .unwrap();
    let viewer = "https://viewer.example.org";
    let preflight = |mesh: &TestMesh, origin: &str| {
        mesh.http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/Patient/p1", mesh.node(0).base_url()),
            )
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header(
                "access-control-request-headers",
                "authorization, content-type, if-match, prefer",
            )
            .send()
    };
    let allowed = |headers: &reqwest::header::HeaderMap| {
        headers
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // By default no origin gets CORS headers.
    let response = preflight(&mesh, viewer).await.unwrap();
    assert_eq!(allowed(response.headers()), None);
    let (_, _, capability) = send(&mesh, reqwest::Method::GET, "metadata", None, &[]).await;
    assert_eq!(capability["rest"][0]["security"]["cors"], false);

    mesh.cors_origins = vec![viewer.to_owned(), "http://localhost:3000".to_owned()];
    mesh.restart(0).await.unwrap();
    let (_, _, capability) = send(&mesh, reqwest::Method::GET, "metadata", None, &[]).await;
    assert_eq!(capability["rest"][0]["security"]["cors"], true);
    // A preflight needs no token and names what the app may send.
    let response = preflight(&mesh, viewer).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let headers = response.headers();
    assert_eq!(allowed(headers).as_deref(), Some(viewer));
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("PUT") && methods.contains("PATCH"),
        "{methods}"
    );
    let request_headers = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for wanted in ["authorization", "if-match", "prefer", "if-none-exist"] {
        assert!(request_headers.contains(wanted), "{request_headers}");
    }
    // An actual request from the app: the origin allowed, ETag readable.
    let (status, headers, body) = send(
        &mesh,
        reqwest::Method::PUT,
        "Patient/p1",
        Some(json!({"resourceType": "Patient", "id": "p1"})),
        &[("origin", viewer)],
    )
    .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    assert_eq!(allowed(&headers).as_deref(), Some(viewer));
    let exposed = headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("location"),
        "{exposed}"
    );
    // Another origin gets nothing: its browser keeps the answer from its scripts.
    let response = preflight(&mesh, "https://evil.example.org").await.unwrap();
    assert_eq!(allowed(response.headers()), None);
    let (_, headers, _) = send(
        &mesh,
        reqwest::Method::GET,
        "Patient/p1",
        None,
        &[("origin", "https://evil.example.org")],
    )
    .await;
    assert_eq!(allowed(&headers), None);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_narrows_by_type_and_since_and_pages_by_cursor() {
    use reqwest::Method;
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mesh = TestMesh::start("apitest", &[("api", "noord")])
        .await
        .unwrap();
    let put = |path: String, body: Value| {
        let mesh = &mesh;
        async move {
            let (status, _, body) = send(mesh, Method::PUT, &path, Some(body), &[]).await;
            assert!(status == 200 || status == 201, "{status} {body}");
            body
        }
    };
    put(
        "Patient/e1".into(),
        json!({"resourceType": "Patient", "id": "e1"}),
    )
    .await;
    for i in 0..5 {
        put(
            format!("Observation/o{i}"),
            json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
                "code": {"text": "x"}, "subject": {"reference": "Patient/e1"}}),
        )
        .await;
    }
    put(
        "Condition/c1".into(),
        json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/e1"}}),
    )
    .await;
    let ids = |bundle: &Value| -> Vec<String> {
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap(),
                    e["resource"]["id"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (status, _, all) = send(&mesh, Method::GET, "Patient/e1/$everything", None, &[]).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total"], 7);
    // _type: only the types asked for, comma-separated or repeated.
    let (_, _, narrowed) = send(
        &mesh,
        Method::GET,
        "Patient/e1/$everything?_type=Condition,Patient",
        None,
        &[],
    )
    .await;
    assert_eq!(ids(&narrowed), vec!["Condition/c1", "Patient/e1"]);
    // _since: only what changed then or later.
    let last_updated = put(
        "Observation/o3".into(),
        json!({"resourceType": "Observation", "id": "o3", "status": "amended",
            "code": {"text": "x"}, "subject": {"reference": "Patient/e1"}}),
    )
    .await["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, _, since) = send(
        &mesh,
        Method::GET,
        &format!(
            "Patient/e1/$everything?_since={}",
            form_urlencoded::byte_serialize(last_updated.as_bytes()).collect::<String>()
        ),
        None,
        &[],
    )
    .await;
    assert_eq!(ids(&since), vec!["Observation/o3"], "{since}");
    // Pages of 3 by cursor; a resource added between pages, before the cursor, does not
    // shift what the next page holds.
    let (_, _, first) = send(
        &mesh,
        Method::GET,
        "Patient/e1/$everything?_type=Observation&_count=3",
        None,
        &[],
    )
    .await;
    assert_eq!(
        ids(&first),
        vec!["Observation/o0", "Observation/o1", "Observation/o2"]
    );
    put(
        "Observation/o00".into(),
        json!({"resourceType": "Observation", "id": "o00", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "Patient/e1"}}),
    )
    .await;
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("a next link")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = next.split_once("/fhir/").unwrap().1.to_owned();
    let (_, _, second) = send(&mesh, Method::GET, &path, None, &[]).await;
    assert_eq!(ids(&second), vec!["Observation/o3", "Observation/o4"]);
    assert!(second["link"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["relation"] != "next"));
    // Bad input: a clear 400.
    for bad in [
        "Patient/e1/$everything?_type=Nonsense",
        "Patient/e1/$everything?_since=yesterday",
        "Patient/e1/$everything?start=2020",
    ] {
        let (status, _, body) = send(&mesh, Method::GET, bad, None, &[]).await;
        assert_outcome(status, &body, 400);
    }
    mesh.shutdown().await;
}

fn issue_paths(outcome: &Value) -> Vec<(String, String)> {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .map(|i| {
            (
                i["expression"][0].as_str().unwrap_or("").to_owned(),
                i["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resources_are_refused_with_every_problem_and_validate_reports_them() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mesh = TestMesh::start("apitest", &[("api", "noord")])
        .await
        .unwrap();
    let wrong = json!({"resourceType": "Patient", "gender": "mannelijk", "colour": "blue",
        "birthDate": "1970-13-45", "name": [{"family": "Jansen"}, {"use": "bijnaam"}]});
    let wanted = [
        ("Patient.gender", "code-invalid"),
        ("Patient.colour", "structure"),
        ("Patient.birthDate", "value"),
        ("Patient.name[1].use", "code-invalid"),
    ];
    // Create, update and PATCH refuse it with 422 and every problem's path; nothing is stored.
    let (status, _, outcome) = send(
        &mesh,
        reqwest::Method::POST,
        "Patient",
        Some(wrong.clone()),
        &[],
    )
    .await;
    assert_eq!(status, 422, "{outcome}");
    let found = issue_paths(&outcome);
    for (path, code) in wanted {
        assert!(
            found.contains(&(path.into(), code.into())),
            "{path} {code} not in {found:?}"
        );
    }
    assert_eq!(found.len(), wanted.len(), "{found:?}");
    let mut with_id = wrong.clone();
    with_id["id"] = json!("p-wrong");
    let (status, _, _) = send(
        &mesh,
        reqwest::Method::PUT,
        "Patient/p-wrong",
        Some(with_id),
        &[],
    )
    .await;
    assert_eq!(status, 422);
    let (status, _, _) = send(&mesh, reqwest::Method::GET, "Patient/p-wrong", None, &[]).await;
    assert_eq!(status, 404);
    let (_, _, bundle) = send(&mesh, reqwest::Method::GET, "Patient", None, &[]).await;
    assert_eq!(bundle["total"], 0, "{bundle}");
    // An Observation without its mandatory status.
    let observation = json!({"resourceType": "Observation", "code": {"text": "pols"}});
    let (status, _, outcome) = send(
        &mesh,
        reqwest::Method::POST,
        "Observation",
        Some(observation),
        &[],
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        issue_paths(&outcome),
        vec![("Observation.status".to_owned(), "required".to_owned())]
    );

    // A valid Patient, then a patch that would make it invalid.
    let valid = json!({"resourceType": "Patient", "id": "p1", "gender": "female"});
    let (status, _, _) = send(
        &mesh,
        reqwest::Method::PUT,
        "Patient/p1",
        Some(valid.clone()),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    let url = format!("{}/Patient/p1", mesh.node(0).base_url());
    let response = mesh
        .http
        .patch(&url)
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/gender", "value": "F"}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(
        issue_paths(&outcome),
        vec![("Patient.gender".to_owned(), "code-invalid".to_owned())]
    );
    let (_, _, stored) = send(&mesh, reqwest::Method::GET, "Patient/p1", None, &[]).await;
    assert_eq!(stored["gender"], "female");

    // In a transaction the issue paths name the entry, and nothing is written.
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p2", "gender": "male"},
         "request": {"method": "PUT", "url": "Patient/p2"}},
        {"resource": {"resourceType": "Patient", "id": "p3", "gender": "man"},
         "request": {"method": "PUT", "url": "Patient/p3"}}]});
    let (status, _, outcome) = send(&mesh, reqwest::Method::POST, "", Some(transaction), &[]).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(
        issue_paths(&outcome),
        vec![(
            "Bundle.entry[1].resource.gender".to_owned(),
            "code-invalid".to_owned()
        )]
    );
    let (status, _, _) = send(&mesh, reqwest::Method::GET, "Patient/p2", None, &[]).await;
    assert_eq!(status, 404);

    // $validate: 200 whether or not the resource is valid, with the same issues.
    let (status, _, outcome) = send(
        &mesh,
        reqwest::Method::POST,
        "Patient/$validate",
        Some(wrong.clone()),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(issue_paths(&outcome).len(), wanted.len(), "{outcome}");
    let (status, _, outcome) = send(
        &mesh,
        reqwest::Method::POST,
        "Patient/$validate",
        Some(valid.clone()),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(outcome["issue"][0]["severity"], "information", "{outcome}");
    // As Parameters, with a mode and a profile (which is said not to be checked).
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "id": "p9", "gender": "female"}},
        {"name": "mode", "valueCode": "update"},
        {"name": "profile", "valueUri": "http://nictiz.nl/fhir/StructureDefinition/nl-core-Patient"}]});
    let (status, _, outcome) = send(
        &mesh,
        reqwest::Method::POST,
        "Patient/p1/$validate",
        Some(parameters),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    let errors = issue_paths(&outcome);
    assert_eq!(
        errors,
        vec![("Patient.id".to_owned(), "invalid".to_owned())],
        "{outcome}"
    );
    assert!(outcome.to_string().contains("was not checked"), "{outcome}");
    let delete = json!({"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]});
    let (status, _, _) = send(
        &mesh,
        reqwest::Method::POST,
        "Patient/nobody/$validate",
        Some(delete),
        &[],
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = send(
        &mesh,
        reqwest::Method::POST,
        "Patient/$nothing",
        Some(valid),
        &[],
    )
    .await;
    assert_eq!(status, 405);
}
