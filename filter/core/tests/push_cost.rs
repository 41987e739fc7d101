//! The work one push costs grows linearly with its resources, whatever their
//! ids (issue 16 finding 1: a linear search per resource made a push of 9 900
//! resources with a shared 224-byte id prefix cost an Envoy worker 3.5 s).
//!
//! Deterministic: callgrind counts the instructions `push::extract` executes
//! (no clocks). The test re-runs this binary under valgrind, once per push
//! shape, in a child mode that builds one push and extracts it.

#[cfg(test)] // clippy allows unwrap and panic in tests (clippy.toml), also in their helpers
mod cost {
    use ingero_fleet_core::config::Config;
    use ingero_fleet_core::otlp::{
        AnyValue, ExportRequest, KeyValue, Metric, NumberPoint, PointValue, ResourceMetrics,
    };
    use ingero_fleet_core::push::extract;
    use std::borrow::Cow;
    use std::process::Command;

    const CHILD: &str = "INGERO_PUSH_COST_CHILD";

    fn text(key: &'static str, value: String) -> KeyValue<'static> {
        KeyValue { key: Cow::Borrowed(key), value: AnyValue::String(Cow::Owned(value)) }
    }

    /// A node id of `len` bytes and then its number: all ids share their first
    /// `len` bytes when `shared`, else they differ from the first byte on.
    fn node_id(i: usize, len: usize, shared: bool) -> String {
        let head = if shared { 0 } else { (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) };
        let mut id: String = format!("{head:016x}").chars().cycle().take(len).collect();
        id.push_str(&i.to_string());
        id
    }

    /// A push of `resources` distinct nodes of one cluster.
    fn push(resources: usize, id_len: usize, shared: bool) -> ExportRequest<'static> {
        let resource_metrics = (0..resources)
            .map(|i| ResourceMetrics {
                attributes: vec![
                    text("ingero.cluster.id", "c1".into()),
                    text("ingero.node.id", node_id(i, id_len, shared)),
                ],
                metrics: vec![Metric {
                    name: Cow::Borrowed("ingero.node.health_score"),
                    points: vec![NumberPoint {
                        attributes: vec![text("ingero.node.state", "active".into())],
                        time_unix_nano: 1_700_000_000_000_000_000,
                        value: PointValue::Double(0.9),
                    }],
                }],
            })
            .collect();
        ExportRequest { resource_metrics }
    }

    /// Child mode: extract one push of the shape in the environment.
    #[test]
    fn child_extracts_one_push() {
        let Ok(shape) = std::env::var(CHILD) else { return };
        let mut parts = shape.split(',');
        let mut next = || parts.next().unwrap().parse::<usize>().unwrap();
        let (count, id_len, shared) = (next(), next(), next() == 1);
        let request = push(count, id_len, shared);
        let config = Config { max_id_bytes: 4096, ..Config::default() };
        let batch = extract(request, None, &config);
        assert_eq!(batch.scores.len(), count);
    }

    /// Instructions `extract` ran for a push of `resources` ids of `id_len` bytes
    /// and a number, their first `id_len` bytes `shared` or not.
    fn instructions(resources: usize, id_len: usize, shared: bool) -> u64 {
        let me = std::env::current_exe().unwrap();
        let out = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null", "--toggle-collect=*push::extract"])
            .arg(me)
            .args(["--exact", "cost::child_extracts_one_push", "--test-threads=1", "--quiet"])
            .env(CHILD, format!("{resources},{id_len},{}", u8::from(shared)))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let collected =
            stderr.lines().find_map(|l| l.split("Collected :").nth(1)).unwrap_or_else(|| panic!("{stderr}"));
        let n: u64 = collected.trim().parse().unwrap();
        assert!(n > 0, "the child did not run extract:\n{stderr}");
        n
    }

    #[test]
    fn cost_per_resource_is_flat_in_push_size_and_id_prefixes() {
        if Command::new("valgrind").arg("--version").output().is_err() {
            panic!("valgrind is missing: scripts/setup installs it (scripts/setup.d/30-valgrind)");
        }
        let per = |resources: usize, id_len: usize, shared: bool| {
            instructions(resources, id_len, shared) as f64 / resources as f64
        };
        let (small, large) = (per(250, 0, false), per(2_000, 0, false));
        let (distinct, shared) = (per(2_000, 224, false), per(2_000, 224, true));
        let shared_small = per(250, 224, true);
        eprintln!(
            "instructions per resource: short ids {small:.0} (250 resources), {large:.0} (2 000); 224-byte ids, \
             2 000 resources: distinct {distinct:.0}, one shared prefix {shared:.0} (250 resources: {shared_small:.0})"
        );
        assert!(large < 1.25 * small, "8x the resources made each cost {:.2}x", large / small);
        assert!(shared < 1.25 * shared_small, "8x the prefixed resources made each cost {:.2}x", shared / shared_small);
        assert!(shared < 1.25 * distinct, "a shared id prefix made each resource cost {:.2}x", shared / distinct);
    }
}
