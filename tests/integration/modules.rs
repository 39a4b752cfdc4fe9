//! The house plan holds: no two modules of `src/` need each other, and every file of `src/` is
//! on the map in `lib.rs` and in the Layout of `docs/design.md`. Dependencies are read from
//! the source text (`crate::` and `super::` paths outside the test module at the bottom of a
//! file); a folder's `mod.rs` may name its own children (declaring and re-exporting them).
//! Print the graph with `cargo test --test integration module_graph -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`policy::index`, `policy` for `policy/mod.rs`) to the modules it uses.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if !line.starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Every path written `crate::a::b…` or `super::a…` in `code`, as module-ish segments.
fn paths(code: &str, module: &str) -> Vec<Vec<String>> {
    let parent: Vec<String> = module
        .split("::")
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .split_last()
        .map(|(_, rest)| rest.to_vec())
        .unwrap_or_default();
    let mut found = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut segments = base.clone();
            let mut tail = rest;
            loop {
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                if end == 0 {
                    break;
                }
                segments.push(tail[..end].to_owned());
                tail = &tail[end..];
                match tail.strip_prefix("::") {
                    Some(next) => tail = next,
                    None => break,
                }
            }
            // `use crate::{a, b::c}`: each group member is a path of its own.
            if let Some(group) = tail.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for member in group.split(',') {
                    let mut path = segments.clone();
                    path.extend(
                        member
                            .trim()
                            .split("::")
                            .map(|s| s.trim_matches(|c: char| !c.is_alphanumeric() && c != '_'))
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned),
                    );
                    found.push(path);
                }
            } else {
                found.push(segments);
            }
        }
    }
    found
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // lib.rs assembles the crate and main.rs is another crate: both stand above every module.
    files.retain(|f| !matches!(module_of(&src, f).as_str(), "lib" | "main"));
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let module = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for path in paths(&code(&text), &module) {
            // The longest prefix that is a module is the one depended on.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| modules.contains(m));
            let Some(target) = target else { continue };
            let is_own_child = target.starts_with(&format!("{module}::"));
            if target != module && !is_own_child {
                uses.insert(target);
            }
        }
    }
    graph
}

/// The same graph with each folder as one module.
fn top_level(graph: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap().to_owned();
    let mut out = Graph::new();
    for (from, uses) in graph {
        let entry = out.entry(top(from)).or_default();
        entry.extend(uses.iter().map(|u| top(u)).filter(|u| *u != top(from)));
    }
    out
}

/// Every cycle found from each module, as the modules along it (each set of modules once).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if let Some(cycle) = cycle_from(node, graph) {
            let members: BTreeSet<String> = cycle.iter().cloned().collect();
            if seen.insert(members) {
                found.push(cycle);
            }
        }
    }
    found
}

/// A cycle through `start`, if there is one: a path from it back to it.
fn cycle_from(start: &str, graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        start: &str,
        graph: &Graph,
        seen: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> bool {
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if next == start {
                path.push(start.to_owned());
                return true;
            }
            if seen.insert(next.clone()) && visit(next, start, graph, seen, path) {
                return true;
            }
        }
        path.pop();
        false
    }
    let mut path = Vec::new();
    visit(start, start, graph, &mut BTreeSet::new(), &mut path).then_some(path)
}

