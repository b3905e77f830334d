//! Architecture test: the import graph of `src/` follows the layer table of `src/lib.rs` and has
//! no cycle between files.
//!
//! The layer table in `src/lib.rs` (the `//! | layer | modules |` table) is the single source:
//! this test parses it, so the documentation cannot drift from what is enforced. A row lists
//! module paths (`supervisor`, `supervisor::actor`, `crate` for `lib.rs` itself); a file takes
//! the layer of the longest listed path that is a prefix of its module path, so
//! `src/supervisor/machine.rs` is in `supervisor`'s layer unless `supervisor::machine` has a row
//! of its own. Every file must be covered.
//!
//! What is an edge (one file importing another):
//! - every path of a `use` declaration (`pub use` too, with `{a::b, c}` groups expanded) that
//!   starts with `crate::`, `super::`, `self::`, or the name of a child module the file declares
//!   (`pub use lease::Lease` in `ports.rs`), and every `crate::…` or `super::…` path written
//!   in code;
//! - resolved to the deepest file that exists: `crate::supervisor::spec::check_name` is
//!   `src/supervisor/spec.rs`, `crate::supervisor::ServiceSpec` is `src/supervisor.rs` (an
//!   import through a parent's re-export depends on the parent).
//!
//! Rules for parent and child files: declaring `mod child;` is not an edge (a parent owns its
//! children; that is not a dependency). A parent re-exporting or using its child's items is an
//! edge parent → child; a child using its parent's items (`use super::X` where `X` is defined or
//! re-exported in the parent file) is an edge child → parent. When both exist the two files form
//! a cycle, to be fixed by moving the shared item down into a file both can import.
//!
//! Not edges: comments, string literals, and items under `#[cfg(test)]` (test code may build its
//! fixtures from anywhere; files declared as `#[cfg(test)] mod tests;` are skipped whole).
//! `src/main.rs` is the binary, not part of the library.
//!
//! Failures name the file, line and rule: a layer violation as
//! `src/transport.rs:22 imports crate::supervisor::X (src/supervisor.rs, layer 1) from layer 0`,
//! a cycle as the whole path `src/a.rs:3 → src/b.rs:9 → src/a.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// One source file: its path relative to the crate (`src/ports/pool.rs`) and its text.
type Sources = BTreeMap<String, String>;

/// A module path in the layer table, with its layer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LayerEntry {
    module: Vec<String>,
    layer: u32,
}

/// One import of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Edge {
    from: String,
    line: usize,
    /// The path as written, made absolute (`crate::a::b`).
    path: String,
    to: String,
}

#[test]
fn imports_follow_the_layer_table_and_have_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Sources::new();
    read_tree(root, &root.join("src"), &mut sources);
    sources.remove("src/main.rs");
    let problems = check(&sources);
    assert!(
        problems.is_empty(),
        "the import graph of src/ breaks the architecture rules (see tests/architecture.rs):\n{}",
        problems.join("\n")
    );
}

fn read_tree(root: &Path, dir: &Path, out: &mut Sources) {
    let entries = std::fs::read_dir(dir).expect("src/ is readable");
    for entry in entries {
        let path = entry.expect("a directory entry of src/").path();
        if path.is_dir() {
            read_tree(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path
                .strip_prefix(root)
                .expect("under the crate root")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).expect("a source file is readable");
            out.insert(relative, text);
        }
    }
}

