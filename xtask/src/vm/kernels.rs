//! The kernels the matrix boots: the newest Debian cloud kernel of each series, downloaded with an
//! apt configuration of our own (the machine's apt lists are never touched), extracted once into
//! target/vm-cache/kernels with the few modules the two-namespace test loads (veth, netfilter
//! NAT), in the order their dependencies need.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use super::cache_dir;
use crate::util::{exec, output};

/// A kernel series and where Debian ships it.
pub(super) struct Series {
    /// What `--kernel` and the table call it.
    pub(super) name: &'static str,
    /// Package names are `<prefix><N>[+<tag>]-cloud-amd64-unsigned`, newest = highest N.
    pub(super) prefix: &'static str,
}

pub(super) const SERIES: &[Series] = &[
    // bullseye, bullseye-security: Amazon Linux 2's kernel line.
    Series {
        name: "5.10",
        prefix: "linux-image-5.10.0-",
    },
    // bookworm, bookworm-security: AL2023's first kernel line.
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
    },
    // bookworm-backports, bookworm-security: AL2023's newer kernel line.
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
    },
];
pub(super) const PACKAGE_SUFFIX: &str = "-cloud-amd64-unsigned";

/// The suites the kernels come from; `target=Packages` skips the indexes apt would add by default
/// (DEP-11 and so on).
pub(super) const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian bookworm-backports main
";

/// A kernel ready to boot.
pub(super) struct Kernel {
    pub(super) series: &'static str,
    /// `<package>_<version>`.
    pub(super) package: String,
    pub(super) vmlinuz: PathBuf,
    /// `uname -r` inside the VM.
    pub(super) release: String,
    /// The modules the VM loads (see MODULE_ORDER).
    pub(super) modules: PathBuf,
}

/// Runs apt with our own sources list, index and cache under target/vm-cache/apt.
pub(super) fn apt(tool: &str) -> anyhow::Result<Command> {
    let dir = cache_dir().join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    let list = dir.join("sources.list");
    std::fs::write(&list, SOURCES).with_context(|| format!("cannot write {}", list.display()))?;
    let mut cmd = Command::new(tool);
    let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
    cmd.args(["-q", "-o"])
        .arg(opt("Dir::Etc::SourceList", &list))
        .arg("-o")
        .arg(opt("Dir::Etc::SourceParts", &dir.join("sources.list.d")))
        .arg("-o")
        .arg(opt("Dir::State::Lists", &dir.join("lists")))
        .arg("-o")
        .arg(opt("Dir::Cache", &dir.join("cache")))
        // Downloads land in our own directories, which apt's unprivileged _apt user cannot write.
        .args(["-o", "APT::Sandbox::User=root"]);
    Ok(cmd)
}

/// The newest kernel of each series, downloaded and extracted once.
pub(super) fn fetch_kernels(series: &[&Series]) -> anyhow::Result<Vec<Kernel>> {
    let online = match apt("apt-get").and_then(|mut c| output(c.arg("update"))) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("    cannot refresh the kernel index, using cached kernels: {e:#}");
            false
        }
    };
    let names = if online {
        output(apt("apt-cache")?.args(["pkgnames", "linux-image-"]))?
    } else {
        String::new()
    };
    let mut kernels = Vec::new();
    for s in series {
        let kernel = if online {
            fetch_newest(s, &names)?
        } else {
            newest_cached(s)?
        };
        eprintln!("    {}: {}", s.name, kernel.package);
        kernels.push(kernel);
    }
    Ok(kernels)
}

/// The leading number of a package name in `series` (its ABI or patch level), or None.
pub(super) fn package_rank(series: &Series, name: &str) -> Option<u64> {
    let middle = name
        .strip_prefix(series.prefix)?
        .strip_suffix(PACKAGE_SUFFIX)?;
    let (number, tag) = middle.split_once('+').unwrap_or((middle, ""));
    if tag.contains(|c: char| !c.is_ascii_alphanumeric()) {
        return None;
    }
    number.parse().ok()
}

