//! The Alloy pipeline (`collector/alloy/config.alloy`) checked offline: it parses, every component
//! referenced is defined, every `forward_to` and `output` names a receiver of the right signal,
//! nothing is defined and left unused, its listeners are the ports the agents and the grafana/alloy
//! values expose, and every environment variable it reads is set by those values. `alloy validate`
//! (not packaged here) remains the authority on component arguments; this test guards the wiring.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ----- A small reader of the Alloy configuration syntax -----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Punct(char),
    /// `==`, `!=`, `<=`, `>=`, `&&`, `||`
    Op(&'static str),
    Newline,
}

fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                out.push((Tok::Newline, line));
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                i += 2;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    assert!(chars[i] != '\n', "line {line}: unterminated string");
                    s.push(chars[i]);
                    i += 1;
                }
                assert!(i < chars.len(), "line {line}: unterminated string");
                i += 1;
                out.push((Tok::Str(s), line));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
                {
                    i += 1;
                }
                out.push((Tok::Ident(chars[start..i].iter().collect()), line));
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                out.push((Tok::Num(chars[start..i].iter().collect()), line));
            }
            _ => {
                let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
                let op = ["==", "!=", "<=", ">=", "&&", "||"]
                    .into_iter()
                    .find(|op| *op == two);
                if let Some(op) = op {
                    out.push((Tok::Op(op), line));
                    i += 2;
                } else {
                    assert!(
                        "{}[](),=+-*/%<>!:".contains(c),
                        "line {line}: unexpected character {c:?}"
                    );
                    out.push((Tok::Punct(c), line));
                    i += 1;
                }
            }
        }
    }
    out
}

/// A block: `name "label" { attributes and blocks }`.
#[derive(Debug, Default)]
struct Block {
    name: String,
    label: Option<String>,
    line: usize,
    /// Attribute name → its expression's tokens.
    attrs: Vec<(String, Vec<Tok>)>,
    blocks: Vec<Block>,
}

impl Block {
    fn attr(&self, name: &str) -> Option<&[Tok]> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn block(&self, name: &str) -> Option<&Block> {
        self.blocks.iter().find(|b| b.name == name)
    }

