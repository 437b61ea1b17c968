//! The `zorgmesh` binary as a user runs it: certificates, topologies, and two `node run`
//! processes in two regions that resolve a dossier across the mesh.

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn zorgmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zorgmesh"))
        .args(args)
        .output()
        .expect("run zorgmesh")
}

fn ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn failed(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn certs_init_issue_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let other = dir.path().join("other");
    let nodes = dir.path().join("nodes");
    ok(&zorgmesh(&[
        "certs",
        "init",
        "--network",
        "zorgnet",
        "--out",
        s(&ca),
        "--evaluators",
        "umcg,erasmusmc,radboud",
    ]));
    ok(&zorgmesh(&[
        "certs",
        "init",
        "--network",
        "zorgnet",
        "--out",
        s(&other),
        "--evaluators",
        "umcg",
    ]));
    // An impossible threshold is refused with the reason.
    let err = failed(&zorgmesh(&[
        "certs",
        "init",
        "--network",
        "zorgnet",
        "--out",
        s(&dir.path().join("bad")),
        "--evaluators",
        "umcg,erasmusmc",
        "--threshold",
        "3",
    ]));
    assert!(err.contains("threshold 3"), "{err}");
    // Refuses to overwrite trust material.
    let err = failed(&zorgmesh(&[
        "certs",
        "init",
        "--network",
        "zorgnet",
        "--out",
        s(&ca),
        "--evaluators",
        "umcg",
    ]));
    assert!(err.contains("already exists"), "{err}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(ca.join("ca.key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let issue = |ca_dir: &Path, out: &Path, name: &str, days: &str| {
        zorgmesh(&[
            "certs",
            "issue",
            "--ca-dir",
            s(ca_dir),
            "--name",
            name,
            "--ura",
            "00001234",
            "--organisation",
            "UMC Groningen",
            "--region",
            "noord",
            "--role",
            "institution",
            "--days",
            days,
            "--out",
            s(out),
        ])
    };
    assert!(ca.join("shares/umcg.share").exists());
    let issued = ok(&issue(&ca, &nodes, "umcg", "365"));
    // The evaluator's share moved to the node: the CA keeps none.
    assert!(issued.contains("OPRF key share"), "{issued}");
    assert!(nodes.join("umcg.share").exists());
    assert!(!ca.join("shares/umcg.share").exists());
    let shown = ok(&zorgmesh(&[
        "certs",
        "show",
        s(&nodes.join("umcg.crt")),
        "--ca",
        s(&ca.join("ca.crt")),
    ]));
    assert!(
        shown.contains("UMC Groningen") && shown.contains("valid now") && shown.contains("noord"),
        "{shown}"
    );

    // A certificate of another CA is refused with a clear message.
    ok(&issue(&other, &nodes, "intruder", "365"));
    let err = failed(&zorgmesh(&[
        "certs",
        "show",
        s(&nodes.join("intruder.crt")),
        "--ca",
        s(&ca.join("ca.crt")),
    ]));
    assert!(err.contains("signature of this network's CA"), "{err}");
    // Bad input.
    let err = failed(&issue(&ca, &nodes, "Bad Name", "365"));
    assert!(err.contains("node name"), "{err}");
    std::fs::write(dir.path().join("garbage.crt"), "hello").unwrap();
    let err = failed(&zorgmesh(&[
        "certs",
        "show",
        s(&dir.path().join("garbage.crt")),
        "--ca",
        s(&ca.join("ca.crt")),
    ]));
    assert!(err.contains("PEM"), "{err}");

    // Rotation: the CA issues the next key and certificate for the same node beside its
    // files; a second rotation waits until the first is activated; another CA's node is
    // refused.
    let rotate = |certificate: &Path| {
        zorgmesh(&[
            "certs",
            "rotate",
            "--ca-dir",
            s(&ca),
            "--certificate",
            s(certificate),
        ])
    };
    let rotated = ok(&rotate(&nodes.join("umcg.crt")));
    assert!(
        rotated.contains("new key") && rotated.contains("admin/rotate"),
        "{rotated}"
    );
    let shown = ok(&zorgmesh(&[
        "certs",
        "show",
        s(&nodes.join("umcg.next.crt")),
        "--ca",
        s(&ca.join("ca.crt")),
    ]));
    assert!(
        shown.contains("UMC Groningen") && shown.contains("valid now"),
        "{shown}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(nodes.join("umcg.next.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let err = failed(&rotate(&nodes.join("umcg.crt")));
    assert!(err.contains("already exists"), "{err}");
    let err = failed(&rotate(&nodes.join("intruder.crt")));
    assert!(err.contains("not a certificate of this network"), "{err}");
}

/// `count` distinct ports free for both TCP and UDP (all held until every one is chosen,
/// so the system cannot hand out one twice).
fn free_ports(count: usize) -> Vec<u16> {
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", port)) {
            held.push((port, tcp, udp));
        }
    }
    held.into_iter().map(|(port, _, _)| port).collect()
}

struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn topology_text(ports: &[u16]) -> String {
    format!(
        r#"network = "clinet"
[[region]]
name = "noord"
[[region]]
name = "zuid"
[[node]]
name = "umcg"
region = "noord"
role = "institution"
organisation_ura = "00001001"
organisation_name = "UMCG"
http = "127.0.0.1:{}"
gossip = "127.0.0.1:{}"
data = "127.0.0.1:{}"
[[node]]
name = "rp-zuid"
region = "zuid"
role = "replication-platform"
organisation_ura = "00001002"
organisation_name = "Replicatieplatform Zuid"
http = "127.0.0.1:{}"
gossip = "127.0.0.1:{}"
data = "127.0.0.1:{}"
"#,
        ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_generate_and_two_node_processes_resolve_a_dossier() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(6);
    let file = dir.path().join("mesh.toml");

    // check names every problem
    let bad = topology_text(&ports)
        .replace("name = \"rp-zuid\"", "name = \"umcg\"")
        .replace("region = \"zuid\"\nrole", "region = \"oost\"\nrole");
    std::fs::write(&file, bad).unwrap();
    let err = failed(&zorgmesh(&["topology", "check", s(&file)]));
    assert!(
        err.contains("used twice") && err.contains("unknown region \"oost\""),
        "{err}"
    );

    std::fs::write(&file, topology_text(&ports)).unwrap();
    ok(&zorgmesh(&["topology", "check", s(&file)]));
    let out = dir.path().join("mesh");
    let generated = ok(&zorgmesh(&[
        "topology",
        "generate",
        s(&file),
        "--out",
        s(&out),
    ]));
    assert!(generated.contains("node run --config"), "{generated}");

    let start = |name: &str| {
        let config = out.join("nodes").join(name).join("node.toml");
        NodeProcess(
            Command::new(env!("CARGO_BIN_EXE_zorgmesh"))
                .args(["node", "run", "--config", s(&config)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    // A node key others can read is refused, like ssh refuses an open private key.
    let key = out.join("nodes").join("umcg").join("node.key");
    let mode = |path: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
            & 0o777
    };
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap()
    };
    assert_eq!(mode(&key), 0o600);
    set_mode(&key, 0o644);
    let config = out.join("nodes").join("umcg").join("node.toml");
    let err = failed(&zorgmesh(&["node", "run", "--config", s(&config)]));
    assert!(
        err.contains("too open") && err.contains("chmod 600"),
        "{err}"
    );
    set_mode(&key, 0o600);

    // Clients: an EHR writing at umcg, a viewer reading at rp-zuid, an operator's admin
    // client at umcg. Each gets its credentials (its private key) beside the config.
    let node_config = |name: &str| out.join("nodes").join(name).join("node.toml");
    let said = ok(&zorgmesh(&[
        "client",
        "add",
        "--config",
        s(&node_config("umcg")),
        "--id",
        "ehr",
        "--name",
        "EPD UMCG",
        "--scope",
        "system/*.cruds",
    ]));
    let ehr_credentials = out.join("nodes").join("umcg").join("ehr.credentials.json");
    assert!(said.contains("credentials"), "{said}");
    assert_eq!(mode(&ehr_credentials), 0o600);
    ok(&zorgmesh(&[
        "client",
        "add",
        "--config",
        s(&node_config("rp-zuid")),
        "--id",
        "viewer",
        "--scope",
        "system/*.rs",
    ]));
    let viewer_credentials = out
        .join("nodes")
        .join("rp-zuid")
        .join("viewer.credentials.json");
    ok(&zorgmesh(&[
        "client",
        "add",
        "--config",
        s(&node_config("umcg")),
        "--id",
        "ops",
        "--scope",
        "zorgmesh.admin",
    ]));
    let ops_credentials = out.join("nodes").join("umcg").join("ops.credentials.json");
    let err = failed(&zorgmesh(&[
        "client",
        "add",
        "--config",
        s(&node_config("umcg")),
        "--id",
        "ehr",
        "--scope",
        "system/*.rs",
    ]));
    assert!(
        err.contains("registered already") || err.contains("exists"),
        "{err}"
    );
    let err = failed(&zorgmesh(&[
        "client",
        "add",
        "--config",
        s(&node_config("umcg")),
        "--id",
        "app",
        "--scope",
        "system/*.rs",
        "--patient-bsn",
        "999911120",
        "--credentials",
        s(&dir.path().join("app.json")),
    ]));
    assert!(err.contains("does not fit"), "{err}");
    let listed = ok(&zorgmesh(&[
        "client",
        "list",
        "--config",
        s(&node_config("umcg")),
    ]));
    assert!(
        listed.contains("ehr") && listed.contains("ops") && listed.contains("active"),
        "{listed}"
    );

    let _umcg = start("umcg");
    let _rp = start("rp-zuid");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = |port: u16| format!("http://127.0.0.1:{port}/fhir");
    for port in [ports[0], ports[3]] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/metadata", base(port))).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "node on {port} did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Without a token nothing but discovery answers; `client token` gets one.
    let response = client
        .get(format!("{}/Patient", base(ports[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let token = |credentials: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_zorgmesh"))
            .args(["client", "token", "--credentials", s(credentials)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let ehr_token = token(&ehr_credentials);
    let viewer_token = token(&viewer_credentials);
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:a", "resource": {"resourceType": "Patient", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:b", "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}, "subject": {"reference": "urn:uuid:a"}}, "request": {"method": "POST", "url": "Observation"}}
    ]});
    // Gossip needs the two processes connected; retry the write's effect, not the write.
    let response = client
        .post(base(ports[0]))
        .bearer_auth(&ehr_token)
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let url = format!(
        "{}/Patient/$dossier?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911120",
        base(ports[3])
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let dossier: Value = loop {
        let dossier: Value = client
            .get(&url)
            .bearer_auth(&viewer_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if dossier["total"] == 2 {
            break dossier;
        }
        assert!(
            Instant::now() < deadline,
            "dossier never resolved across processes: {dossier}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let origins: Vec<&str> = dossier["entry"][0]["resource"]["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["code"].as_str())
        .collect();
    assert!(origins.contains(&"umcg"), "{dossier}");

    // The data directories and every file in them are their owner's alone.
    let mut open = Vec::new();
    let mut pending = vec![out.join("nodes").join("umcg").join("data")];
    assert!(pending[0].is_dir(), "{pending:?}");
    while let Some(path) = pending.pop() {
        let wanted = if path.is_dir() { 0o700 } else { 0o600 };
        if mode(&path) != wanted {
            open.push(format!("{} {:o}", path.display(), mode(&path)));
        }
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(open.is_empty(), "readable by others: {open:?}");

    // An online backup of the running umcg; a check of a running node's store is refused.
    let umcg_url = format!("http://127.0.0.1:{}", ports[0]);
    let err = failed(&zorgmesh(&["node", "backup", "--node", &umcg_url]));
    assert!(err.contains("--credentials"), "{err}");
    let err = failed(&zorgmesh(&[
        "node",
        "backup",
        "--node",
        &umcg_url,
        "--credentials",
        s(&ehr_credentials),
    ]));
    assert!(err.contains("admin"), "{err}");
    let backed_up = ok(&zorgmesh(&[
        "node",
        "backup",
        "--node",
        &umcg_url,
        "--credentials",
        s(&ops_credentials),
    ]));
    let backup = backed_up
        .split("backup written by the node to ")
        .nth(1)
        .and_then(|rest| rest.split(" (").next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("{backed_up}"));
    assert!(
        backup.starts_with(out.join("nodes").join("umcg").join("backups")),
        "{backed_up}"
    );
    assert_eq!(mode(&backup), 0o600);
    let digest_of = |said: &str| {
        said.lines()
            .find_map(|l| l.strip_prefix("content digest ").map(str::to_owned))
            .unwrap_or_else(|| panic!("no digest in {said}"))
    };
    let digest = digest_of(&backed_up);
    let err = failed(&zorgmesh(&["node", "check", "--config", s(&config)]));
    assert!(err.contains("in use by another process"), "{err}");

    // Restore it into a new directory: same content, and a restore never overwrites.
    let restored = dir.path().join("restored");
    let said = ok(&zorgmesh(&[
        "node",
        "restore",
        "--from",
        s(&backup),
        "--data-dir",
        s(&restored),
    ]));
    assert_eq!(digest_of(&said), digest, "{said}");
    let said = ok(&zorgmesh(&["node", "check", "--data-dir", s(&restored)]));
    assert!(said.contains("is sound"), "{said}");
    assert_eq!(digest_of(&said), digest, "{said}");
    let err = failed(&zorgmesh(&[
        "node",
        "restore",
        "--from",
        s(&backup),
        "--data-dir",
        s(&restored),
    ]));
    assert!(err.contains("is not empty"), "{err}");
    // A cut backup is refused and leaves nothing behind.
    let cut = dir.path().join("cut.zmbackup");
    let bytes = std::fs::read(&backup).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 20]).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let err = failed(&zorgmesh(&[
        "node",
        "restore",
        "--from",
        s(&cut),
        "--data-dir",
        s(&elsewhere),
    ]));
    assert!(err.contains("not a sound zorgmesh backup"), "{err}");
    assert!(!elsewhere.exists());

    // A revoked client's tokens stop working within a second or so.
    let said = ok(&zorgmesh(&[
        "client",
        "revoke",
        "--config",
        s(&node_config("rp-zuid")),
        "--id",
        "viewer",
    ]));
    assert!(said.contains("revoked"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client
            .get(&url)
            .bearer_auth(&viewer_token)
            .send()
            .await
            .unwrap()
            .status();
        if status.as_u16() == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a revoked client's token still works: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out_of_date = Command::new(env!("CARGO_BIN_EXE_zorgmesh"))
        .args(["client", "token", "--credentials", s(&viewer_credentials)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out_of_date.stderr);
    assert!(
        !out_of_date.status.success() && err.contains("invalid_client"),
        "{err}"
    );

    // The documented restore: stop the node, put the restored store in its place, start it.
    drop(_umcg);
    let data = out.join("nodes").join("umcg").join("data");
    std::fs::rename(&data, out.join("nodes").join("umcg").join("data.old")).unwrap();
    std::fs::rename(&restored, &data).unwrap();
    let _umcg = start("umcg");
    let search = format!(
        "{}/Patient?identifier=http://fhir.nl/fhir/NamingSystem/bsn|999911120",
        base(ports[0])
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(&search).bearer_auth(&ehr_token).send().await {
            if r.status().is_success() {
                let found: Value = r.json().await.unwrap();
                assert_eq!(found["total"], 1, "{found}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the restored node did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The access trail: intact while a node runs (checked against its certificate's key),
    // intact after a kill, and an edited entry is named.
    let said = ok(&zorgmesh(&[
        "audit",
        "verify",
        "--config",
        s(&node_config("rp-zuid")),
    ]));
    assert!(said.contains("access trail intact"), "{said}");
    let killed = out.join("nodes").join("umcg").join("data.old");
    let said = ok(&zorgmesh(&["audit", "verify", "--data", s(&killed)]));
    assert!(said.contains("access trail intact"), "{said}");
    let (trail, _) = zorgmesh_node::audit::trail_file::trail_paths(&killed);
    let mut entries: Vec<_> = zorgmesh_node::audit::trail_file::read_entries(&trail, u64::MAX)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(entries.len() > 2, "{} entries", entries.len());
    entries[0].record.what = "nothing happened".into();
    let mut bytes = Vec::new();
    for entry in &entries {
        zorgmesh_node::audit::trail_file::push_frame(&mut bytes, &entry.to_bytes());
    }
    std::fs::write(&trail, bytes).unwrap();
    let err = failed(&zorgmesh(&["audit", "verify", "--data", s(&killed)]));
    assert!(err.contains("entry 1 was altered"), "{err}");
    let err = failed(&zorgmesh(&[
        "audit",
        "verify",
        "--data",
        s(&dir.path().join("nowhere")),
    ]));
    assert!(err.contains("no access trail here"), "{err}");
}

#[test]
fn node_run_names_what_is_wrong_with_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let err = failed(&zorgmesh(&[
        "node",
        "run",
        "--config",
        s(&dir.path().join("missing.toml")),
    ]));
    assert!(err.contains("cannot read config"), "{err}");

    let base = "name = \"umcg\"\n[trust]\nca_certificate = \"ca.crt\"\nnode_certificate = \"node.crt\"\nnode_key = \"node.key\"\nevaluator_set = \"evaluators.pem\"\n";
    let write = |text: &str| {
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let err = failed(&zorgmesh(&[
        "node",
        "run",
        "--config",
        s(&write(&format!("colour = \"blue\"\n{base}"))),
    ]));
    assert!(err.contains("colour"), "{err}");
    let err = failed(&zorgmesh(&[
        "node",
        "run",
        "--config",
        s(&write(&format!(
            "{base}[publishing]\nbatch_max_entries = 0\n"
        ))),
    ]));
    assert!(err.contains("publishing.batch_max_entries"), "{err}");
    let err = failed(&zorgmesh(&[
        "node",
        "run",
        "--config",
        s(&write(&format!("data_listen = \"0.0.0.0:7000\"\n{base}"))),
    ]));
    assert!(err.contains("data_advertise"), "{err}");
    // Valid config, missing trust material: the file is named.
    let err = failed(&zorgmesh(&["node", "run", "--config", s(&write(base))]));
    assert!(err.contains("ca.crt"), "{err}");
}

#[test]
fn sim_run_and_sweep_write_reports_tables_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulation/scenarios/small.toml");
    let out = dir.path().join("run");
    let stdout = ok(&zorgmesh(&[
        "sim",
        "run",
        s(&scenario),
        "--seed",
        "2",
        "--out",
        s(&out),
    ]));
    assert!(
        stdout.contains("fault: zuid-7 revoked at 40 s: absorbed"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["converged"], true);
    assert_eq!(
        report["propagation"]["cdf_ms"].as_array().unwrap().len(),
        201
    );
    assert_eq!(report["per_node"].as_array().unwrap().len(), 20);
    for plot in [
        "propagation-cdf.svg",
        "traffic-per-node.svg",
        "index-memory-per-node.svg",
        "faults.svg",
    ] {
        let svg = std::fs::read_to_string(out.join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("small"), "{plot}");
    }

    let sweep = dir.path().join("sweep");
    let stdout = ok(&zorgmesh(&[
        "sim",
        "sweep",
        s(&scenario),
        "--vary",
        "batch_window_ms=100,1000",
        "--out",
        s(&sweep),
    ]));
    assert!(
        stdout.contains("| 100 |") && stdout.contains("| 1000 |"),
        "{stdout}"
    );
    let table = std::fs::read_to_string(sweep.join("sweep.md")).unwrap();
    assert!(
        table.contains("best p99") && table.contains("least traffic"),
        "{table}"
    );
    assert!(sweep.join("batch_window_ms_1000/report.json").exists());
    assert!(sweep.join("sweep-p99.svg").exists());

    let error = failed(&zorgmesh(&[
        "sim",
        "sweep",
        s(&scenario),
        "--vary",
        "mesh_size=4",
        "--out",
        s(&sweep),
    ]));
    assert!(error.contains("no setting mesh_size"), "{error}");
}