pub(super) fn fetch_newest(series: &Series, names: &str) -> anyhow::Result<Kernel> {
    let mut candidates: Vec<(u64, &str)> = names
        .lines()
        .filter_map(|n| Some((package_rank(series, n.trim())?, n.trim())))
        .collect();
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    if candidates.is_empty() {
        bail!("no {}*{PACKAGE_SUFFIX} package in the index", series.prefix);
    }
    let debs = cache_dir().join("debs");
    std::fs::create_dir_all(&debs)?;
    let mut errors = Vec::new();
    // The mirror can lag its own index: fall back to older packages of the series.
    for (_, package) in candidates.iter().take(4) {
        let policy = output(apt("apt-cache")?.args(["policy", package]))?;
        let version = policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .with_context(|| format!("no candidate version of {package}"))?
            .to_string();
        let id = format!("{package}_{version}");
        if let Some(kernel) = cached(series, &id) {
            return Ok(kernel);
        }
        match output(
            apt("apt-get")?
                .current_dir(&debs)
                .args(["download", package]),
        ) {
            Ok(_) => {}
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        }
        let file_version = version.replace(':', "%3a");
        let deb = debs.join(format!("{package}_{file_version}_amd64.deb"));
        let kernels = cache_dir().join("kernels");
        std::fs::create_dir_all(&kernels)?;
        let dest = kernels.join(&id);
        let partial = kernels.join(format!("{id}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        // The kernel image (the serial console is built in) and the namespace test's modules.
        let boot = partial.join("boot");
        let mut release = None;
        for entry in std::fs::read_dir(&boot)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match name.strip_prefix("vmlinuz-") {
                Some(r) => release = Some(r.to_string()),
                None => std::fs::remove_file(&path)?,
            }
        }
        let release = release.with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
        keep_modules(
            &partial.join("lib/modules").join(&release),
            &partial.join(MODULES),
        )
        .with_context(|| format!("the modules of {package}"))?;
        for sub in ["lib", "usr", "etc"] {
            let _ = std::fs::remove_dir_all(partial.join(sub));
        }
        // A kernel cached before modules were kept.
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&partial, &dest)?;
        std::fs::remove_file(&deb)?;
        return cached(series, &id).with_context(|| format!("{package} has no /boot/vmlinuz-*"));
    }
    bail!(
        "cannot download any {}*{PACKAGE_SUFFIX}:\n{}",
        series.prefix,
        errors.join("\n")
    )
}

/// The extracted kernel `id` (`<package>_<version>`) if it is in the cache.
pub(super) fn cached(series: &Series, id: &str) -> Option<Kernel> {
    let boot = cache_dir().join("kernels").join(id).join("boot");
    let vmlinuz = std::fs::read_dir(boot)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })?;
    let release = vmlinuz
        .file_name()?
        .to_string_lossy()
        .strip_prefix("vmlinuz-")?
        .to_string();
    let modules = cache_dir().join("kernels").join(id).join(MODULES);
    // Cached before modules were kept, or with another list: fetched again.
    let requested = std::fs::read_to_string(modules.join(MODULES_REQUESTED)).ok()?;
    (requested == NETNS_MODULES.join("\n") && modules.join(MODULE_ORDER).is_file()).then(|| {
        Kernel {
            series: series.name,
            package: id.to_string(),
            vmlinuz,
            release,
            modules,
        }
    })
}

/// Where an extracted kernel keeps its modules (uncompressed), with MODULE_ORDER listing their
/// names in the order `insmod` loads them (a module after what it depends on).
const MODULES: &str = "modules";
pub(super) const MODULE_ORDER: &str = "order";
/// NETNS_MODULES as they were when the kernel was extracted.
const MODULES_REQUESTED: &str = "requested";

/// The modules tcp_context's two-namespace test needs, on top of what the cloud kernels build in:
/// the veth pair, and the DNAT rule iptables-nft writes (nf_tables' NAT chain and expression, and
/// the xtables target and match it may reach through nft_compat, and the counter it puts in every
/// rule, a module of its own on 5.10). Their dependencies follow. One that a kernel neither builds
/// in nor ships is left out (6.x has the counter inside nf_tables).
const NETNS_MODULES: &[&str] = &[
    "veth",
    "nft_counter",
    "nft_chain_nat",
    "nft_nat",
    "nft_compat",
    "xt_nat",
    "xt_tcpudp",
];

