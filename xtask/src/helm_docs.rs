//! `cargo xtask helm-docs`: docs/helm-values.md, the reference of the agent chart's values, made
//! from helm/loupe/values.yaml. A key is documented by the `# --` comment block right above it
//! (continued by `#` lines at the same indentation); its type and default come from the parsed
//! YAML. A key whose value is a map is documented either as a whole or key by key; a value left
//! undocumented is an error, and a unit test keeps the generated file current.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_yaml::Value;

use crate::util::root;

const VALUES: &str = "helm/loupe/values.yaml";
const OUTPUT: &str = "docs/helm-values.md";

pub fn helm_docs() -> anyhow::Result<()> {
    let values = std::fs::read_to_string(root().join(VALUES)).with_context(|| VALUES)?;
    let text = render(&values)?;
    let out: PathBuf = root().join(OUTPUT);
    std::fs::write(&out, text).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("wrote {OUTPUT}");
    Ok(())
}

/// One documented key: its dotted path and description.
#[derive(Debug, PartialEq)]
struct Doc {
    path: String,
    text: String,
}

/// Plain comment blocks right above a top-level key (no blank line between): notes on a whole
/// section, such as what each capability is for.
fn section_notes(values: &str) -> Vec<(String, String)> {
    let mut notes = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    for line in values.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            block.push(comment.strip_prefix(' ').unwrap_or(comment));
            continue;
        }
        if !block.is_empty()
            && !line.starts_with(' ')
            && !block[0].starts_with("--")
            && let Some((key, _)) = line.split_once(':')
        {
            notes.push((key.to_string(), block.join("\n")));
        }
        block.clear();
    }
    notes
}

/// The `# --` blocks of a values file, each with the key that follows it.
fn documented_keys(values: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    // (indentation, key) of the maps the current line is inside.
    let mut parents: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for line in values.lines() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if body.is_empty() {
            pending = None;
            continue;
        }
        if let Some(comment) = body.strip_prefix('#') {
            match (&mut pending, comment.strip_prefix(" --")) {
                (_, Some(start)) => pending = Some((indent, start.trim().to_string())),
                (Some((at, text)), None) if *at == indent => {
                    text.push(' ');
                    text.push_str(comment.trim());
                }
                _ => pending = None,
            }
            continue;
        }
        // List items and block contents are not keys.
        if body.starts_with('-') {
            continue;
        }
        let Some((key, rest)) = body.split_once(':') else {
            continue;
        };
        if key.contains(' ') || key.starts_with('"') {
            continue;
        }
        while parents.last().is_some_and(|(i, _)| *i >= indent) {
            parents.pop();
        }
        let path = parents
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key])
            .collect::<Vec<_>>()
            .join(".");
        if let Some((at, text)) = pending.take()
            && at == indent
        {
            docs.push(Doc { path, text });
        } else if rest.trim().is_empty() {
            parents.push((indent, key.to_string()));
        }
    }
    docs
}

fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, k| v.get(k))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Sequence(_) => "list",
        Value::Mapping(_) => "object",
        Value::Tagged(_) => "tagged",
    }
}

/// Every value (leaf, or map documented as a whole) must have a doc; names the ones without.
fn undocumented(v: &Value, prefix: &str, docs: &[Doc], out: &mut Vec<String>) {
    let Value::Mapping(map) = v else { return };
    for (k, child) in map {
        let Some(k) = k.as_str() else { continue };
        let path = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        if docs.iter().any(|d| d.path == path) {
            continue;
        }
        match child {
            Value::Mapping(m) if !m.is_empty() => undocumented(child, &path, docs, out),
            _ => out.push(path),
        }
    }
}

fn render(values: &str) -> anyhow::Result<String> {
    let parsed: Value = serde_yaml::from_str(values).context("values.yaml does not parse")?;
    let docs = documented_keys(values);
    let mut missing = Vec::new();
    undocumented(&parsed, "", &docs, &mut missing);
    if !missing.is_empty() {
        bail!("{VALUES}: no `# --` comment above {}", missing.join(", "));
    }
    let mut out = String::from(
        "# Values of the `loupe` chart\n\n\
         Generated from `helm/loupe/values.yaml` by `cargo xtask helm-docs`; do not edit. \
         `values.schema.json` checks them at `helm install`, and docs/eks.md shows them in use.\n\n\
         | Key | Type | Default | Description |\n|---|---|---|---|\n",
    );
    for doc in &docs {
        let value = lookup(&parsed, &doc.path)
            .with_context(|| format!("{} is documented but not in the parsed values", doc.path))?;
        let default = serde_json::to_string(value).context("a default as JSON")?;
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} |\n",
            doc.path,
            type_name(value),
            default.replace('|', "\\|"),
            doc.text.replace('|', "\\|")
        ));
    }
    for (key, note) in section_notes(values) {
        out.push_str(&format!("\n## `{key}`\n\n```text\n{note}\n```\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# Heading comment, not a doc.
image:
  # -- The image.
  # Continued.
  repository: loupe-agent
  tag: \"\"

# -- Tolerations.
tolerations:
  - operator: Exists
agent:
  # -- Bound.
  memoryLimit: 256Mi
";

    #[test]
    fn blocks_attach_to_the_following_key() {
        assert_eq!(
            documented_keys(SAMPLE),
            vec![
                Doc {
                    path: "image.repository".into(),
                    text: "The image. Continued.".into()
                },
                Doc {
                    path: "tolerations".into(),
                    text: "Tolerations.".into()
                },
                Doc {
                    path: "agent.memoryLimit".into(),
                    text: "Bound.".into()
                },
            ]
        );
    }

    #[test]
    fn plain_blocks_above_a_section_are_its_notes() {
        let values =
            "# Header.\n\n# What each one is for:\n#   BPF  load\nsecurityContext:\n  a: 1\n";
        assert_eq!(
            section_notes(values),
            vec![(
                "securityContext".to_string(),
                "What each one is for:\n  BPF  load".to_string()
            )]
        );
    }

    #[test]
    fn an_undocumented_value_is_an_error() {
        let err = render(SAMPLE).expect_err("image.tag has no doc");
        assert!(err.to_string().contains("image.tag"), "{err}");
    }

    #[test]
    fn the_reference_is_current() {
        let values = std::fs::read_to_string(root().join(VALUES)).expect("values.yaml");
        let generated = render(&values).expect("every value documented");
        let on_disk = std::fs::read_to_string(root().join(OUTPUT)).unwrap_or_default();
        assert!(
            generated == on_disk,
            "{OUTPUT} is stale: run `cargo xtask helm-docs`"
        );
        assert!(generated.contains("| `agent.memoryLimit` | string | `\"256Mi\"` |"));
    }
}
