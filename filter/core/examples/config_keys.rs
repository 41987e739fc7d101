//! Prints every configuration key (path, kind, default, range, meaning) as JSON:
//! the one table tests/test_config_table.py checks the docs, the Helm schema and
//! the Istio example against.

fn main() {
    let keys: Vec<serde_json::Value> = ingero_fleet_core::config::key_table().iter().map(|k| k.to_json()).collect();
    println!("{:#}", serde_json::Value::Array(keys));
}
