//! The modules of worker-rabbitmq depend on each other in one direction only: no module imports
//! another that (directly or through a chain) imports it back. Strategies share a runner instead of
//! importing each other (see `docs/decisions.md`, "worker-rabbitmq: module layout").
//!
//! The test reads the crate's sources as text: every `crate::x` path (in `use` lines or inline,
//! comments and string literals left out) of a file under the top-level module `m` is an edge
//! `m -> x`; a name re-exported by `lib.rs` (`crate::WorkerBuilder`) counts as its module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where one module names another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reference {
    file: String,
    line: usize,
}

/// `from -> to -> where`.
type Graph = BTreeMap<String, BTreeMap<String, Vec<Reference>>>;

#[test]
fn the_modules_of_the_crate_import_each_other_in_one_direction_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = crate_graph(&src);
    // A parser that finds nothing would pass any crate: make sure it sees known edges.
    for (from, to) in [("worker", "session"), ("session", "topology")] {
        assert!(
            graph.get(from).is_some_and(|edges| edges.contains_key(to)),
            "the reader found no `crate::{to}` in `{from}`: is the test still reading the sources?\n{graph:#?}"
        );
    }
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "modules of worker-rabbitmq import each other in a circle; move what both need into a \
         module that neither imports back:\n{}",
        describe(&graph, &cycles)
    );
}

/// The detector itself: it must find a cycle through a chain and through a re-export.
#[test]
fn a_cycle_through_a_chain_or_a_reexport_is_found() {
    let dir = std::env::temp_dir().join(format!("module-graph-{}-{}", std::process::id(), line!()));
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create dir");
        std::fs::write(path, text).expect("write");
    };
    write(
        "lib.rs",
        "mod a;\nmod b;\npub mod c;\nmod d;\nmod error;\npub use d::Thing;\npub use other::Ext;\n",
    );
    write("a.rs", "use crate::b::B;\n// crate::d in a comment\n");
    write("b.rs", "pub(crate) fn f() { crate::c::g(); }\n");
    write(
        "c/mod.rs",
        "mod inner;\nconst S: &str = \"crate::d\";\nlet l: &'static str = r#\"crate::d\"#;\n",
    );
    write(
        "c/inner.rs",
        "use crate::{a, error::E};\nuse crate::Thing;\n",
    );
    write(
        "d.rs",
        "use crate::Ext;\nimpl<'a> X<'a> { fn f(c: char) -> bool { c == '{' } }\n",
    );
    write("error.rs", "pub(crate) struct E;\n");
    let graph = crate_graph(&dir);
    std::fs::remove_dir_all(&dir).expect("clean up");

    assert_eq!(
        graph
            .iter()
            .map(|(from, to)| (from.as_str(), to.keys().map(String::as_str).collect()))
            .collect::<BTreeMap<_, Vec<_>>>(),
        BTreeMap::from([
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a", "d", "error"]),
        ]),
        "comments, strings and other crates' re-exported items are not references; groups and \
         re-exports are"
    );
    assert_eq!(
        cycles(&graph),
        vec![BTreeSet::from(["a".into(), "b".into(), "c".into()])]
    );
}

/// The import graph of the crate whose `lib.rs` is in `src`.
fn crate_graph(src: &Path) -> Graph {
    let lib = code_of(&read(&src.join("lib.rs")));
    let modules = top_level_modules(&lib);
    let reexports = reexports(&lib, &modules);
    let mut graph = Graph::new();
    for module in &modules {
        for file in files_of(src, module) {
            let text = code_of(&read(&file));
            let name = file
                .strip_prefix(src)
                .expect("under src")
                .display()
                .to_string();
            for (target, line) in crate_paths(&text) {
                let to = if modules.contains(&target) {
                    target
                } else if let Some(reexported) = reexports.get(&target) {
                    match reexported {
                        Some(module) => module.clone(),
                        // Another crate's item (`pub use worker_core::testing`): not a module here.
                        None => continue,
                    }
                } else {
                    panic!(
                        "{name}:{line}: `crate::{target}` is neither a module of lib.rs nor a \
                         name it re-exports; teach the module-graph test about it"
                    );
                };
                if &to != module {
                    graph
                        .entry(module.clone())
                        .or_default()
                        .entry(to)
                        .or_default()
                        .push(Reference {
                            file: name.clone(),
                            line,
                        });
                }
            }
        }
    }
    graph
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `mod x;` declarations of lib.rs (any visibility).
fn top_level_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_suffix(';')?;
            let name = rest.rsplit_once("mod ")?.1.trim();
            let prefix = rest.rsplit_once("mod ")?.0.trim();
            let visibility_only = prefix.is_empty() || prefix.starts_with("pub");
            (visibility_only && is_ident(name)).then(|| name.to_owned())
        })
        .collect()
}

