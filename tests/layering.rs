//! The library's concept folders depend on each other in one direction only: no module cycles.
//! Reads `crates/volback/src` and follows every `crate::<module>` path outside comments and
//! test code, then checks that the graph of top-level modules has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
}

/// Top-level module → the top-level modules its non-test code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in files {
        let rel = path.strip_prefix(&root.display().to_string()).unwrap();
        let top = rel
            .trim_start_matches('/')
            .split(['/', '.'])
            .next()
            .unwrap()
            .to_string();
        if top == "lib" || rel.ends_with("/tests.rs") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap();
        let entry = deps.entry(top.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    entry.insert(name);
                }
            }
        }
    }
    deps
}

#[test]
fn concept_folders_have_no_cycles() {
    let deps = graph();
    assert!(deps.len() > 8, "the source tree was not found: {deps:?}");
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == n) {
            panic!("module cycle: {} -> {n}", path[at..].join(" -> "));
        }
        path.push(n.to_string());
        for d in deps.get(n).into_iter().flatten() {
            visit(d, deps, path, done);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in deps.keys() {
        visit(n, &deps, &mut Vec::new(), &mut done);
    }
}

/// The layers a newcomer is told about in `lib.rs`: the stored formats and the stores know
/// nothing of containers, backups, restores or the collector.
#[test]
fn formats_and_stores_sit_below_the_engine() {
    let deps = graph();
    for low in ["format", "store", "chunker", "index"] {
        for high in ["container", "backup", "restore", "gc", "verify", "driver"] {
            assert!(
                !deps[low].contains(high),
                "{low} depends on {high}: {:?}",
                deps[low]
            );
        }
    }
}
