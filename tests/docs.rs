//! The docs promise what the code does: every ```toml block in README.md and
//! docs/*.md is checked the way switchyard reads it (a whole config as
//! `switchyard check` validates it, an instances file as the file source parses
//! it), every relative link points at a file (and heading) that exists, and the
//! metrics reference names exactly the metrics the gateway exports.
//!
//! A block that is deliberately not a whole file is marked with
//! `<!-- fragment -->` on the line before its fence; it must still be TOML, and
//! when its shape allows (only top-level sections other than listeners, or only
//! `[[listener.route]]` entries) it is validated inside a minimal config.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use switchyard::config::Config;

const FRAGMENT: &str = "<!-- fragment -->";
const DOC_FILES: &[&str] = &[
    "configuration.md",
    "etcd.md",
    "protocols.md",
    "metrics.md",
    "operations.md",
    "performance.md",
    "architecture.md",
];
/// Top-level tables that make a block a whole config.
const CONFIG_TABLES: &[&str] = &["listener", "discovery", "admin", "runtime", "timeouts", "limits"];
const MINIMAL_LISTENER: &str = "\n[[listener]]\nname = \"docs\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\n";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, as (path relative to the root, text).
fn markdown_files() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("docs/ entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(root().join(&n)).unwrap_or_else(|e| panic!("{n}: {e}"));
            (n, text)
        })
        .collect()
}

#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    info: String,
    fragment: bool,
    text: String,
}

/// Every fenced code block; an unclosed fence is an error.
fn fenced_blocks(file: &str, text: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut open: Option<(Block, String)> = None;
    let mut previous = "";
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let block = Block {
                        line: i + 1,
                        info: info.trim().to_string(),
                        fragment: previous.trim() == FRAGMENT,
                        text: String::new(),
                    };
                    let fence = line[..line.len() - trimmed.len()].to_string();
                    open = Some((block, fence));
                }
            }
            Some((block, indent)) => {
                if trimmed.starts_with("```") {
                    blocks.push(open.take().expect("open block").0);
                } else {
                    block.text.push_str(line.strip_prefix(indent.as_str()).unwrap_or(line));
                    block.text.push('\n');
                }
            }
        }
        previous = line;
    }
    match open {
        Some((block, _)) => Err(format!("{file}:{}: code fence never closed", block.line)),
        None => Ok(blocks),
    }
}

/// What a checked TOML block turned out to be.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Kind {
    Config,
    Instances,
    /// A marked fragment validated inside a minimal config.
    FragmentValidated,
    /// A marked fragment only parsed as TOML.
    FragmentToml,
}

/// Checks one ```toml block; the error names the file and the fence's line.
fn check_toml(file: &str, block: &Block) -> Result<Kind, String> {
    let at = format!("{file}:{}", block.line);
    let table: toml::Table = toml::from_str(&block.text).map_err(|e| format!("{at}: not TOML: {e}"))?;
    let has = |key: &str| table.contains_key(key);
    let is_config = CONFIG_TABLES.iter().any(|k| has(k));
    let is_instances = has("instance");
    if block.fragment {
        return check_fragment(&at, &block.text, &table);
    }
    if is_config && is_instances {
        return Err(format!("{at}: mixes [[instance]] with config tables"));
    }
    if is_instances {
        switchyard::discovery::file::parse(&block.text)
            .map_err(|e| format!("{at}: instances file rejected by the file source: {e}"))?;
        return Ok(Kind::Instances);
    }
    if is_config {
        Config::parse(&block.text).map_err(|e| format!("{at}: config rejected by `switchyard check`:\n{e}"))?;
        return Ok(Kind::Config);
    }
    Err(format!(
        "{at}: neither a whole config ({}) nor an instances file ([[instance]]); \
         mark it with `{FRAGMENT}` on the line before the fence if it is a fragment",
        CONFIG_TABLES.join(", ")
    ))
}