/// Copies NETNS_MODULES and their dependencies from a kernel's module tree (`lib/modules/<release>`
/// of its package, which has no modules.dep: the dependencies come from each module's `.modinfo`)
/// into `out`, uncompressed, with their load order in `out/order`. Built-in modules are skipped.
fn keep_modules(tree: &Path, out: &Path) -> anyhow::Result<()> {
    let builtin: Vec<String> = std::fs::read_to_string(tree.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let mut files = std::collections::HashMap::new();
    let mut dirs = vec![tree.join("kernel")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned())
                && name.contains(".ko")
            {
                files.insert(module_name(&name), path);
            }
        }
    }
    std::fs::create_dir_all(out)?;
    let mut order: Vec<String> = Vec::new();
    let mut todo: Vec<(String, bool)> = NETNS_MODULES
        .iter()
        .rev()
        .map(|m| (m.to_string(), false))
        .collect();
    // Depth first: a module is read (and written out) once, and takes its place in the order
    // after its dependencies (`true`: they are done).
    while let Some((name, deps_done)) = todo.pop() {
        if order.contains(&name) || builtin.contains(&name) {
            continue;
        }
        if deps_done {
            order.push(name);
            continue;
        }
        let Some(path) = files.get(&name) else {
            if NETNS_MODULES.contains(&name.as_str()) {
                continue;
            }
            bail!("no module {name} (neither built in nor in the package)");
        };
        let bytes = decompressed(path)?;
        std::fs::write(out.join(format!("{name}.ko")), &bytes)?;
        todo.push((name, true));
        for dep in module_depends(&bytes).into_iter().rev() {
            if !order.contains(&dep) {
                todo.push((dep, false));
            }
        }
    }
    std::fs::write(out.join(MODULE_ORDER), order.join("\n") + "\n")?;
    std::fs::write(out.join(MODULES_REQUESTED), NETNS_MODULES.join("\n"))?;
    Ok(())
}

/// `kernel/net/netfilter/nf_nat.ko.xz` → `nf_nat` (dashes as underscores, as the kernel names them).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// A module file's content, through xz or zstd when it is compressed.
fn decompressed(path: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return std::fs::read(path).with_context(|| format!("{}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool} (cargo xtask setup installs it)"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo` section (NUL-separated `key=value` strings).
fn module_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &ko[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(module_name)
        .collect()
}

pub(super) fn newest_cached(series: &Series) -> anyhow::Result<Kernel> {
    let dir = cache_dir().join("kernels");
    let mut ids: Vec<(u64, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            if id.ends_with(".partial") {
                return None;
            }
            let package = id.split_once('_')?.0;
            Some((package_rank(series, package)?, id))
        })
        .collect();
    ids.sort_unstable();
    ids.iter()
        .rev()
        .find_map(|(_, id)| cached(series, id))
        .with_context(|| format!("no cached {} kernel in {}", series.name, dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_ranked_within_their_series() {
        let s = |name| SERIES.iter().find(|s| s.name == name).unwrap();
        assert_eq!(
            package_rank(s("5.10"), "linux-image-5.10.0-46-cloud-amd64-unsigned"),
            Some(46)
        );
        assert_eq!(
            package_rank(s("6.1"), "linux-image-6.1.0-56-cloud-amd64-unsigned"),
            Some(56)
        );
        // bullseye's backport of 6.1 is not bookworm's kernel.
        assert_eq!(
            package_rank(
                s("6.1"),
                "linux-image-6.1.0-0.deb11.52-cloud-amd64-unsigned"
            ),
            None
        );
        assert_eq!(
            package_rank(s("6.12"), "linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
            Some(117)
        );
        assert_eq!(
            package_rank(s("6.1"), "linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
            None
        );
        assert_eq!(
            package_rank(s("6.12"), "linux-image-6.12.117+deb12-amd64-unsigned"),
            None
        );
    }

    #[test]
    fn module_names_and_dependencies_come_from_their_files() {
        assert_eq!(module_name("kernel/net/netfilter/nf_nat.ko.xz"), "nf_nat");
        assert_eq!(module_name("kernel/drivers/net/veth.ko"), "veth");
        assert_eq!(module_name("kernel/lib/crc-t10dif.ko.zst"), "crc_t10dif");
        let modinfo =
            b"\x7fELF...\0license=GPL\0depends=nf_conntrack,libcrc32c,nf-defrag\0intree=Y\0";
        assert_eq!(
            module_depends(modinfo),
            ["nf_conntrack", "libcrc32c", "nf_defrag"]
        );
        assert!(module_depends(b"\0depends=\0vermagic=6.1").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }
}