/// Every problem of the tree: layer violations first, then cycles. Empty: all is well.
fn check(sources: &Sources) -> Vec<String> {
    let Some(lib) = sources.get("src/lib.rs") else {
        return vec!["src/lib.rs is missing".to_string()];
    };
    let table = match parse_layer_table(lib) {
        Ok(table) => table,
        Err(why) => return vec![format!("src/lib.rs: {why}")],
    };
    let mut problems = Vec::new();
    let mut parsed = BTreeMap::new();
    let mut test_only = BTreeSet::new();
    for (file, text) in sources {
        let p = parse_file(text);
        let module = module_of(file);
        for child in &p.test_modules {
            let mut m = module.clone();
            m.push(child.clone());
            test_only.insert(m);
        }
        parsed.insert(file.clone(), p);
    }
    let files: BTreeSet<String> = sources
        .keys()
        .filter(|f| {
            let m = module_of(f);
            !test_only.iter().any(|t| m.starts_with(t))
        })
        .cloned()
        .collect();
    let mut edges = Vec::new();
    for file in &files {
        let p = &parsed[file];
        if layer_of(&table, &module_of(file)).is_none() {
            problems.push(format!(
                "{file}: its module `{}` is in no row of the layer table in src/lib.rs",
                display_module(&module_of(file))
            ));
        }
        for import in &p.imports {
            let Some(absolute) = resolve(file, import, &p.child_modules) else {
                continue;
            };
            let Some(to) = deepest_file(&files, &absolute) else {
                continue;
            };
            if &to == file {
                continue;
            }
            edges.push(Edge {
                from: file.clone(),
                line: import.line,
                path: format!("crate::{}", absolute.join("::")),
                to,
            });
        }
    }
    for edge in &edges {
        let (Some(from), Some(to)) = (
            layer_of(&table, &module_of(&edge.from)),
            layer_of(&table, &module_of(&edge.to)),
        ) else {
            continue;
        };
        if to.layer > from.layer {
            problems.push(format!(
                "{}:{} imports {} ({}, layer {}: {}) from layer {} ({}): a file may import only \
                 its own layer or lower ones",
                edge.from,
                edge.line,
                edge.path,
                edge.to,
                to.layer,
                display_module(&to.module),
                from.layer,
                display_module(&from.module),
            ));
        }
    }
    problems.extend(cycles(&files, &edges));
    problems
}

fn display_module(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// Reads the `| layer | modules |` table of the crate doc: rows `| N | `a`, `b::c` |`.
fn parse_layer_table(lib: &str) -> Result<Vec<LayerEntry>, String> {
    let lines: Vec<&str> = lib
        .lines()
        .map(|l| l.trim())
        .filter_map(|l| l.strip_prefix("//!"))
        .map(str::trim)
        .collect();
    let start = lines
        .iter()
        .position(|l| {
            let cells = cells(l);
            cells.len() >= 2 && cells[0] == "layer" && cells[1] == "modules"
        })
        .ok_or("no `| layer | modules |` table in the crate doc")?;
    let mut entries = Vec::new();
    for row in lines[start + 1..].iter().take_while(|l| l.starts_with('|')) {
        let cells = cells(row);
        if cells.len() < 2 || cells[0].starts_with('-') {
            continue;
        }
        let layer: u32 = cells[0]
            .parse()
            .map_err(|_| format!("layer table row {row:?}: the layer is not a number"))?;
        for name in cells[1].split(',') {
            let name = name.trim().trim_matches('`').trim();
            if name.is_empty() {
                continue;
            }
            let module = if name == "crate" {
                Vec::new()
            } else {
                name.split("::").map(str::to_string).collect()
            };
            if entries.iter().any(|e: &LayerEntry| e.module == module) {
                return Err(format!("layer table lists `{name}` twice"));
            }
            entries.push(LayerEntry { module, layer });
        }
    }
    if entries.is_empty() {
        return Err("the layer table has no rows".to_string());
    }
    Ok(entries)
}

fn cells(row: &str) -> Vec<String> {
    let row = row.trim();
    if !row.starts_with('|') {
        return Vec::new();
    }
    row.trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// The entry of the longest listed module path that is a prefix of `module`.
fn layer_of<'t>(table: &'t [LayerEntry], module: &[String]) -> Option<&'t LayerEntry> {
    table
        .iter()
        .filter(|e| module.starts_with(&e.module))
        .max_by_key(|e| e.module.len())
}