/// Names re-exported by lib.rs (`pub use m::{A, B};`, `pub use m::A;`) and the module of each;
/// `None` for a name another crate defines (`pub use worker_core::testing;`).
fn reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, Option<String>> {
    let mut names = BTreeMap::new();
    for statement in lib.split(';') {
        let statement = statement.trim();
        let Some(path) = statement.strip_prefix("pub use ") else {
            continue;
        };
        let path = path
            .trim_start_matches("crate::")
            .trim_start_matches("self::");
        let Some((module, rest)) = path.split_once("::") else {
            continue;
        };
        let module = modules.contains(module).then(|| module.to_owned());
        let rest = rest.trim().trim_start_matches('{').trim_end_matches('}');
        for item in rest.split(',') {
            let item = item.trim();
            let exported = item.rsplit(" as ").next().unwrap_or(item).trim();
            let exported = exported.rsplit("::").next().unwrap_or(exported);
            if is_ident(exported) {
                names.insert(exported.to_owned(), module.clone());
            }
        }
    }
    names
}

/// The files of top-level module `module`: `src/m.rs` and everything under `src/m/`.
fn files_of(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "no source file for module `{module}`");
    files.sort();
    files
}

/// The source with comments, string literals and char literals blanked out (line breaks kept, so
/// line numbers stay right).
fn code_of(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && !chars[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|h| chars.get(j + h) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(&other) => blank(&mut out, other),
                }
                j += 1;
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&skipped) = chars.get(i) {
                    blank(&mut out, skipped);
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), else a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..chars.len()).find(|&j| chars[j] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => i = end + 1,
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The first segment after every `crate::` (each name of a `crate::{a, b::c}` group), with its
/// line number.
fn crate_paths(code: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (index, _) in code.match_indices("crate::") {
        let before = code[..index].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let line = code[..index].matches('\n').count() + 1;
        let rest = &code[index + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split at the group's own commas (not those of a nested `{..}`), up to its `}`.
            let mut depth = 0;
            let mut items = vec![String::new()];
            for c in group.chars() {
                match c {
                    '}' if depth == 0 => break,
                    ',' if depth == 0 => items.push(String::new()),
                    c => {
                        depth += usize::from(c == '{');
                        depth -= usize::from(c == '}');
                        items.last_mut().expect("one item at least").push(c);
                    }
                }
            }
            for item in items {
                let ident = leading_ident(item.trim_start());
                if !ident.is_empty() {
                    found.push((ident, line));
                }
            }
        } else {
            let ident = leading_ident(rest);
            if !ident.is_empty() {
                found.push((ident, line));
            }
        }
    }
    found
}

fn leading_ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn is_ident(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Every set of two or more modules that reach each other (strongly connected components).
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = graph
        .iter()
        .flat_map(|(from, to)| std::iter::once(from).chain(to.keys()))
        .collect();
    let reach = |start: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.clone()];
        while let Some(node) = todo.pop() {
            for next in graph.get(&node).into_iter().flat_map(|to| to.keys()) {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|&node| (node, reach(node))).collect();
    let mut components: Vec<BTreeSet<String>> = Vec::new();
    for &node in &nodes {
        if !reached[node].contains(node) || components.iter().any(|c| c.contains(node)) {
            continue;
        }
        let component: BTreeSet<String> = nodes
            .iter()
            .filter(|&&other| reached[node].contains(other) && reached[other].contains(node))
            .map(|&other| other.clone())
            .collect();
        components.push(component);
    }
    components
}

fn describe(graph: &Graph, cycles: &[BTreeSet<String>]) -> String {
    let mut text = String::new();
    for component in cycles {
        text.push_str(&format!(
            "- {}:\n",
            component.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        for from in component {
            for (to, references) in graph.get(from).into_iter().flatten() {
                if component.contains(to) {
                    let first = &references[0];
                    text.push_str(&format!(
                        "    {from} -> {to} ({}:{})\n",
                        first.file, first.line
                    ));
                }
            }
        }
    }
    text
}
