//! `cargo xtask image [agent|demo-shop|all]`: the container images, built with docker or podman
//! (whichever is installed, or `--engine`) from the repository root: `Dockerfile` (the agent; its
//! build stage runs `cargo xtask build`, as CI does) and `tests/demo/Dockerfile` (the demo shop).
//! Tags are `[REGISTRY/]loupe-agent:TAG` and `[REGISTRY/]loupe-demo-shop:TAG`, TAG defaulting to
//! the workspace version; `--push` pushes them, `--dry-run` prints the commands instead.

use std::process::Command;

use anyhow::bail;

use crate::util::{exec, root, succeeds};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Agent,
    DemoShop,
    All,
}

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Which image to build.
    #[arg(value_enum, default_value = "agent")]
    pub which: Which,
    /// Registry prefix, e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com`.
    #[arg(long)]
    pub registry: Option<String>,
    /// Image tag [default: the workspace version].
    #[arg(long)]
    pub tag: Option<String>,
    /// Push after building.
    #[arg(long)]
    pub push: bool,
    /// `docker` or `podman` [default: the first found on PATH].
    #[arg(long)]
    pub engine: Option<String>,
    /// Print the commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
}

/// One image: its name and Dockerfile (relative to the repository root, the build context).
struct Image {
    name: &'static str,
    dockerfile: &'static str,
}

const AGENT: Image = Image {
    name: "loupe-agent",
    dockerfile: "Dockerfile",
};
const DEMO_SHOP: Image = Image {
    name: "loupe-demo-shop",
    dockerfile: "tests/demo/Dockerfile",
};

fn images(which: Which) -> Vec<&'static Image> {
    match which {
        Which::Agent => vec![&AGENT],
        Which::DemoShop => vec![&DEMO_SHOP],
        Which::All => vec![&AGENT, &DEMO_SHOP],
    }
}

fn reference(registry: Option<&str>, name: &str, tag: &str) -> String {
    match registry.map(|r| r.trim_end_matches('/')) {
        Some(r) if !r.is_empty() => format!("{r}/{name}:{tag}"),
        _ => format!("{name}:{tag}"),
    }
}

/// The engine commands, in order: a build per image, then a push per image when asked.
fn commands(args: &ImageArgs, engine: &str, tag: &str) -> Vec<Vec<String>> {
    let context = root().display().to_string();
    let mut out = Vec::new();
    let refs: Vec<(String, &Image)> = images(args.which)
        .into_iter()
        .map(|i| (reference(args.registry.as_deref(), i.name, tag), i))
        .collect();
    for (r, image) in &refs {
        out.push(vec![
            engine.to_string(),
            "build".into(),
            "--file".into(),
            root().join(image.dockerfile).display().to_string(),
            "--tag".into(),
            r.clone(),
            context.clone(),
        ]);
    }
    if args.push {
        for (r, _) in &refs {
            out.push(vec![engine.to_string(), "push".into(), r.clone()]);
        }
    }
    out
}

fn find_engine(asked: Option<&str>) -> anyhow::Result<String> {
    if let Some(engine) = asked {
        if !succeeds(Command::new(engine).arg("--version")) {
            bail!("{engine} does not run here; install it, or leave out --engine");
        }
        return Ok(engine.to_string());
    }
    for engine in ["docker", "podman"] {
        if succeeds(Command::new(engine).arg("--version")) {
            return Ok(engine.to_string());
        }
    }
    bail!(
        "no container engine found: install docker or podman (or build the images in CI); \
         `cargo xtask image --dry-run` prints the commands"
    )
}