/// `src/lib.rs` → `[]`, `src/a/b.rs` → `[a, b]`.
fn module_of(file: &str) -> Vec<String> {
    let inner = file
        .strip_prefix("src/")
        .unwrap_or(file)
        .strip_suffix(".rs")
        .unwrap_or(file);
    if inner == "lib" {
        return Vec::new();
    }
    inner.split('/').map(str::to_string).collect()
}

fn file_of(module: &[String]) -> String {
    if module.is_empty() {
        "src/lib.rs".to_string()
    } else {
        format!("src/{}.rs", module.join("/"))
    }
}

/// The deepest existing file along an absolute path.
fn deepest_file(files: &BTreeSet<String>, path: &[String]) -> Option<String> {
    (0..=path.len())
        .rev()
        .map(|k| file_of(&path[..k]))
        .find(|f| files.contains(f))
}

/// One path found in a file, as written, with the inline modules it was written in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    line: usize,
    segments: Vec<String>,
    /// Inline modules (`mod x { … }`) enclosing the path, outermost first.
    inline: Vec<String>,
    /// From a `use` declaration (a bare child-module name resolves there only).
    from_use: bool,
}

#[derive(Debug, Default)]
struct ParsedFile {
    imports: Vec<Import>,
    /// `mod x;` declarations at the top of the file.
    child_modules: BTreeSet<String>,
    /// `#[cfg(test)] mod x;` declarations: files that are test code.
    test_modules: BTreeSet<String>,
}

/// Makes an import absolute (module segments from the crate root), or `None` for paths into
/// other crates.
fn resolve(file: &str, import: &Import, children: &BTreeSet<String>) -> Option<Vec<String>> {
    let mut context = module_of(file);
    context.extend(import.inline.iter().cloned());
    let segments = &import.segments;
    let first = segments.first()?;
    let mut absolute = match first.as_str() {
        "crate" => segments[1..].to_vec(),
        "self" => {
            let mut a = context;
            a.extend(segments[1..].iter().cloned());
            a
        }
        "super" => {
            let supers = segments.iter().take_while(|s| *s == "super").count();
            if supers > context.len() {
                return None;
            }
            let mut a = context[..context.len() - supers].to_vec();
            a.extend(segments[supers..].iter().cloned());
            a
        }
        name if import.from_use && import.inline.is_empty() && children.contains(name) => {
            let mut a = context;
            a.extend(segments.iter().cloned());
            a
        }
        _ => return None,
    };
    absolute.retain(|s| s != "self" && s != "*");
    Some(absolute)
}

/// A token of Rust source, comments and literals removed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    line: usize,
}

