//! Tollgate's budget ledger: the pure budget state machine ([`state`]), its
//! openraft glue over sled ([`store`], [`network`]), group commit
//! ([`proposer`]) and the ledger, admin and Raft gRPC services
//! ([`service`]). Only this crate knows openraft and sled.
//!
//! The modules form layers; each uses only those below it (a test checks):
//!
//! | layer | modules |
//! |---|---|
//! | 0 | `money` |
//! | 1 | `state` (pure: no IO, no clock) |
//! | 2 | `codec` |
//! | 3 | `raft_types` |
//! | 4 | `auth`, `metrics` |
//! | 5 | `store`, `network` |
//! | 6 | `proposer` |
//! | 7 | `probe`, `convert` |
//! | 8 | `service` (one file per gRPC service) |
//! | 9 | `node` (wiring) |
#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod convert;
pub mod metrics;
pub mod money;
pub mod network;
pub mod node;
pub mod probe;
pub mod proposer;
pub mod raft_types;
pub mod service;
pub mod state;
pub mod store;

#[cfg(test)]
mod layering {
    /// Each module's layer, as the crate documentation lists them.
    const LAYERS: [(&str, u32); 14] = [
        ("money", 0),
        ("state", 1),
        ("codec", 2),
        ("raft_types", 3),
        ("auth", 4),
        ("metrics", 4),
        ("store", 5),
        ("network", 5),
        ("proposer", 6),
        ("probe", 7),
        ("convert", 7),
        ("service", 8),
        ("node", 9),
        ("lib", 10),
    ];

    fn layer(module: &str) -> u32 {
        LAYERS.iter().find(|(m, _)| *m == module).unwrap_or_else(|| panic!("module {module} has no layer")).1
    }

    /// The top-level module a source file belongs to.
    fn module_of(path: &std::path::Path, src: &std::path::Path) -> String {
        let rel = path.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        first.trim_end_matches(".rs").to_string()
    }

    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_module_uses_only_the_layers_below_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        assert!(all.len() > 20, "found only {} files", all.len());
        let mut violations = Vec::new();
        for path in &all {
            let module = module_of(path, &src);
            let code: Vec<String> = std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(str::to_string)
                .collect();
            let text = code.join("\n");
            for (i, _) in text.match_indices("crate::") {
                let used: String =
                    text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                // `crate::{…}` groups are not used in this crate (so each
                // use names its module); the bare word here is this test's own.
                if used.is_empty() {
                    continue;
                }
                if used != module && layer(&used) >= layer(&module) {
                    violations.push(format!("{} ({module}) uses crate::{used}", path.display()));
                }
            }
        }
        assert!(violations.is_empty(), "{violations:#?}");
    }
}
