//! Opening an access trail (`<data_dir>/audit/trail.log`) a crash, a bad disk or an editor
//! left behind: any bytes either open (a torn write zeroed) or are refused as damaged,
//! never a panic; a trail that opened opens again the same, and `audit verify` reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zorgmesh_node::audit::trail_file::{trail_paths, TrailFiles};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("zorgmesh-fuzz-trail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (trail, _) = trail_paths(&dir);
    std::fs::create_dir_all(trail.parent().unwrap()).unwrap();
    std::fs::write(&trail, data).unwrap();
    if let Ok(first) = TrailFiles::open(&dir) {
        let again = TrailFiles::open(&dir).expect("a trail that opened opens again");
        assert_eq!(again.head.sequence, first.head.sequence);
        assert_eq!(
            again.entries.acknowledged_bytes(),
            first.entries.acknowledged_bytes()
        );
        let _ = zorgmesh_node::audit::verify::verify_dir(&dir, None);
    }
    let _ = std::fs::remove_dir_all(&dir);
});