    /// Every attribute of this block and of the blocks inside it, with its path.
    fn all_attrs(&self, path: &str, out: &mut Vec<(String, Vec<Tok>)>) {
        for (n, v) in &self.attrs {
            out.push((format!("{path}{n}"), v.clone()));
        }
        for b in &self.blocks {
            b.all_attrs(&format!("{path}{}.", b.name), out);
        }
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn line(&self) -> usize {
        self.toks.get(self.pos).map_or(0, |t| t.1)
    }

    fn skip_newlines(&mut self) {
        while self.peek() == Some(&Tok::Newline) {
            self.pos += 1;
        }
    }

    /// Statements until `}` (or the end at the top level).
    fn body(&mut self, top: bool) -> (Vec<(String, Vec<Tok>)>, Vec<Block>) {
        let mut attrs = Vec::new();
        let mut blocks = Vec::new();
        loop {
            self.skip_newlines();
            match self.peek() {
                None if top => return (attrs, blocks),
                None => panic!("unexpected end of file: a block is not closed"),
                Some(Tok::Punct('}')) if !top => {
                    self.pos += 1;
                    return (attrs, blocks);
                }
                Some(Tok::Ident(name)) => {
                    let name = name.clone();
                    let line = self.line();
                    self.pos += 1;
                    match self.peek() {
                        Some(Tok::Punct('=')) => {
                            self.pos += 1;
                            let expr = self.expression();
                            assert!(!expr.is_empty(), "line {line}: {name} has no value");
                            assert!(
                                !attrs.iter().any(|(n, _)| *n == name),
                                "line {line}: {name} set twice"
                            );
                            attrs.push((name, expr));
                        }
                        Some(Tok::Str(label)) => {
                            let label = label.clone();
                            self.pos += 1;
                            blocks.push(self.block(name, Some(label), line));
                        }
                        Some(Tok::Punct('{')) => blocks.push(self.block(name, None, line)),
                        other => panic!("line {line}: after {name}: unexpected {other:?}"),
                    }
                }
                Some(other) => panic!("line {}: unexpected {other:?}", self.line()),
            }
        }
    }

    fn block(&mut self, name: String, label: Option<String>, line: usize) -> Block {
        assert_eq!(
            self.peek(),
            Some(&Tok::Punct('{')),
            "line {line}: {name} needs a body"
        );
        self.pos += 1;
        let (attrs, blocks) = self.body(false);
        Block {
            name,
            label,
            line,
            attrs,
            blocks,
        }
    }

    /// An expression: tokens to the end of the line, continuing while brackets are open.
    fn expression(&mut self) -> Vec<Tok> {
        let mut depth = 0i32;
        let mut out = Vec::new();
        while let Some(tok) = self.peek().cloned() {
            match tok {
                Tok::Newline if depth == 0 => break,
                Tok::Punct('}') if depth == 0 => break,
                Tok::Punct('[' | '(' | '{') => depth += 1,
                Tok::Punct(']' | ')' | '}') => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "line {}: unbalanced brackets", self.line());
            self.pos += 1;
            if tok != Tok::Newline {
                out.push(tok);
            }
        }
        assert_eq!(depth, 0, "line {}: unbalanced brackets", self.line());
        out
    }
}

fn parse(src: &str) -> Vec<Block> {
    let mut p = Parser {
        toks: tokenize(src),
        pos: 0,
    };
    let (attrs, blocks) = p.body(true);
    assert!(attrs.is_empty(), "attributes outside any block: {attrs:?}");
    blocks
}

// ----- What the pipeline is made of -----

/// The signal a component receives or forwards, from its namespace.
fn signal(component: &str) -> &'static str {
    match component.split('.').next() {
        Some("otelcol") => "otel",
        Some("loki") => "logs",
        Some("pyroscope") => "profiles",
        Some("prometheus") => "metrics",
        Some("discovery") => "targets",
        _ => "?",
    }
}

/// What each component used here exports (from Alloy's reference pages).
fn exports(component: &str) -> &'static [&'static str] {
    match component {
        "otelcol.processor.batch" | "otelcol.exporter.otlp" | "otelcol.exporter.otlphttp" => {
            &["input"]
        }
        "loki.write" | "pyroscope.write" | "prometheus.remote_write" => &["receiver"],
        "discovery.kubernetes" => &["targets"],
        "discovery.relabel" => &["output", "rules"],
        c if c.starts_with("prometheus.exporter.") => &["targets"],
        _ => &[],
    }
}

/// Standard library namespaces and functions, which are not component references.
const STDLIB: &[&str] = &[
    "sys.env",
    "coalesce",
    "concat",
    "format",
    "join",
    "string.format",
    "string.join",
    "encoding.from_json",
    "convert.nonsensitive",
    "true",
    "false",
    "null",
];

/// A reference found in an expression: the component `name "label"` and its export.
#[derive(Debug)]
struct Reference {
    from: String,
    attr: String,
    component: String,
    label: String,
    export: String,
}

fn references(blocks: &[Block]) -> Vec<Reference> {
    let defined: Vec<(String, String)> = blocks
        .iter()
        .filter_map(|b| Some((b.name.clone(), b.label.clone()?)))
        .collect();
    let mut out = Vec::new();
    for b in blocks {
        let from = format!("{} {:?}", b.name, b.label.as_deref().unwrap_or(""));
        let mut attrs = Vec::new();
        b.all_attrs("", &mut attrs);
        for (attr, expr) in attrs {
            for tok in expr {
                let Tok::Ident(id) = tok else { continue };
                if !id.contains('.') || STDLIB.contains(&id.as_str()) {
                    continue;
                }
                let found = defined.iter().find_map(|(name, label)| {
                    let rest = id.strip_prefix(&format!("{name}.{label}."))?;
                    Some((name.clone(), label.clone(), rest.to_owned()))
                });
                let (component, label, export) = found.unwrap_or_else(|| {
                    panic!("{from}: {attr} refers to {id}, which no component defines")
                });
                out.push(Reference {
                    from: from.clone(),
                    attr: attr.clone(),
                    component,
                    label,
                    export,
                });
            }
        }
    }
    out
}

