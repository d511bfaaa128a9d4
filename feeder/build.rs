//! The feeder reports the tradebars release it belongs to, which is the extension's version
//! (extension/Cargo.toml), so `tradebars-feeder --version` names the version of the package.

fn main() {
    let manifest = "../extension/Cargo.toml";
    println!("cargo:rerun-if-changed={manifest}");
    let version = std::fs::read_to_string(manifest)
        .ok()
        .and_then(|text| {
            text.lines()
                .skip_while(|l| l.trim() != "[package]")
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("version = \"")
                        .and_then(|v| v.strip_suffix('"'))
                        .map(String::from)
                })
        })
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
    println!("cargo:rustc-env=TRADEBARS_VERSION={version}");
}