fn check_fragment(at: &str, text: &str, table: &toml::Table) -> Result<Kind, String> {
    let sections = ["runtime", "admin", "discovery", "timeouts", "limits", "service"];
    let validate = |whole: String| {
        Config::parse(&whole).map(|_| Kind::FragmentValidated).map_err(|e| {
            format!(
                "{at}: fragment rejected by `switchyard check` inside a minimal config:\n{e}\n--- as checked:\n{whole}"
            )
        })
    };
    if table.keys().all(|k| sections.contains(&k.as_str())) {
        return validate(format!("{text}{MINIMAL_LISTENER}"));
    }
    // `[[listener.route]]` alone: routes of one listener, http unless they route by sni.
    if let Some(toml::Value::Table(listener)) = table.get("listener") {
        if table.len() == 1 && listener.len() == 1 && listener.contains_key("route") {
            let sni = text.lines().any(|l| l.trim_start().starts_with("sni"));
            let protocol = if sni { "tls_passthrough" } else { "http" };
            return validate(format!(
                "[[listener]]\nname = \"docs\"\nprotocol = \"{protocol}\"\nlisten = \"127.0.0.1:0\"\n{text}"
            ));
        }
    }
    Ok(Kind::FragmentToml)
}

/// Checks every ```toml block of one markdown text: (kinds checked, errors).
fn check_markdown(file: &str, text: &str) -> (Vec<Kind>, Vec<String>) {
    let blocks = match fenced_blocks(file, text) {
        Ok(b) => b,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let mut kinds = Vec::new();
    let mut errors = Vec::new();
    for block in blocks.iter().filter(|b| b.info == "toml") {
        match check_toml(file, block) {
            Ok(kind) => kinds.push(kind),
            Err(e) => errors.push(e),
        }
    }
    for block in blocks.iter().filter(|b| b.fragment && b.info != "toml") {
        errors.push(format!("{file}:{}: `{FRAGMENT}` marks a block that is not ```toml", block.line));
    }
    (kinds, errors)
}

#[test]
fn every_doc_file_exists() {
    for name in DOC_FILES {
        assert!(root().join("docs").join(name).is_file(), "docs/{name} is missing");
    }
}

#[test]
fn every_toml_example_is_valid() {
    let mut kinds = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in markdown_files() {
        let (k, e) = check_markdown(&file, &text);
        kinds.extend(k);
        errors.extend(e);
    }
    assert!(errors.is_empty(), "{} bad example(s):\n\n{}", errors.len(), errors.join("\n\n"));
    let count = |kind| kinds.iter().filter(|&&k| k == kind).count();
    // Floors, so that a broken extractor (or docs that lost their examples) fails.
    assert!(kinds.len() >= 12, "only {} ```toml blocks found", kinds.len());
    assert!(count(Kind::Config) >= 5, "only {} whole configs: {kinds:?}", count(Kind::Config));
    assert!(count(Kind::Instances) >= 1, "no instances file: {kinds:?}");
    assert!(count(Kind::FragmentValidated) >= 6, "only {} validated fragments", count(Kind::FragmentValidated));
    assert!(
        count(Kind::FragmentToml) == 0,
        "{} fragments are only parsed as TOML: give them a shape the test can validate",
        count(Kind::FragmentToml)
    );
}

/// The checker itself can fail, and says where.
#[test]
fn bad_examples_are_reported_with_file_and_line() {
    let text = "# t\n\n```toml\n[[listener]]\nname = \"web\"\nprotocol = \"http\"\nlisten = \"0.0.0.0:8080\"\n\
                [[listener.route]]\nservice = \"a\"\nbalance = \"rr\"\n```\n\n\
                ```toml\n[[instance]]\nservice = \"a\"\nid = \"\"\naddr = \"127.0.0.1:1\"\n```\n\n\
                ```toml\n[[service]]\nname = \"a\"\n```\n\n\
                <!-- fragment -->\n```toml\n[discovery]\nsource = \"etcd\"\nusername = \"u\"\n```\n\n\
                <!-- fragment -->\n```toml\n[[listener.route]]\nsni = \"a.example.com\"\n```\n\n\
                ```toml\n[runtime\n```\n\n\
                ```toml\n[[listener]]\nname = \"db\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:0\"\nservice = \"pg\"\n```\n";
    let (kinds, errors) = check_markdown("docs/x.md", text);
    let want = [
        ("docs/x.md:3:", "listener[0].route[0].balance: unknown policy \"rr\""),
        ("docs/x.md:13:", "instance[0].id: must not be empty"),
        ("docs/x.md:20:", "mark it with"),
        ("docs/x.md:26:", "discovery.password: required"),
        ("docs/x.md:33:", "listener[0].route[0].service: required"),
        ("docs/x.md:38:", "not TOML"),
    ];
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
    for ((at, reason), got) in want.iter().zip(&errors) {
        assert!(got.starts_with(at) && got.contains(reason), "want {at} … {reason}, got:\n{got}");
    }
    assert_eq!(kinds, [Kind::Config], "the one good block");
    let unclosed = check_markdown("README.md", "a\n```toml\n[runtime]\n").1;
    assert_eq!(unclosed, ["README.md:2: code fence never closed"]);
}

/// `[text](target)` links outside code, as (1-based line, target).
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_fence = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Drop inline code spans: `a [b](c)` inside backticks is not a link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            found.push((i + 1, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    found
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to '-'.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_fence = false;
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && line.starts_with('#') {
            let base = slug(line.trim_start_matches('#'));
            // Repeated headings get -1, -2, ... on GitHub.
            let mut name = base.clone();
            let mut n = 0;
            while !seen.insert(name.clone()) {
                n += 1;
                name = format!("{base}-{n}");
            }
        }
    }
    seen
}

#[test]
fn relative_links_point_at_existing_files_and_headings() {
    let mut errors = Vec::new();
    let mut checked = 0;
    for (file, text) in markdown_files() {
        let dir = Path::new(&file).parent().unwrap_or(Path::new("")).to_path_buf();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let resolved = if path.is_empty() { PathBuf::from(&file) } else { dir.join(path) };
            let full = root().join(&resolved);
            if !full.exists() {
                errors.push(format!("{file}:{line}: link {target:?}: {} does not exist", resolved.display()));
                continue;
            }
            if !anchor.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
                let linked = std::fs::read_to_string(&full).unwrap_or_default();
                if !anchors(&linked).contains(anchor) {
                    errors.push(format!(
                        "{file}:{line}: link {target:?}: no heading #{anchor} in {}",
                        resolved.display()
                    ));
                }
            }
        }
    }
    assert!(errors.is_empty(), "{} broken link(s):\n{}", errors.len(), errors.join("\n"));
    assert!(checked >= 20, "only {checked} relative links found");
}

#[test]
fn link_checker_finds_links_and_anchors() {
    let text = "# Routes and `hosts`\n[a](docs/x.md#routes-and-hosts) `[no](code.md)` [b](#y)\n```\n[c](z)\n```\n";
    assert_eq!(links(text), [(2, "docs/x.md#routes-and-hosts".to_string()), (2, "#y".to_string())]);
    assert!(anchors(text).contains("routes-and-hosts"));
}

/// `switchyard_…` names in a text (histogram suffixes folded into their metric).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("switchyard_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        if name.len() > "switchyard_".len() {
            names.insert(name.to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn metrics_reference_matches_the_exported_metrics() {
    let exported: BTreeSet<String> = switchyard::metrics::ALL.iter().map(|s| s.to_string()).collect();
    let reference = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    let described = metric_names(&reference);
    let missing: Vec<_> = exported.difference(&described).collect();
    assert!(missing.is_empty(), "docs/metrics.md does not describe {missing:?}");
    for (file, text) in markdown_files() {
        let unknown: Vec<_> = metric_names(&text).into_iter().filter(|n| !exported.contains(n)).collect();
        assert!(unknown.is_empty(), "{file} names metrics the gateway does not export: {unknown:?}");
    }
}