/// Splits source into identifiers and punctuation (`::` as one token), dropping comments and
/// the contents of string and char literals.
fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let push = |tokens: &mut Vec<Token>, text: String, line: usize| {
        tokens.push(Token { text, line });
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
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
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            push(&mut tokens, "\"\"".to_string(), line);
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if chars.get(i) == Some(&'\n') {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if (c == 'r' || c == 'b')
            && raw_string_start(&chars, i).is_some()
            && (i == 0 || !is_ident_char(chars[i - 1]))
        {
            let (hashes, body) = raw_string_start(&chars, i).expect("checked above");
            push(&mut tokens, "\"\"".to_string(), line);
            i = body;
            let closing: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while i < chars.len() && !chars[i..].starts_with(&closing) {
                if chars[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += closing.len();
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                push(&mut tokens, "''".to_string(), line);
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                push(&mut tokens, "''".to_string(), line);
            } else {
                i += 1;
            }
        } else if is_ident_char(c) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            push(&mut tokens, chars[start..i].iter().collect(), line);
        } else if c == ':' && next == Some(':') {
            push(&mut tokens, "::".to_string(), line);
            i += 2;
        } else {
            push(&mut tokens, c.to_string(), line);
            i += 1;
        }
    }
    tokens
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// At `r"`, `r#"`, `br"`, `br#"`: the number of `#` and where the body starts.
fn raw_string_start(chars: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (chars.get(j) == Some(&'"')).then_some((hashes, j + 1))
}

/// Index just past the item starting at `start`: through its matching `}` if it has a body
/// before any `;`, else through the `;`. Attributes before the item (`#[…]`) are part of it.
fn item_end(tokens: &[Token], start: usize) -> usize {
    let mut i = start;
    let mut depth = 0usize;
    while i < tokens.len() {
        match tokens[i].text.as_str() {
            "{" | "[" | "(" => depth += 1,
            "}" | "]" | ")" => {
                depth = depth.saturating_sub(1);
                if depth == 0 && tokens[i].text == "}" {
                    return i + 1;
                }
            }
            ";" if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// Whether tokens at `i` are `# [ cfg ( test ) ]`.
fn is_cfg_test(tokens: &[Token], i: usize) -> bool {
    let want = ["#", "[", "cfg", "(", "test", ")", "]"];
    want.iter()
        .enumerate()
        .all(|(k, w)| tokens.get(i + k).is_some_and(|t| t.text == *w))
}

fn parse_file(text: &str) -> ParsedFile {
    let tokens = tokenize(text);
    let mut out = ParsedFile::default();
    // Inline modules: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].text.as_str();
        if is_cfg_test(&tokens, i) {
            let item = i + 7;
            let mut k = item;
            while tokens.get(k).is_some_and(|t| t.text == "pub") {
                k += 1;
            }
            if tokens.get(k).is_some_and(|t| t.text == "mod")
                && tokens.get(k + 2).is_some_and(|t| t.text == ";")
            {
                out.test_modules.insert(tokens[k + 1].text.clone());
            }
            i = item_end(&tokens, item);
            continue;
        }
        match t {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" => {
                if let (Some(name), Some(after)) = (tokens.get(i + 1), tokens.get(i + 2)) {
                    if after.text == ";" && inline.is_empty() && depth == 0 {
                        out.child_modules.insert(name.text.clone());
                    } else if after.text == "{" {
                        inline.push((name.text.clone(), depth + 1));
                    }
                }
            }
            "use" => {
                let end = item_end(&tokens, i);
                let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
                let mut prefix = Vec::new();
                let mut k = i + 1;
                expand_use(&tokens, &mut k, end, &mut prefix, &names, &mut out.imports);
                i = end;
                continue;
            }
            "crate" | "super"
                if tokens.get(i + 1).is_some_and(|t| t.text == "::")
                    && !(i > 0 && tokens[i - 1].text == "::")
                    && !(i > 0 && tokens[i - 1].text == "$") =>
            {
                let line = tokens[i].line;
                let mut segments = vec![t.to_string()];
                let mut k = i + 1;
                while tokens.get(k).is_some_and(|t| t.text == "::")
                    && tokens
                        .get(k + 1)
                        .is_some_and(|t| t.text.chars().all(is_ident_char))
                {
                    segments.push(tokens[k + 1].text.clone());
                    k += 2;
                }
                out.imports.push(Import {
                    line,
                    segments,
                    inline: inline.iter().map(|(n, _)| n.clone()).collect(),
                    from_use: false,
                });
                i = k;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Expands one use tree from `tokens[*k]` up to `end` (exclusive) into leaf paths.
fn expand_use(
    tokens: &[Token],
    k: &mut usize,
    end: usize,
    prefix: &mut Vec<String>,
    inline: &[String],
    out: &mut Vec<Import>,
) {
    let base = prefix.len();
    let mut line = tokens.get(*k).map_or(0, |t| t.line);
    let mut started = false;
    while *k < end {
        let t = tokens[*k].text.as_str();
        match t {
            "::" => *k += 1,
            "{" => {
                *k += 1;
                loop {
                    expand_use(tokens, k, end, prefix, inline, out);
                    match tokens.get(*k).map(|t| t.text.as_str()) {
                        Some(",") => *k += 1,
                        Some("}") => {
                            *k += 1;
                            break;
                        }
                        _ => break,
                    }
                }
                prefix.truncate(base);
                return;
            }
            "," | "}" | ";" => break,
            "as" => {
                *k += 2;
            }
            _ => {
                if !started {
                    line = tokens[*k].line;
                    started = true;
                }
                prefix.push(t.to_string());
                *k += 1;
            }
        }
    }
    if started {
        out.push(Import {
            line,
            segments: prefix.clone(),
            inline: inline.to_vec(),
            from_use: true,
        });
    }
    prefix.truncate(base);
}

/// Every cycle of the file graph, one per strongly connected component, as its whole path.
fn cycles(files: &BTreeSet<String>, edges: &[Edge]) -> Vec<String> {
    // First edge (lowest line) per pair of files.
    let mut graph: BTreeMap<&str, BTreeMap<&str, &Edge>> = BTreeMap::new();
    for edge in edges {
        let targets = graph.entry(edge.from.as_str()).or_default();
        let slot = targets.entry(edge.to.as_str()).or_insert(edge);
        if edge.line < slot.line {
            *slot = edge;
        }
    }
    let nodes: Vec<&str> = files.iter().map(String::as_str).collect();
    let components = strongly_connected(&nodes, &graph);
    let mut problems = Vec::new();
    for component in components.into_iter().filter(|c| c.len() > 1) {
        let members: BTreeSet<&str> = component.iter().copied().collect();
        let start = *members.iter().next().expect("a component has members");
        // Shortest way back to `start` within the component (breadth-first).
        let mut previous: BTreeMap<&str, &Edge> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closing: Option<&Edge> = None;
        'search: while let Some(node) = queue.pop_front() {
            for (to, edge) in graph.get(node).into_iter().flatten() {
                if !members.contains(to) {
                    continue;
                }
                if *to == start {
                    closing = Some(edge);
                    break 'search;
                }
                if !previous.contains_key(to) {
                    previous.insert(to, edge);
                    queue.push_back(to);
                }
            }
        }
        let closing = closing.expect("a strongly connected component holds a cycle");
        let mut path = vec![closing];
        let mut node = closing.from.as_str();
        while node != start {
            let edge = previous[node];
            path.push(edge);
            node = edge.from.as_str();
        }
        path.reverse();
        let mut text = String::from("import cycle: ");
        for edge in &path {
            let _ = write!(text, "{}:{} ({}) → ", edge.from, edge.line, edge.path);
        }
        text.push_str(start);
        let _ = write!(
            text,
            " (files in this cycle: {}); move the shared item down into a file both can import",
            members.iter().copied().collect::<Vec<_>>().join(", ")
        );
        problems.push(text);
    }
    problems
}

/// Tarjan's algorithm over the file graph.
fn strongly_connected<'a>(
    nodes: &[&'a str],
    graph: &BTreeMap<&'a str, BTreeMap<&'a str, &Edge>>,
) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        on_stack: BTreeSet<&'a str>,
        stack: Vec<&'a str>,
        next: usize,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeMap<&'a str, &Edge>>,
        s: &mut State<'a>,
    ) {
        s.index.insert(node, s.next);
        s.low.insert(node, s.next);
        s.next += 1;
        s.stack.push(node);
        s.on_stack.insert(node);
        for to in graph.get(node).into_iter().flat_map(|t| t.keys()) {
            if !s.index.contains_key(to) {
                visit(to, graph, s);
                let low = s.low[node].min(s.low[to]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(to) {
                let low = s.low[node].min(s.index[to]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = Vec::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.push(top);
                if top == node {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on_stack: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for node in nodes {
        if !s.index.contains_key(node) {
            visit(node, graph, &mut s);
        }
    }
    s.out
}

// The checker checked: tiny synthetic trees where the answer is known, so this test can fail.

fn tree(files: &[(&str, &str)]) -> Sources {
    files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}

const LIB: &str = "//! | layer | modules |\n//! |---|---|\n//! | 0 | `crate`, `low` |\n\
                   //! | 1 | `high`, `mid` |\n//! | 2 | `high::actor` |\n\
                   pub mod low;\npub mod mid;\npub mod high;\n";

#[test]
fn checker_accepts_a_clean_tree() {
    let sources = tree(&[
        ("src/lib.rs", LIB),
        ("src/low.rs", "pub struct L;\n"),
        (
            "src/mid.rs",
            "use crate::low::L;\n// use crate::high::H; (a comment)\nconst S: &str = \"crate::high::H\";\n\
             #[cfg(test)]\nmod tests {\n    use crate::high::actor::A;\n}\n",
        ),
        ("src/high.rs", "pub mod actor;\nuse crate::{low::L, mid};\n"),
        ("src/high/actor.rs", "use super::super::mid;\n"),
    ]);
    assert_eq!(check(&sources), Vec::<String>::new());
}

#[test]
fn checker_names_the_file_line_and_layers_of_an_upward_import() {
    let sources = tree(&[
        ("src/lib.rs", LIB),
        (
            "src/low.rs",
            "use std::fmt;\nuse crate::{\n    mid::{M, N as O,},\n};\n",
        ),
        ("src/mid.rs", "pub struct M;\n"),
        ("src/high.rs", "pub mod actor;\n"),
        ("src/high/actor.rs", ""),
    ]);
    assert_eq!(
        check(&sources),
        vec![
            "src/low.rs:3 imports crate::mid::M (src/mid.rs, layer 1: mid) from layer 0 (low): a \
             file may import only its own layer or lower ones",
            "src/low.rs:3 imports crate::mid::N (src/mid.rs, layer 1: mid) from layer 0 (low): a \
             file may import only its own layer or lower ones",
        ]
    );
}

#[test]
fn checker_reports_a_cycle_as_its_whole_path() {
    let sources = tree(&[
        ("src/lib.rs", LIB),
        ("src/low.rs", ""),
        ("src/mid.rs", "\nfn f() -> crate::high::H { todo!() }\n"),
        ("src/high.rs", "pub mod actor;\npub use actor::A;\n"),
        ("src/high/actor.rs", "pub struct A;\nuse crate::mid;\n"),
    ]);
    assert_eq!(
        check(&sources),
        vec![
            "src/high.rs:2 imports crate::high::actor::A (src/high/actor.rs, layer 2: \
             high::actor) from layer 1 (high): a file may import only its own layer or lower ones"
                .to_string(),
            "import cycle: src/high.rs:2 (crate::high::actor::A) → src/high/actor.rs:2 \
             (crate::mid) → src/mid.rs:2 (crate::high::H) → src/high.rs (files in this cycle: \
             src/high.rs, src/high/actor.rs, src/mid.rs); move the shared item down into a file \
             both can import"
                .to_string(),
        ]
    );
}

#[test]
fn checker_requires_every_file_in_the_table() {
    let lib = "//! | layer | modules |\n//! |---|---|\n//! | 0 | `crate` |\npub mod stray;\n";
    let sources = tree(&[("src/lib.rs", lib), ("src/stray.rs", "")]);
    // `crate` covers every file (the longest prefix is the root); a table without it does not.
    assert!(check(&sources).is_empty());
    let lib = "//! | layer | modules |\n//! |---|---|\n//! | 0 | `low` |\npub mod low;\n";
    let problems = check(&tree(&[("src/lib.rs", lib), ("src/low.rs", "")]));
    assert_eq!(
        problems,
        vec!["src/lib.rs: its module `crate` is in no row of the layer table in src/lib.rs"]
    );
}
