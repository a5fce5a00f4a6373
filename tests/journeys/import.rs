//! Importing customers from CSV: all rows or none.

use crate::support::{DataDir, fixtures};

const NOW: &str = "2026-11-24T09:00:00+09:00";

#[test]
fn the_fixture_file_imports_fifty_customers_with_their_numbers() {
    let data = DataDir::new();
    let csv = fixtures().join("customers.csv");
    assert_eq!(
        data.run_at(NOW, &["customer", "import", csv.to_str().unwrap()])
            .ok()["imported"],
        50
    );
    let list = data.run_at(NOW, &["customer", "list"]).ok();
    assert_eq!(list.as_array().unwrap().len(), 50);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "未対応")
    );
    let first = data.run_at(NOW, &["customer", "show", "cus-0001"]).ok();
    assert_eq!(first["company"], "株式会社さくら物産");
    // "+81-3-6587-6723" is kept as written and compares as 0365876723.
    assert_eq!(first["phones"][0]["number"], "+81-3-6587-6723");
}

#[test]
fn a_file_with_malformed_rows_imports_nothing_and_names_the_first_bad_line() {
    let data = DataDir::new();
    let csv = fixtures().join("customers.csv");
    data.run_at(NOW, &["customer", "import", csv.to_str().unwrap()])
        .ok();
    let before = data.fingerprint();
    let bad = fixtures().join("customers-malformed.csv");
    let msg = data
        .run_at(NOW, &["customer", "import", bad.to_str().unwrap()])
        .refused("bad-import");
    assert!(msg.contains("3 bad row(s)"), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert_eq!(data.fingerprint(), before);
    // The valid row of the malformed file was not imported either.
    data.run_at(NOW, &["customer", "show", "cus-9001"])
        .refused("unknown-customer");
}

#[test]
fn importing_the_same_file_twice_is_refused_whole() {
    let data = DataDir::new();
    let csv = fixtures().join("customers.csv");
    data.run_at(NOW, &["customer", "import", csv.to_str().unwrap()])
        .ok();
    let before = data.fingerprint();
    data.run_at(NOW, &["customer", "import", csv.to_str().unwrap()])
        .refused("customer-exists");
    assert_eq!(data.fingerprint(), before);
}

#[test]
fn a_file_with_the_wrong_header_or_missing_is_refused() {
    let data = DataDir::new();
    let path = data.path().join("wrong.csv");
    std::fs::write(&path, "name,tel\nfoo,03-1234-5678\n").unwrap();
    let msg = data
        .run_at(NOW, &["customer", "import", path.to_str().unwrap()])
        .refused("bad-import");
    assert!(msg.contains("header"), "{msg}");
    data.run_at(NOW, &["customer", "import", "/nonexistent/customers.csv"])
        .refused("unreadable-file");
    assert!(
        data.run_at(NOW, &["customer", "list"])
            .ok()
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_file_saved_by_a_spreadsheet_with_a_byte_order_mark_imports() {
    let data = DataDir::new();
    let path = data.path().join("excel.csv");
    let body = std::fs::read_to_string(fixtures().join("customers.csv")).unwrap();
    std::fs::write(&path, format!("\u{feff}{body}")).unwrap();
    assert_eq!(
        data.run_at(NOW, &["customer", "import", path.to_str().unwrap()])
            .ok()["imported"],
        50
    );
}
