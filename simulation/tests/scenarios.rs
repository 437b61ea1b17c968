//! The example scenarios run, deterministically, and converge after their faults.

use zorgmesh_simulation::{run, Scenario};

fn small() -> Scenario {
    Scenario::parse(include_str!("../scenarios/small.toml")).unwrap()
}

#[test]
fn the_same_scenario_and_seed_give_a_byte_identical_report() {
    let scenario = small();
    let first = run(&scenario, 7).to_json();
    let second = run(&scenario, 7).to_json();
    assert_eq!(first, second);
    let other = run(&scenario, 8).to_json();
    assert_ne!(first, other, "another seed draws another run");
}

#[test]
fn every_fault_is_absorbed_and_the_network_converges() {
    let report = run(&small(), 1);
    println!("{}", report.summary());
    assert!(report.converged, "{}", report.to_json());
    assert_eq!(report.faults.len(), 5);
    for fault in &report.faults {
        assert!(fault.absorbed_after_s.is_some(), "{}", report.summary());
    }
    assert!(
        report.lost > 0,
        "the partition and the crash dropped messages"
    );
    assert!(report.retransmissions > 0, "the lossy link retransmitted");
    assert!(
        report.sync_batches > 0,
        "anti-entropy filled what the partition lost"
    );
    assert!(
        report.writes_deferred > 0,
        "writes to the crashed node waited"
    );
    assert!(
        report.writes_waiting_for_keys > 0,
        "new patients waited for the evaluators"
    );
    assert!(report.live_entries_per_node > 0);
    assert!(report.propagation.p50_ms <= report.propagation.p99_ms);
    // Without faults, a 20-node mesh with 5-20 ms links spreads in well under a second of
    // simulated time after the batch window.
    let mut calm = small();
    calm.faults.clear();
    calm.links.between[0].loss = 0.0;
    let calm = run(&calm, 1);
    assert!(calm.converged);
    assert!(calm.propagation.p99_ms < 1_000, "{}", calm.summary());
    assert_eq!(calm.lost, 0);
}

#[test]
fn a_revoked_nodes_entries_leave_every_simulated_index() {
    let with = run(&small(), 3);
    assert_eq!(with.revoked_entries_left, 0, "{}", with.to_json());
    let mut kept = small();
    kept.faults
        .retain(|f| !matches!(f, zorgmesh_simulation::scenario::Fault::Revoke { .. }));
    let without = run(&kept, 3);
    assert!(with.converged && without.converged);
    // The revoked node had published: its entries are in every index without the
    // revocation, and in none with it.
    assert!(
        with.live_entries_per_node < without.live_entries_per_node,
        "{} vs {}",
        with.live_entries_per_node,
        without.live_entries_per_node
    );
}

#[test]
fn preloaded_entries_change_only_the_index_figures() {
    // The national model starts from the state after the load (entries written into the
    // measured stores, not gossiped). That is exact only if no verdict reads the entries:
    // the same scenario with and without a preload must give the same report, the index
    // figures aside.
    let without = run(&small(), 5);
    let mut scenario = small();
    scenario.workload.holders_per_patient = 3;
    let with = run(&scenario, 5);
    assert!(with.converged && without.converged);
    let patients = scenario.workload.patients as usize;
    assert!(
        with.live_entries_per_node >= without.live_entries_per_node + patients,
        "{} vs {}",
        with.live_entries_per_node,
        without.live_entries_per_node
    );
    let strip = |report: &zorgmesh_simulation::Report| {
        let mut report = report.clone();
        report.live_entries_per_node = 0;
        report.index_bytes_per_entry = 0.0;
        for node in &mut report.per_node {
            node.live_entries = None;
            node.index_bytes = None;
        }
        report.to_json()
    };
    assert_eq!(strip(&with), strip(&without));
}

#[test]
fn a_mesh_connected_as_real_nodes_connect_converges_deterministically() {
    let mut scenario = small();
    scenario.gossip.connections = zorgmesh_simulation::scenario::Connections::Bootstrap;
    let report = run(&scenario, 9);
    assert!(report.converged, "{}", report.to_json());
    assert_eq!(report.to_json(), run(&scenario, 9).to_json());
    // Another graph than the random one: the figures differ.
    assert_ne!(report.traffic, run(&small(), 9).traffic);
}

#[test]
fn every_example_scenario_is_valid() {
    for (name, text) in [
        ("small", include_str!("../scenarios/small.toml")),
        ("thousand", include_str!("../scenarios/thousand.toml")),
        ("national", include_str!("../scenarios/national.toml")),
        (
            "national-sweep",
            include_str!("../scenarios/national-sweep.toml"),
        ),
    ] {
        let scenario = Scenario::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(scenario.name, name);
    }
    let national = Scenario::parse(include_str!("../scenarios/national.toml")).unwrap();
    assert_eq!(national.node_names().len(), 5000);
    assert_eq!(
        national.workload.patients * u64::from(national.workload.holders_per_patient),
        90_000_000
    );
}

#[test]
fn bad_scenarios_are_refused_with_the_reason() {
    let text = include_str!("../scenarios/small.toml");
    let unknown = text.replace(
        "regions = [\"noord\", \"zuid\"]\nat_s",
        "regions = [\"noord\", \"west\"]\nat_s",
    );
    let error = Scenario::parse(&unknown).unwrap_err().to_string();
    assert!(error.contains("unknown region west"), "{error}");
    let error = Scenario::parse("name = 1").unwrap_err().to_string();
    assert!(error.contains("not valid"), "{error}");
    let degree = text.replace("mesh_degree = 6", "mesh_degree = 20");
    let error = Scenario::parse(&degree).unwrap_err().to_string();
    assert!(error.contains("mesh_degree"), "{error}");
    let node = text.replace("node = \"zuid-3\"", "node = \"zuid-11\"");
    let error = Scenario::parse(&node).unwrap_err().to_string();
    assert!(error.contains("unknown node zuid-11"), "{error}");
    let restart = text.replace("restart_s = 25", "restart_s = 5");
    let error = Scenario::parse(&restart).unwrap_err().to_string();
    assert!(error.contains("restarts after it crashes"), "{error}");
}
