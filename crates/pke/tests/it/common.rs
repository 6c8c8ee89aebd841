use std::path::PathBuf;
use std::sync::OnceLock;

use pke::io::checkpoint::Checkpoint;

/// The shared fixtures folder (`../shared/fixtures` beside the repository, or `$PKE_FIXTURES`).
pub fn fixtures_dir() -> PathBuf {
    if let Ok(p) = std::env::var("PKE_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

pub fn fixture(name: &str) -> serde_json::Value {
    let p = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn load(alias: &str) -> Checkpoint {
    Checkpoint::open(alias).unwrap_or_else(|e| panic!("{e}"))
}

macro_rules! shared_model {
    ($name:ident, $alias:expr) => {
        pub fn $name() -> &'static Checkpoint {
            static M: OnceLock<Checkpoint> = OnceLock::new();
            M.get_or_init(|| load($alias))
        }
    };
}
shared_model!(smollm2, "smollm2");
shared_model!(qwen, "qwen2.5-0.5b");
shared_model!(gemma, "gemma3-270m");

/// The first six pairs of the built-in retain set: the null-space and retain paths of a default edit at
/// a fraction of the cost of generating the original replies of all 48 (what the tests check does not
/// depend on the set's size).
pub fn small_retain() -> Vec<pke::edit::Probe> {
    pke::edit::builtin_retain().into_iter().take(6).collect()
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}
pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// config/presets/hotspot.toml: pke's hotspot edit (the top share of the located `down_proj` columns in
/// the null space of benign keys; the default until 2026-12-05, when the intent gate became it). The tests
/// of the hotspot mechanics resolve their parameters on it: `EditParams::resolve(Method::Pke,
/// Some(&hotspot()), ...)`.
pub fn hotspot() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/presets/hotspot.toml")
}
