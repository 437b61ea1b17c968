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
fn a_partitioned_network_converges_after_the_heal() {
    let report = run(&small(), 1);
    println!("{}", report.summary());
    assert!(report.converged, "{}", report.to_json());
    assert!(report.lost > 0, "the partition dropped messages");
    assert!(
        report.sync_batches > 0,
        "anti-entropy filled what the partition lost"
    );
    // Every update's patient is in every index: as many live entries as distinct
    // (patient, holder) pairs, the same on every node.
    assert!(report.live_entries_per_node > 0);
    assert!(report.propagation.p50_ms <= report.propagation.p99_ms);
    // Without a partition, a 20-node mesh with 5-20 ms links spreads in well under a second
    // of simulated time after the batch window.
    let mut calm = small();
    calm.faults.clear();
    calm.links.between[0].loss = 0.0;
    let calm = run(&calm, 1);
    assert!(calm.converged);
    assert!(calm.propagation.p99_ms < 1_000, "{}", calm.summary());
    assert_eq!(calm.lost, 0);
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
}
