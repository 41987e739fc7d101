//! Stores the dashboard page gzip-compressed in the binary: the .wasm is held
//! to a size budget and the page is served rarely (inflated once, on first use).

use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=src/dashboard.html");
    let page = std::fs::read("src/dashboard.html")?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&page)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("dashboard.html.gz");
    std::fs::write(out, gz.finish()?)?;
    Ok(())
}