/// Layers from the bottom: each module sits one above the highest module it uses.
fn layers(graph: &Graph) -> BTreeMap<usize, Vec<String>> {
    fn depth(node: &str, graph: &Graph, memo: &mut BTreeMap<String, usize>) -> usize {
        if let Some(&d) = memo.get(node) {
            return d;
        }
        let d = graph
            .get(node)
            .into_iter()
            .flatten()
            .map(|n| depth(n, graph, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(node.to_owned(), d);
        d
    }
    let mut memo = BTreeMap::new();
    let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for node in graph.keys() {
        out.entry(depth(node, graph, &mut memo))
            .or_default()
            .push(node.clone());
    }
    out
}

fn print(title: &str, graph: &Graph) {
    println!("{title}");
    for (from, uses) in graph {
        let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
        println!("  {from} -> {}", uses.join(", "));
    }
}

#[test]
fn module_graph_has_no_cycles() {
    let files = graph();
    let folders = top_level(&files);
    print("modules (files):", &files);
    print("modules (folders):", &folders);
    assert!(files.len() > 10, "the source tree was not read: {files:?}");
    let mut found = cycles(&folders);
    found.extend(
        cycles(&files)
            .into_iter()
            .filter(|c| c.iter().any(|m| m.contains("::"))),
    );
    let shown: Vec<String> = found.iter().map(|c| c.join(" -> ")).collect();
    assert!(
        shown.is_empty(),
        "modules need each other:\n  {}",
        shown.join("\n  ")
    );
    println!("layers, bottom first:");
    for (depth, modules) in layers(&folders) {
        println!("  {depth}: {}", modules.join(", "));
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut graph = Graph::new();
    let edge = |g: &mut Graph, a: &str, b: &str| {
        g.entry(a.to_owned()).or_default().insert(b.to_owned());
    };
    edge(&mut graph, "a", "b");
    edge(&mut graph, "b", "c");
    assert!(cycles(&graph).is_empty());
    edge(&mut graph, "c", "a");
    assert_eq!(
        cycles(&graph),
        [["a", "b", "c", "a"].map(String::from).to_vec()]
    );
}

#[test]
fn paths_are_read_from_use_groups_and_super() {
    let code = code(
        "use crate::{config::Config, policy::index::{ListId}};\nuse super::Gateway;\n// crate::admin\nlet x = crate::name::to_text(y);\n#[cfg(test)]\nuse crate::cache;\n",
    );
    let found = paths(&code, "transport::udp");
    let joined: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert!(joined.contains(&"config::Config".to_owned()), "{joined:?}");
    assert!(
        joined.contains(&"policy::index::ListId".to_owned()),
        "{joined:?}"
    );
    assert!(
        joined.contains(&"transport::Gateway".to_owned()),
        "{joined:?}"
    );
    assert!(joined.contains(&"name::to_text".to_owned()), "{joined:?}");
    assert!(
        !joined
            .iter()
            .any(|p| p.starts_with("admin") || p.starts_with("cache"))
    );
}

/// The files of `src/` as paths below it (`policy/index.rs`).
fn src_files() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    (files.iter())
        .map(|f| f.strip_prefix(&src).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The files a map names: `a.rs`, `dir/b.rs` and `dir/{mod,c}.rs` in backticks.
fn files_named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for token in text.split('`').skip(1).step_by(2) {
        let Some(stem) = token.strip_suffix(".rs") else {
            continue;
        };
        match stem.split_once('{') {
            Some((dir, names)) => {
                for name in names.trim_end_matches('}').split(',') {
                    out.insert(format!("{dir}{}.rs", name.trim()));
                }
            }
            None => {
                out.insert(token.to_owned());
            }
        }
    }
    out
}

/// Which of `files` the map in `lib.rs` (its `//!` lines) leaves out: a folder's `mod.rs` is
/// named by `folder/`, any other file by its name.
fn missing_from_map(map: &str, files: &BTreeSet<String>) -> Vec<String> {
    let named = |word: &str| {
        map.match_indices(word).any(|(at, _)| {
            let before = map[..at].chars().last();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    };
    (files.iter())
        .filter(|f| !matches!(f.as_str(), "lib.rs" | "main.rs"))
        .filter(|f| match f.strip_suffix("/mod.rs") {
            Some(dir) => !named(&format!("{dir}/")),
            None => !named(f.rsplit('/').next().unwrap()),
        })
        .cloned()
        .collect()
}

#[test]
fn every_file_of_src_is_on_the_map_and_in_the_layout() {
    let files = src_files();
    assert!(files.len() > 40, "the source tree was not read: {files:?}");
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let map: String = (lib.lines())
        .filter_map(|l| l.strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    let missing = missing_from_map(&map, &files);
    assert!(
        missing.is_empty(),
        "not on the map in src/lib.rs: {missing:?}"
    );
    let design =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/design.md"))
            .unwrap();
    let layout = design.split("## Layout").nth(1).unwrap();
    // The table's second column: `| layer | files | what they own |`.
    let column: String = (layout.split("\n## ").next().unwrap().lines())
        .filter_map(|l| l.strip_prefix('|')?.split('|').nth(1))
        .collect::<Vec<_>>()
        .join("\n");
    let named: BTreeSet<String> = (files_named(&column).into_iter())
        .filter(|f| f != "build.rs")
        .collect();
    let missing: Vec<&String> = files.difference(&named).collect();
    assert!(
        missing.is_empty(),
        "not in docs/design.md's Layout: {missing:?}"
    );
    let stale: Vec<&String> = named.difference(&files).collect();
    assert!(
        stale.is_empty(),
        "in docs/design.md's Layout, not in src/: {stale:?}"
    );
}

#[test]
fn a_file_left_off_the_map_is_found() {
    let files: BTreeSet<String> = ["gateway.rs", "policy/mod.rs", "policy/index.rs", "cache.rs"]
        .map(String::from)
        .into();
    let map = "gateway.rs ─► policy/ index.rs ─► precache.rs";
    assert_eq!(missing_from_map(map, &files), ["cache.rs"]);
    assert_eq!(
        files_named("`gateway.rs` · `policy/{mod,index}.rs` · `cache.rs`"),
        files
    );
}

/// The edges from `from` (a folder or file module) into `to`, as "a -> b" lines.
fn imports_between(graph: &Graph, from: &str, to: &str) -> Vec<String> {
    let within = |m: &str, top: &str| m == top || m.starts_with(&format!("{top}::"));
    (graph.iter())
        .filter(|(module, _)| within(module, from))
        .flat_map(|(module, uses)| {
            (uses.iter())
                .filter(|used| within(used, to))
                .map(move |used| format!("{module} -> {used}"))
        })
        .collect()
}

#[test]
fn no_transport_imports_the_upstream_layer() {
    // A transport hands a miss to the gateway and watches what it is given: the miss (its
    // tries, their sockets' reads, the exchange that goes on) is the gateway's.
    let graph = graph();
    assert!(
        graph.contains_key("transport::udp"),
        "the source tree was not read"
    );
    let found = imports_between(&graph, "transport", "upstream");
    assert!(
        found.is_empty(),
        "transports import the upstream layer: {found:?}"
    );
    // And it can fail.
    let mut planted = graph.clone();
    (planted.entry("transport::udp".into()).or_default()).insert("upstream::exchange".into());
    assert_eq!(
        imports_between(&planted, "transport", "upstream"),
        ["transport::udp -> upstream::exchange"]
    );
}