fn config() -> Vec<Block> {
    parse(&read("collector/alloy/config.alloy"))
}

#[test]
fn every_reference_names_a_defined_component_and_one_of_its_exports() {
    let blocks = config();
    assert!(blocks.len() > 10, "{} components", blocks.len());
    let mut seen = BTreeSet::new();
    for b in &blocks {
        let label = b
            .label
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: {} has no label", b.line, b.name));
        assert!(
            seen.insert((b.name.clone(), label.clone())),
            "line {}: {} {label:?} defined twice",
            b.line,
            b.name
        );
    }
    let refs = references(&blocks);
    assert!(refs.len() > 15, "{refs:?}");
    for r in &refs {
        let allowed = exports(&r.component);
        assert!(
            allowed.contains(&r.export.as_str()),
            "{}: {} uses {}.{}.{}, but {} exports {allowed:?}",
            r.from,
            r.attr,
            r.component,
            r.label,
            r.export,
            r.component
        );
    }
}

#[test]
fn forward_to_and_outputs_reach_receivers_of_their_own_signal() {
    let blocks = config();
    let refs = references(&blocks);
    let mut checked = 0;
    for r in &refs {
        let leaf = r.attr.rsplit('.').next().unwrap_or(&r.attr);
        let from_signal = signal(r.from.split(' ').next().unwrap_or(""));
        match leaf {
            "forward_to" => {
                assert_eq!(
                    signal(&r.component),
                    from_signal,
                    "{}: forward_to {}.{} carries another signal",
                    r.from,
                    r.component,
                    r.label
                );
                assert_eq!(r.export, "receiver", "{}: forward_to {r:?}", r.from);
                checked += 1;
            }
            "traces" | "logs" | "metrics" if r.attr.starts_with("output.") => {
                assert!(
                    r.component.starts_with("otelcol."),
                    "{}: output {leaf} to {}",
                    r.from,
                    r.component
                );
                assert_eq!(r.export, "input", "{}: {r:?}", r.from);
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked >= 12, "only {checked} forwarding edges");

    // Each signal from the agents reaches its backend's writer.
    let path_exists = |from: (&str, &str), to: (&str, &str)| -> bool {
        let mut frontier = vec![(from.0.to_owned(), from.1.to_owned())];
        let mut visited = BTreeSet::new();
        while let Some(node) = frontier.pop() {
            if node.0 == to.0 && node.1 == to.1 {
                return true;
            }
            if !visited.insert(node.clone()) {
                continue;
            }
            for r in &refs {
                if r.from == format!("{} {:?}", node.0, node.1) {
                    frontier.push((r.component.clone(), r.label.clone()));
                }
            }
        }
        false
    };
    for (from, to) in [
        (
            ("otelcol.receiver.otlp", "agents"),
            ("otelcol.exporter.otlp", "tempo"),
        ),
        (
            ("otelcol.receiver.otlp", "agents"),
            ("otelcol.exporter.otlphttp", "loki"),
        ),
        (("loki.source.api", "agents"), ("loki.write", "default")),
        (
            ("pyroscope.receive_http", "agents"),
            ("pyroscope.write", "default"),
        ),
        (
            ("prometheus.scrape", "loupe_agents"),
            ("prometheus.remote_write", "default"),
        ),
        (
            ("prometheus.scrape", "mysql"),
            ("prometheus.remote_write", "default"),
        ),
        (
            ("prometheus.scrape", "redis"),
            ("prometheus.remote_write", "default"),
        ),
        (
            ("loki.source.kubernetes", "pods"),
            ("loki.write", "default"),
        ),
    ] {
        assert!(path_exists(from, to), "no path from {from:?} to {to:?}");
    }
}

#[test]
fn nothing_is_defined_and_left_unused() {
    let blocks = config();
    let refs = references(&blocks);
    let used: BTreeSet<(String, String)> = refs
        .iter()
        .map(|r| (r.component.clone(), r.label.clone()))
        .collect();
    for b in &blocks {
        let label = b.label.clone().unwrap_or_default();
        // Sources push into others; everything else must be pushed into or read.
        let source = b.name.starts_with("otelcol.receiver.")
            || b.name.starts_with("loki.source.")
            || b.name == "pyroscope.receive_http"
            || b.name == "prometheus.scrape";
        if source {
            assert!(
                b.attr("forward_to").is_some() || b.block("output").is_some(),
                "{} {label:?} forwards nowhere",
                b.name
            );
        } else {
            assert!(
                used.contains(&(b.name.clone(), label.clone())),
                "{} {label:?} is defined but nothing uses it",
                b.name
            );
        }
    }
}

/// The listeners of the pipeline, by name: (component label, port).
fn listeners(blocks: &[Block]) -> BTreeMap<&'static str, u16> {
    let mut out = BTreeMap::new();
    let port_of = |tokens: &[Tok]| -> u16 {
        match tokens {
            [Tok::Num(n)] => n.parse().expect("a port number"),
            [Tok::Str(s)] => s
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("host:port"),
            other => panic!("a port: {other:?}"),
        }
    };
    for b in blocks {
        match b.name.as_str() {
            "otelcol.receiver.otlp" => {
                for (proto, name) in [("grpc", "otlp-grpc"), ("http", "otlp-http")] {
                    let endpoint = b
                        .block(proto)
                        .and_then(|p| p.attr("endpoint"))
                        .unwrap_or_else(|| panic!("otlp receiver without {proto} endpoint"));
                    out.insert(name, port_of(endpoint));
                }
            }
            "loki.source.api" | "pyroscope.receive_http" => {
                let port = b
                    .block("http")
                    .and_then(|h| h.attr("listen_port"))
                    .unwrap_or_else(|| panic!("{} without http.listen_port", b.name));
                let name = if b.name == "loki.source.api" {
                    "loki-push"
                } else {
                    "pyroscope-push"
                };
                out.insert(name, port_of(port));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn listeners_are_the_ports_agents_send_to_and_alloy_exposes() {
    let blocks = config();
    let ports = listeners(&blocks);
    // The Loupe chart's defaults and README's examples.
    let expected: BTreeMap<&str, u16> = [
        ("otlp-grpc", 4317),
        ("otlp-http", 4318),
        ("loki-push", 3100),
        ("pyroscope-push", 4040),
    ]
    .into_iter()
    .collect();
    assert_eq!(ports, expected);

    // The grafana/alloy values expose each on the Service under the same name.
    let values: serde_yaml::Value =
        serde_yaml::from_str(&read("collector/alloy/values.yaml")).expect("values.yaml parses");
    let extra_ports = values["alloy"]["extraPorts"]
        .as_sequence()
        .expect("alloy.extraPorts");
    for (name, port) in &expected {
        let entry = extra_ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("alloy.extraPorts has no {name}"));
        assert_eq!(entry["port"].as_u64(), Some(u64::from(*port)), "{name}");
        assert_eq!(
            entry["targetPort"].as_u64(),
            Some(u64::from(*port)),
            "{name}"
        );
    }
    // Its config comes from the ConfigMap the Loupe chart renders.
    assert_eq!(
        values["alloy"]["configMap"]["create"].as_bool(),
        Some(false)
    );
    assert_eq!(
        values["alloy"]["configMap"]["name"].as_str(),
        Some("loupe-alloy")
    );
    assert_eq!(
        values["alloy"]["configMap"]["key"].as_str(),
        Some("config.alloy")
    );

    // The agents' sinks post to the paths these receivers serve: Loki push and Pyroscope's
    // Connect push (the Loki and Pyroscope sinks of loupe-collector).
    let loki_sink = read("collector/src/logs/loki.rs");
    assert!(loki_sink.contains("/loki/api/v1/push"));
    let pyroscope_sink = read("collector/src/sink/pyroscope.rs");
    assert!(pyroscope_sink.contains("push.v1.PusherService/Push"));
}

#[test]
fn every_environment_variable_read_is_set_by_the_alloy_values() {
    let blocks = config();
    let mut read_vars = BTreeSet::new();
    for b in &blocks {
        let mut attrs = Vec::new();
        b.all_attrs("", &mut attrs);
        for (_, expr) in attrs {
            for w in expr.windows(3) {
                if let [Tok::Ident(f), Tok::Punct('('), Tok::Str(var)] = w
                    && f == "sys.env"
                {
                    read_vars.insert(var.clone());
                }
            }
        }
    }
    assert!(read_vars.contains("LOUPE_AGENT_LOGS"), "{read_vars:?}");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&read("collector/alloy/values.yaml")).expect("values.yaml parses");
    let set: BTreeSet<String> = values["alloy"]["extraEnv"]
        .as_sequence()
        .expect("alloy.extraEnv")
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<_> = read_vars.difference(&set).collect();
    assert!(
        missing.is_empty(),
        "read but not set in values.yaml: {missing:?}"
    );
    let unused: Vec<_> = set.difference(&read_vars).collect();
    assert!(
        unused.is_empty(),
        "set in values.yaml but never read: {unused:?}"
    );
}

#[test]
fn pod_logs_are_tailed_only_when_the_agents_do_not_ship_them() {
    // One collector per node ships container logs (README, "Alloy tailing pod logs too").
    let blocks = config();
    let relabel = blocks
        .iter()
        .find(|b| b.name == "discovery.relabel" && b.label.as_deref() == Some("pod_logs"))
        .expect("discovery.relabel \"pod_logs\"");
    let rules: Vec<&Block> = relabel.blocks.iter().filter(|b| b.name == "rule").collect();
    let setter = rules
        .iter()
        .position(|r| {
            r.attr("replacement")
                .is_some_and(|e| e.contains(&Tok::Str("LOUPE_AGENT_LOGS".into())))
        })
        .expect("a rule reading LOUPE_AGENT_LOGS");
    let dropper = rules
        .iter()
        .position(|r| {
            r.attr("action") == Some(&[Tok::Str("drop".into())][..])
                && r.attr("regex") == Some(&[Tok::Str("true".into())][..])
        })
        .expect("a rule dropping every target when the agents ship logs");
    assert!(setter < dropper, "the flag is set before it is tested");
    // The default is the agents' logs: nothing tailed unless asked.
    let default = rules[setter].attr("replacement").unwrap_or_default();
    assert!(
        default.ends_with(&[Tok::Str("true".into()), Tok::Punct(')')]),
        "{default:?}"
    );
    let tailer = blocks
        .iter()
        .find(|b| b.name == "loki.source.kubernetes")
        .expect("loki.source.kubernetes");
    let targets = tailer.attr("targets").unwrap_or_default();
    assert_eq!(
        targets,
        &[Tok::Ident("discovery.relabel.pod_logs.output".into())][..],
        "pod logs are tailed only through the filtering relabel"
    );
}

#[test]
fn the_reader_rejects_broken_wiring() {
    // The checks above can fail: a reference to an undefined component and an unclosed block.
    let broken = "loki.source.api \"a\" {\n  forward_to = [loki.write.missing.receiver]\n}\n";
    let blocks = parse(broken);
    let result = std::panic::catch_unwind(|| references(&blocks));
    assert!(result.is_err(), "an undefined component must be reported");
    let result = std::panic::catch_unwind(|| parse("loki.write \"w\" {\n endpoint {\n"));
    assert!(result.is_err(), "an unclosed block must be reported");
    let result = std::panic::catch_unwind(|| parse("a \"b\" {\n x = [1, 2\n}\n"));
    assert!(result.is_err(), "unbalanced brackets must be reported");
}