pub fn image(args: ImageArgs) -> anyhow::Result<()> {
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
    let engine = if args.dry_run {
        args.engine.clone().unwrap_or_else(|| "docker".into())
    } else {
        find_engine(args.engine.as_deref())?
    };
    for cmd in commands(&args, &engine, &tag) {
        if args.dry_run {
            println!("{}", cmd.join(" "));
            continue;
        }
        eprintln!("==> {}", cmd.join(" "));
        exec(
            Command::new(&cmd[0])
                .args(&cmd[1..])
                // BuildKit: the Dockerfiles use cache mounts.
                .env("DOCKER_BUILDKIT", "1"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(which: Which, registry: Option<&str>, push: bool) -> ImageArgs {
        ImageArgs {
            which,
            registry: registry.map(String::from),
            tag: None,
            push,
            engine: None,
            dry_run: true,
        }
    }

    #[test]
    fn builds_then_pushes_every_image_under_the_registry() {
        let cmds = commands(
            &args(
                Which::All,
                Some("123.dkr.ecr.eu-west-1.amazonaws.com/"),
                true,
            ),
            "podman",
            "0.2.0",
        );
        assert_eq!(cmds.len(), 4);
        assert_eq!(cmds[0][..2], ["podman", "build"]);
        assert!(cmds[0].ends_with(&[
            "--tag".into(),
            "123.dkr.ecr.eu-west-1.amazonaws.com/loupe-agent:0.2.0".into(),
            root().display().to_string()
        ]));
        assert!(cmds[1][3].ends_with("tests/demo/Dockerfile"));
        assert_eq!(
            cmds[3],
            [
                "podman",
                "push",
                "123.dkr.ecr.eu-west-1.amazonaws.com/loupe-demo-shop:0.2.0"
            ]
        );
    }

    #[test]
    fn without_a_registry_the_name_is_local_and_nothing_is_pushed() {
        let cmds = commands(&args(Which::Agent, None, false), "docker", "0.1.0");
        assert_eq!(cmds.len(), 1);
        assert!(cmds[0].contains(&"loupe-agent:0.1.0".to_string()));
    }

    /// The Dockerfile's RUN, FROM and COPY instructions, continuation lines joined.
    fn instructions(path: &str) -> Vec<String> {
        let text = std::fs::read_to_string(root().join(path)).expect("Dockerfile");
        let mut out: Vec<String> = Vec::new();
        let mut current = String::new();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let line = line.trim();
            if let Some(part) = line.strip_suffix('\\') {
                current.push_str(part);
                current.push(' ');
                continue;
            }
            current.push_str(line);
            if !current.trim().is_empty() {
                out.push(current.trim().to_string());
            }
            current.clear();
        }
        out
    }

    #[test]
    fn the_agent_image_builds_as_ci_does_and_ships_only_the_binary() {
        let ins = instructions(AGENT.dockerfile);
        let froms: Vec<&String> = ins.iter().filter(|i| i.starts_with("FROM ")).collect();
        assert_eq!(froms.len(), 2, "{froms:?}");
        // Debian 12, the system CI runs on.
        assert!(froms[0].contains("bookworm") && froms[0].ends_with("AS build"));
        assert!(froms[1].contains("distroless/cc-debian12"), "{}", froms[1]);
        // The build is `cargo xtask build`: what `cargo xtask test` (CI) runs before its tests.
        let runs: Vec<&String> = ins.iter().filter(|i| i.starts_with("RUN ")).collect();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert!(runs[0].contains("cargo xtask build "), "{}", runs[0]);
        // Then file capabilities, permitted only: every one the chart may add, no other.
        let setcap = runs[1]
            .split("setcap ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("a setcap");
        let (caps, flags) = setcap.split_once('=').expect("caps=flags");
        assert_eq!(flags, "p", "permitted only: the agent raises them itself");
        let mut in_file: Vec<String> = caps
            .split(',')
            .map(|c| c.trim_start_matches("cap_").to_uppercase())
            .collect();
        in_file.sort();
        let helpers =
            std::fs::read_to_string(root().join("helm/loupe/templates/_helpers.tpl")).unwrap();
        let mut charted: Vec<String> = helpers
            .split("define \"loupe.capabilities\"")
            .nth(1)
            .and_then(|rest| rest.split("{{- end -}}\n\n").next())
            .expect("the chart's capability list")
            .lines()
            .filter_map(|l| l.strip_prefix("- "))
            .map(str::to_string)
            .collect();
        charted.sort();
        assert_eq!(in_file, charted);
        let test_rs = std::fs::read_to_string(root().join("xtask/src/test.rs")).expect("test.rs");
        assert!(test_rs.contains("build(Extras::Test)"));
        // It copies the binary `cargo xtask build` makes, and only that, into the final image.
        assert!(runs[0].contains("target/release/loupe-agent"));
        assert!(crate::build::agent_binary().ends_with("target/release/loupe-agent"));
        let copies: Vec<&String> = ins.iter().filter(|i| i.starts_with("COPY ")).collect();
        assert_eq!(
            copies.last().map(|c| c.as_str()),
            Some("COPY --from=build /out/loupe-agent /usr/bin/loupe-agent")
        );
        assert!(ins.contains(&"ENTRYPOINT [\"/usr/bin/loupe-agent\"]".to_string()));
    }

    #[test]
    fn the_demo_shop_image_builds_what_the_demo_runs() {
        let ins = instructions(DEMO_SHOP.dockerfile);
        let run = ins
            .iter()
            .find(|i| i.starts_with("RUN ") && i.contains("cargo build"))
            .expect("a cargo build");
        // The same package and binary as `cargo xtask demo` (demo/stack.rs build_shop).
        for arg in ["--release", "-p loupe-demo-shop", "--bin demo-shop"] {
            assert!(run.contains(arg), "{run}");
        }
        let stack = std::fs::read_to_string(root().join("xtask/src/demo/stack.rs")).expect("stack");
        assert!(stack.contains("\"loupe-demo-shop\",") && stack.contains("\"demo-shop\","));
        // The chart runs `demo-shop SERVICE`: the image's entry point takes the service.
        assert!(
            ins.iter()
                .any(|i| i.starts_with("ENTRYPOINT") && i.contains("demo-shop"))
        );
    }
}
