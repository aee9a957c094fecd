//! The suite holds every test file: with `autotests = false` in Cargo.toml, a file in
//! `tests/` that `tests/suite.rs` does not name as a module is never compiled, so its
//! tests would silently not run.

use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn every_file_in_tests_is_a_module_of_the_suite() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|name| name.strip_suffix(".rs").map(str::to_string))
        .filter(|name| name != "suite")
        .chain(["support".to_string()])
        .collect();
    let suite = std::fs::read_to_string(dir.join("suite.rs")).unwrap();
    let modules: BTreeSet<String> =
        suite.lines().filter_map(|line| line.strip_prefix("mod ")?.strip_suffix(';')).map(str::to_string).collect();
    assert!(modules.contains("layout") && modules.len() > 20, "modules read from suite.rs: {modules:?}");
    assert_eq!(files, modules, "tests/*.rs (and support/) against the modules of tests/suite.rs");
}
