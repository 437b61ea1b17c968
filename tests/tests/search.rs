//! Search on one node over real HTTP, on data written for the test with known ids: each
//! parameter type gives exactly the expected ids, clinical parameters are never ignored
//! (`MedicationRequest?status=active` leaves stopped medications out), an update moves a
//! resource in the index and a delete takes it out, unknown parameters are reported (400
//! under `Prefer: handling=strict`), and a restart keeps the index.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use zorgmesh_tests::TestMesh;

const LOINC: &str = "http://loinc.org";
const BSN: &str = "http://fhir.nl/fhir/NamingSystem/bsn";

fn put(resource: Value) -> Value {
    let url = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    );
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
}

fn observation(id: &str, patient: &str, code: &str, date: &str, value: f64) -> Value {
    put(
        json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": date,
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "/min",
            "unit": "beats/minute"}}),
    )
}

fn data() -> Value {
    let entries = vec![
        put(json!({"resourceType": "Patient", "id": "zoe",
            "identifier": [{"system": BSN, "value": "999911120"}],
            "name": [{"family": "Ébène", "given": ["Zoë"]}], "gender": "female",
            "birthDate": "1950-03-04", "active": true,
            "managingOrganization": {"reference": "Organization/umcg"}})),
        put(json!({"resourceType": "Patient", "id": "jan",
            "identifier": [{"system": BSN, "value": "999911132"}],
            "name": [{"family": "de Vries", "given": ["Jan"]}], "gender": "male",
            "birthDate": "1987-11-30"})),
        put(
            json!({"resourceType": "MedicationRequest", "id": "mr-active", "status": "active",
            "intent": "order", "medicationCodeableConcept": {"text": "metoprolol"},
            "subject": {"reference": "Patient/zoe"}, "authoredOn": "2021-05-01"}),
        ),
        put(
            json!({"resourceType": "MedicationRequest", "id": "mr-stopped", "status": "stopped",
            "intent": "order", "medicationCodeableConcept": {"text": "metoprolol"},
            "subject": {"reference": "Patient/zoe"}, "authoredOn": "2019-05-01"}),
        ),
        observation("hr-zoe-1", "zoe", "8867-4", "2020-01-15T08:00:00Z", 72.0),
        observation(
            "hr-zoe-2",
            "zoe",
            "8867-4",
            "2021-06-01T08:00:00+02:00",
            95.0,
        ),
        observation("temp-zoe", "zoe", "8310-5", "2021-06-01", 37.2),
        observation("hr-jan", "jan", "8867-4", "2021-02-03", 60.0),
        put(json!({"resourceType": "Organization", "id": "umcg", "name": "UMC Groningen"})),
    ];
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn ids(bundle: &Value) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn search(mesh: &TestMesh, path: &str) -> Value {
    let (status, body) = mesh.get(0, path).await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_parameter_type_finds_exactly_the_expected_resources() {
    let mut mesh = TestMesh::start("searchtest", &[("search", "noord")])
        .await
        .unwrap();
    mesh.post_bundle(0, &data()).await.unwrap();

    let cases: &[(&str, &[&str])] = &[
        // token
        ("MedicationRequest?status=active", &["mr-active"]),
        (
            "MedicationRequest?status=active,stopped",
            &["mr-active", "mr-stopped"],
        ),
        ("MedicationRequest?status:not=active", &["mr-stopped"]),
        (
            "Observation?code=http://loinc.org|8867-4",
            &["hr-jan", "hr-zoe-1", "hr-zoe-2"],
        ),
        ("Observation?code=8310-5", &["temp-zoe"]),
        ("Observation?code=|8310-5", &[]),
        (
            "Observation?code=http://loinc.org|",
            &["hr-jan", "hr-zoe-1", "hr-zoe-2", "temp-zoe"],
        ),
        ("Patient?gender=female", &["zoe"]),
        ("Patient?active=true", &["zoe"]),
        (
            "Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911132",
            &["jan"],
        ),
        ("Patient?_id=zoe,jan", &["jan", "zoe"]),
        (
            "MedicationRequest?code:text=metop",
            &["mr-active", "mr-stopped"],
        ),
        // reference
        (
            "Observation?patient=zoe",
            &["hr-zoe-1", "hr-zoe-2", "temp-zoe"],
        ),
        ("Observation?subject=Patient/jan", &["hr-jan"]),
        ("Observation?subject:Patient=jan", &["hr-jan"]),
        // date, with the precision of the value
        ("Observation?date=2021-06-01", &["hr-zoe-2", "temp-zoe"]),
        (
            "Observation?date=ge2021",
            &["hr-jan", "hr-zoe-2", "temp-zoe"],
        ),
        ("Observation?date=lt2021-02-03", &["hr-zoe-1"]),
        ("Observation?date=le2021-02-03", &["hr-jan", "hr-zoe-1"]),
        ("Observation?date=gt2021-02-03", &["hr-zoe-2", "temp-zoe"]),
        (
            "Observation?date=sa2021-02-03&date=eb2022",
            &["hr-zoe-2", "temp-zoe"],
        ),
        ("Patient?birthdate=lt1970", &["zoe"]),
        ("Patient?birthdate=1987-11", &["jan"]),
        ("MedicationRequest?authoredon=ne2021-05-01", &["mr-stopped"]),
        // string: prefix, case and accents folded; exact; contains
        ("Patient?family=ebe", &["zoe"]),
        ("Patient?name=ZOE", &["zoe"]),
        ("Patient?family:exact=Ébène", &["zoe"]),
        ("Patient?family:exact=ebene", &[]),
        ("Patient?family:contains=vri", &["jan"]),
        // quantity, with the precision of the value
        ("Observation?value-quantity=72", &["hr-zoe-1"]),
        ("Observation?value-quantity=gt70", &["hr-zoe-1", "hr-zoe-2"]),
        (
            "Observation?value-quantity=le60|http://unitsofmeasure.org|/min",
            &["hr-jan", "temp-zoe"],
        ),
        ("Observation?value-quantity=37.2||/min", &["temp-zoe"]),
        ("Observation?value-quantity=37|http://other.org|/min", &[]),
        // AND of several parameters: the patient-scoped clinical query
        (
            "Observation?patient=zoe&code=http://loinc.org|8867-4&date=ge2021-01-01",
            &["hr-zoe-2"],
        ),
        // chains, one and two levels, and reverse chains
        (
            "Observation?patient.identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911132",
            &["hr-jan"],
        ),
        (
            "Observation?subject:Patient.identifier=999911120",
            &["hr-zoe-1", "hr-zoe-2", "temp-zoe"],
        ),
        (
            "Observation?subject:Patient.name=ebe",
            &["hr-zoe-1", "hr-zoe-2", "temp-zoe"],
        ),
        (
            "Observation?patient.organization.name=umc",
            &["hr-zoe-1", "hr-zoe-2", "temp-zoe"],
        ),
        ("Observation?patient.identifier=999999999", &[]),
        ("Patient?_has:Observation:patient:code=8310-5", &["zoe"]),
        (
            "Patient?_has:Observation:patient:code=8867-4",
            &["jan", "zoe"],
        ),
        (
            "Patient?_has:MedicationRequest:subject:status=stopped",
            &["zoe"],
        ),
        (
            "Organization?_has:Patient:organization:_has:Observation:patient:code=8310-5",
            &["umcg"],
        ),
        // :missing
        ("Patient?birthdate:missing=false", &["jan", "zoe"]),
        ("Patient?active:missing=true", &["jan"]),
    ];
    let mut failures = Vec::new();
    for (path, wanted) in cases {
        let body = search(&mesh, path).await;
        let found = ids(&body);
        if found != set(wanted) {
            failures.push(format!("{path}: got {found:?}, wanted {wanted:?}"));
        }
        if body["total"] != json!(wanted.len()) {
            failures.push(format!(
                "{path}: total {} for {} matches",
                body["total"],
                wanted.len()
            ));
        }
        let outcome = body["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["search"]["mode"] == "outcome");
        if outcome {
            failures.push(format!("{path}: a parameter was ignored: {body}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // An update moves a resource in the index; a delete takes it out.
    let (status, _) = mesh.get(0, "MedicationRequest/mr-stopped").await.unwrap();
    assert_eq!(status, 200);
    let mut changed = data()["entry"][3]["resource"].clone();
    changed["status"] = json!("active");
    mesh.post_bundle(
        0,
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": [put(changed)]}),
    )
    .await
    .unwrap();
    let body = search(&mesh, "MedicationRequest?status=active").await;
    assert_eq!(ids(&body), set(&["mr-active", "mr-stopped"]));
    let body = search(&mesh, "MedicationRequest?status=stopped").await;
    assert!(ids(&body).is_empty(), "the old status is still indexed");
    assert_eq!(mesh.delete(0, "Observation/hr-jan").await.unwrap(), 204);
    let body = search(&mesh, "Observation?code=8867-4").await;
    assert_eq!(ids(&body), set(&["hr-zoe-1", "hr-zoe-2"]));

    // The index survives a restart.
    mesh.restart(0).await.unwrap();
    let body = search(&mesh, "Observation?patient=zoe&code=8867-4").await;
    assert_eq!(ids(&body), set(&["hr-zoe-1", "hr-zoe-2"]));
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_parameters_are_reported_and_refused_under_strict_handling() {
    let mesh = TestMesh::start("searchtest", &[("search", "noord")])
        .await
        .unwrap();
    mesh.post_bundle(0, &data()).await.unwrap();

    // Lenient (the default): ignored, said in an outcome entry, left out of the self link.
    let body = search(&mesh, "Observation?colour=red&code=8310-5").await;
    assert_eq!(ids(&body), set(&["temp-zoe"]));
    let outcome = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry names the ignored parameter");
    assert!(outcome["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("colour"));
    let self_link = body["link"][0]["url"].as_str().unwrap();
    assert!(self_link.contains("code=8310-5"), "{self_link}");
    assert!(!self_link.contains("colour"), "{self_link}");

    // Strict: 400 with an OperationOutcome.
    let response = mesh
        .http
        .get(format!(
            "{}/Observation?colour=red&code=8310-5",
            mesh.node(0).base_url()
        ))
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");

    // A malformed value of a known parameter is 400 whatever the handling.
    let (status, body) = mesh.get(0, "Observation?date=yesterday").await.unwrap();
    assert_eq!(status, 400, "{body}");

    // The CapabilityStatement lists the parameters a type really has.
    let (_, metadata) = mesh.get(0, "metadata").await.unwrap();
    let observation = metadata["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Observation")
        .unwrap()
        .clone();
    let names: BTreeSet<String> = observation["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    for code in ["code", "patient", "date", "value-quantity", "status", "_id"] {
        assert!(
            names.contains(code),
            "Observation?{code} missing from metadata"
        );
    }
    assert!(
        !names.contains("code-value-quantity"),
        "composites are not supported yet"
    );
    mesh.shutdown().await;
}

async fn send(
    mesh: &TestMesh,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = mesh
        .http
        .request(method, format!("{}/{path}", mesh.node(0).base_url()))
        .bearer_auth(mesh.token(0).await.unwrap());
    if let Some(body) = body {
        request = request
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_create_update_and_delete_decide_by_search() {
    use reqwest::Method;
    let mesh = TestMesh::start("searchtest", &[("search", "noord")])
        .await
        .unwrap();
    let patient = json!({"resourceType": "Patient",
        "identifier": [{"system": BSN, "value": "999911120"}], "name": [{"family": "Jansen"}]});
    let condition = format!("identifier={BSN}|999911120");

    // If-None-Exist: the first creates (201), the second finds it (200, same id).
    let (status, first) = send(
        &mesh,
        Method::POST,
        "Patient",
        Some(&patient),
        &[("if-none-exist", &condition)],
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = send(
        &mesh,
        Method::POST,
        "Patient",
        Some(&patient),
        &[("if-none-exist", &format!("Patient?{condition}"))],
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], first["id"]);
    let total = search(&mesh, &format!("Patient?{condition}")).await["total"].clone();
    assert_eq!(total, 1, "a conditional create made a duplicate");

    // Conditional update: the one match is updated in place.
    let mut changed = patient.clone();
    changed["name"][0]["family"] = json!("Jansen-de Vries");
    let (status, updated) = send(
        &mesh,
        Method::PUT,
        &format!("Patient?{condition}"),
        Some(&changed),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["id"], first["id"]);
    assert_eq!(updated["meta"]["versionId"], "2");
    // ... and with no match, it creates.
    let other = json!({"resourceType": "Patient",
        "identifier": [{"system": BSN, "value": "999911132"}]});
    let (status, created) = send(
        &mesh,
        Method::PUT,
        &format!("Patient?identifier={BSN}|999911132"),
        Some(&other),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{created}");

    // Two matches: 412 for every conditional interaction, and nothing changes.
    let (status, body) = send(
        &mesh,
        Method::PUT,
        "Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|",
        Some(&changed),
        &[],
    )
    .await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(body["issue"][0]["code"], "multiple-matches");
    let (status, _) = send(
        &mesh,
        Method::POST,
        "Patient",
        Some(&patient),
        &[(
            "if-none-exist",
            "identifier=http://fhir.nl/fhir/NamingSystem/bsn|",
        )],
    )
    .await;
    assert_eq!(status, 412);
    let (status, _) = send(
        &mesh,
        Method::DELETE,
        "Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|",
        None,
        &[],
    )
    .await;
    assert_eq!(status, 412);
    assert_eq!(search(&mesh, "Patient").await["total"], 2);

    // A condition with a parameter that cannot be applied is refused, never half applied.
    let (status, body) = send(&mesh, Method::DELETE, "Patient?colour=red", None, &[]).await;
    assert_eq!(status, 400, "{body}");

    // If-Match on DELETE: a stale version is 412, the current one deletes.
    let id = created["id"].as_str().unwrap();
    let (status, _) = send(
        &mesh,
        Method::DELETE,
        &format!("Patient/{id}"),
        None,
        &[("if-match", "W/\"7\"")],
    )
    .await;
    assert_eq!(status, 412);
    let (status, _) = send(
        &mesh,
        Method::DELETE,
        &format!("Patient/{id}"),
        None,
        &[("if-match", "W/\"1\"")],
    )
    .await;
    assert_eq!(status, 204);

    // Conditional delete of the one match.
    let (status, _) = send(
        &mesh,
        Method::DELETE,
        &format!("Patient?{condition}"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(search(&mesh, "Patient").await["total"], 0);
    mesh.shutdown().await;
}

fn entries_of(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_include_summary_elements_total_and_post_search() {
    use reqwest::Method;
    let mesh = TestMesh::start("searchtest", &[("search", "noord")])
        .await
        .unwrap();
    mesh.post_bundle(0, &data()).await.unwrap();
    let order = |bundle: &Value| -> Vec<String> {
        entries_of(bundle, "match")
            .into_iter()
            .map(|e| e.split('/').nth(1).unwrap().to_owned())
            .collect()
    };

    // _sort: descending by the latest instant, ascending by the earliest, several keys.
    let body = search(&mesh, "Observation?patient=zoe&_sort=-date").await;
    assert_eq!(order(&body), ["temp-zoe", "hr-zoe-2", "hr-zoe-1"]);
    let body = search(&mesh, "Observation?_sort=date").await;
    assert_eq!(order(&body), ["hr-zoe-1", "hr-jan", "temp-zoe", "hr-zoe-2"]);
    let body = search(&mesh, "Observation?_sort=code,-value-quantity").await;
    assert_eq!(order(&body), ["temp-zoe", "hr-zoe-2", "hr-zoe-1", "hr-jan"]);
    // ... and pages follow the order.
    let body = search(&mesh, "Observation?_sort=date&_count=2").await;
    assert_eq!(order(&body), ["hr-zoe-1", "hr-jan"]);
    let next = body["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let page: Value = mesh
        .http
        .get(next)
        .bearer_auth(mesh.token(0).await.unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order(&page), ["temp-zoe", "hr-zoe-2"]);

    // _include and _revinclude, :iterate.
    let body = search(
        &mesh,
        "Observation?code=8310-5&_include=Observation:patient",
    )
    .await;
    assert_eq!(entries_of(&body, "match"), ["Observation/temp-zoe"]);
    assert_eq!(entries_of(&body, "include"), ["Patient/zoe"]);
    let body = search(&mesh, "Patient?_id=zoe&_revinclude=Observation:patient").await;
    assert_eq!(entries_of(&body, "match"), ["Patient/zoe"]);
    let mut included = entries_of(&body, "include");
    included.sort();
    assert_eq!(
        included,
        [
            "Observation/hr-zoe-1",
            "Observation/hr-zoe-2",
            "Observation/temp-zoe"
        ]
    );
    let body = search(
        &mesh,
        "Observation?code=8310-5&_include=Observation:patient&_include:iterate=Patient:organization",
    )
    .await;
    assert_eq!(
        entries_of(&body, "include"),
        ["Patient/zoe", "Organization/umcg"]
    );

    // _summary=count, _elements, _total=none.
    let body = search(&mesh, "Observation?_summary=count").await;
    assert_eq!(body["total"], 4);
    assert!(entries_of(&body, "match").is_empty());
    let body = search(&mesh, "Patient?_id=zoe&_elements=name").await;
    let patient = &body["entry"][0]["resource"];
    assert!(
        patient.get("name").is_some() && patient.get("birthDate").is_none(),
        "{patient}"
    );
    assert_eq!(patient["meta"]["tag"][0]["code"], "SUBSETTED");
    // _summary=true: the elements R4 marks as summary (birthDate is, contact is not).
    let body = search(&mesh, "Patient?_id=zoe&_summary=true").await;
    let patient = &body["entry"][0]["resource"];
    assert!(
        patient.get("name").is_some() && patient.get("birthDate").is_some(),
        "{patient}"
    );
    assert!(patient.get("text").is_none(), "{patient}");
    assert!(body["link"][0]["url"]
        .as_str()
        .unwrap()
        .contains("_summary=true"));
    // A read takes _summary and _elements too (the whole version's ETag either way).
    let patient = search(&mesh, "Patient/zoe?_summary=true").await;
    assert!(
        patient.get("birthDate").is_some() && patient.get("text").is_none(),
        "{patient}"
    );
    let patient = search(&mesh, "Patient/zoe/_history/1?_elements=gender").await;
    assert!(
        patient.get("gender").is_some() && patient.get("name").is_none(),
        "{patient}"
    );
    assert_eq!(patient["meta"]["tag"][0]["code"], "SUBSETTED");
    let whole = search(&mesh, "Patient/zoe?_summary=false").await;
    assert!(whole.get("name").is_some() && whole["meta"].get("tag").is_none());
    let response = mesh
        .http
        .get(format!(
            "{}/Patient/zoe?_summary=count",
            mesh.node(0).base_url()
        ))
        .bearer_auth(mesh.token(0).await.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    let body = search(&mesh, "Observation?_total=none").await;
    assert!(body.get("total").is_none());
    assert!(body["link"][0]["url"]
        .as_str()
        .unwrap()
        .contains("_total=none"));

    // POST [type]/_search with a form.
    let response = mesh
        .http
        .request(
            Method::POST,
            format!("{}/Observation/_search", mesh.node(0).base_url()),
        )
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("code=8310-5&_include=Observation:patient")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(entries_of(&body, "match"), ["Observation/temp-zoe"]);
    assert_eq!(entries_of(&body, "include"), ["Patient/zoe"]);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reaches_through_search_only_the_types_it_may_read() {
    let mesh = TestMesh::start("searchtest", &[("search", "noord")])
        .await
        .unwrap();
    mesh.post_bundle(0, &data()).await.unwrap();
    let narrow = mesh
        .add_client(0, "labs", "system/Observation.rs", None)
        .unwrap();
    let token = mesh.token_for(0, &narrow, None).await.unwrap();
    let get = |path: &str| {
        let request = mesh
            .http
            .get(format!("{}/{path}", mesh.node(0).base_url()))
            .bearer_auth(token.clone());
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    // Its own type, yes; a Patient included along, no.
    let (status, body) = get("Observation?code=8310-5&_include=Observation:patient").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(entries_of(&body, "match"), ["Observation/temp-zoe"]);
    assert!(entries_of(&body, "include").is_empty(), "{body}");
    // A chain through Patient would tell it about Patients: 403.
    let (status, body) = get("Observation?patient.identifier=999911120").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    mesh.shutdown().await;
}

async fn follow(mesh: &TestMesh, url: &str) -> Value {
    mesh.http
        .get(url)
        .bearer_auth(mesh.token(0).await.unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == relation)
        .map(|l| l["url"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_and_previous_links_stay_right_while_data_changes() {
    let mesh = TestMesh::start("searchtest", &[("search", "noord")])
        .await
        .unwrap();
    let entries: Vec<Value> = (1..=7)
        .map(|n| {
            observation(
                &format!("o{n}"),
                "zoe",
                "8867-4",
                &format!("2021-01-0{n}"),
                n as f64,
            )
        })
        .collect();
    mesh.post_bundle(
        0,
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
    )
    .await
    .unwrap();
    for query in [
        "Observation?code=8867-4&_count=3",
        "Observation?code=8867-4&_sort=-date&_count=3",
    ] {
        let first = search(&mesh, query).await;
        let total = first["total"].as_u64().unwrap() as usize;
        let mut seen: Vec<String> = ids_in_order(&first);
        // While the client reads page one: one of its entries goes, others come before it.
        assert_eq!(
            mesh.delete(0, &format!("Observation/{}", seen[1]))
                .await
                .unwrap(),
            204
        );
        mesh.post_bundle(
            0,
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                observation("o0", "jan", "8867-4", "2021-01-09", 1.0)]}),
        )
        .await
        .unwrap();
        let mut page = first;
        while let Some(next) = link(&page, "next") {
            page = follow(&mesh, &next).await;
            seen.extend(ids_in_order(&page));
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{query}: an entry came twice: {seen:?}"
        );
        // Every match of page one's time once (one more came in before the pages read, and
        // is not among them).
        assert_eq!(seen.len(), total, "{query}: an entry was skipped: {seen:?}");
        // Back from the last page: the page before it.
        let previous = follow(&mesh, &link(&page, "previous").unwrap()).await;
        assert_eq!(ids_in_order(&previous).len(), 3, "{query}");
        // Put back what this round removed, for the next round.
        let removed = seen[1].clone();
        let n: usize = removed[1..].parse().unwrap();
        mesh.post_bundle(
            0,
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                observation(&removed, "zoe", "8867-4", &format!("2021-01-0{n}"), n as f64)]}),
        )
        .await
        .unwrap();
    }
    mesh.shutdown().await;
}

fn ids_in_order(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_decide_conditional_entries_and_resolve_conditional_references() {
    let mesh = TestMesh::start("searchtest", &[("search", "noord")])
        .await
        .unwrap();
    mesh.post_bundle(0, &data()).await.unwrap();
    let transaction = |code: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:4b8f0a2e-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Patient",
                "identifier": [{"system": BSN, "value": "999911144"}], "name": [{"family": "Bakker"}]},
             "request": {"method": "POST", "url": "Patient",
                "ifNoneExist": format!("identifier={BSN}|999911144")}},
            {"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": LOINC, "code": code}]},
                "subject": {"reference": "urn:uuid:4b8f0a2e-0000-4000-8000-000000000001"},
                "performer": [{"reference": format!("Patient?identifier={BSN}|999911120")}]},
             "request": {"method": "POST", "url": "Observation"}}
        ]})
    };
    let first = mesh.post_bundle(0, &transaction("1111-1")).await.unwrap();
    assert!(first["entry"][0]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("201"));
    let second = mesh.post_bundle(0, &transaction("2222-2")).await.unwrap();
    assert!(
        second["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("200"),
        "{second}"
    );
    let patients = search(&mesh, &format!("Patient?identifier={BSN}|999911144")).await;
    assert_eq!(
        patients["total"], 1,
        "the conditional create made a duplicate"
    );
    let bakker = ids(&patients).into_iter().next().unwrap();
    // Both Observations point at the one Patient, and the conditional reference resolved.
    let observations = search(&mesh, &format!("Observation?subject=Patient/{bakker}")).await;
    assert_eq!(observations["total"], 2, "{observations}");
    let by_performer = search(
        &mesh,
        "Observation?performer=Patient/zoe&code=1111-1,2222-2",
    )
    .await;
    assert_eq!(by_performer["total"], 2, "{by_performer}");

    // PUT and DELETE by search inside a transaction.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient",
            "identifier": [{"system": BSN, "value": "999911144"}], "name": [{"family": "Bakker-Smit"}]},
         "request": {"method": "PUT", "url": format!("Patient?identifier={BSN}|999911144")}},
        {"request": {"method": "DELETE", "url": "Observation?code=1111-1"}}
    ]});
    mesh.post_bundle(0, &bundle).await.unwrap();
    let patient = search(&mesh, &format!("Patient?identifier={BSN}|999911144")).await;
    assert_eq!(
        patient["entry"][0]["resource"]["name"][0]["family"],
        "Bakker-Smit"
    );
    assert_eq!(patient["entry"][0]["resource"]["id"], bakker.as_str());
    assert_eq!(search(&mesh, "Observation?code=1111-1").await["total"], 0);

    // Many matches: 412, and nothing of the transaction is written.
    let many = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Organization", "name": "new"},
         "request": {"method": "POST", "url": "Organization"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": format!("Patient?identifier={BSN}|")}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let response = mesh
        .http
        .post(mesh.node(0).base_url())
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("content-type", "application/fhir+json")
        .body(many.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 412);
    assert_eq!(search(&mesh, "Organization?name=new").await["total"], 0);
    // A conditional reference that finds nothing: 400.
    let none = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient?identifier=nobody"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let response = mesh
        .http
        .post(mesh.node(0).base_url())
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("content-type", "application/fhir+json")
        .body(none.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // A conditional PUT whose match another entry also writes: 400, nothing written.
    let twice = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": bakker,
            "identifier": [{"system": BSN, "value": "999911144"}], "name": [{"family": "Twee"}]},
         "request": {"method": "PUT", "url": format!("Patient/{bakker}")}},
        {"resource": {"resourceType": "Patient",
            "identifier": [{"system": BSN, "value": "999911144"}], "name": [{"family": "Drie"}]},
         "request": {"method": "PUT", "url": format!("Patient?identifier={BSN}|999911144")}}
    ]});
    let response = mesh
        .http
        .post(mesh.node(0).base_url())
        .bearer_auth(mesh.token(0).await.unwrap())
        .header("content-type", "application/fhir+json")
        .body(twice.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let outcome: Value = response.json().await.unwrap();
    assert!(
        outcome.to_string().contains("more than one entry"),
        "{outcome}"
    );
    let patient = search(&mesh, &format!("Patient?identifier={BSN}|999911144")).await;
    assert_eq!(
        patient["entry"][0]["resource"]["name"][0]["family"],
        "Bakker-Smit"
    );
    mesh.shutdown().await;
}
