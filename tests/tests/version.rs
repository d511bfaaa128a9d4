//! `tradebars-feeder --version` names the tradebars release: the extension's version, which is
//! the version of the Debian package (scripts/package.sh).

use tradebars_tests::{feeder_bin, text};

#[test]
fn the_feeder_reports_the_extension_version() {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../extension/Cargo.toml"),
    )
    .expect("extension/Cargo.toml");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the extension's version");
    let out = std::process::Command::new(feeder_bin())
        .arg("--version")
        .output()
        .expect("tradebars-feeder --version");
    assert!(out.status.success());
    assert_eq!(text(&out).trim(), format!("tradebars-feeder {version}"));
}
