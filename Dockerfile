# syntax=docker/dockerfile:1
# The agent's image: one binary with its eBPF object embedded, on a distroless base.
# Build it with `cargo xtask image agent` (docker or podman; context: the repository root):
#   docker build -t loupe-agent .
#
# The build stage is Debian 12, the system CI runs on, and runs the command CI builds with:
# `cargo xtask build` installs Debian's Rust 1.96, LLVM 22 and bpf-linker for the kernel programs,
# builds them, then the release agent (xtask/src/build.rs). Release CI should pin both base
# images by digest.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=loupe-agent-target \
    cargo xtask build \
    && install -D -m 0755 --strip target/release/loupe-agent /out/loupe-agent
# File capabilities for a non-root agent (chart: securityContext.runAsUser): every capability the
# chart may grant, permitted only. A process gets the ones its container's bounding set also
# holds, and the agent raises them to effective itself (with the effective bit set the kernel
# would refuse to run the file wherever the chart grants fewer). As root they change nothing.
RUN apt-get update && apt-get install -y --no-install-recommends libcap2-bin \
    && setcap cap_bpf,cap_perfmon,cap_sys_ptrace,cap_dac_read_search,cap_net_admin,cap_sys_resource,cap_sys_admin=p /out/loupe-agent \
    && getcap /out/loupe-agent

# Stripped of its debug info (114 MB to 20 MB; the eBPF object is data and stays). glibc, libgcc
# and nothing else: no shell, no package manager. By default the agent runs as uid 0 inside the
# container, because Kubernetes grants added capabilities to root only; the chart drops every
# other capability and makes the root filesystem read-only (helm/loupe). As another user it
# relies on the file capabilities above, which BuildKit's COPY --from keeps (extended
# attributes; the legacy builder dropped them).
FROM gcr.io/distroless/cc-debian12
LABEL org.opencontainers.image.title="loupe-agent" \
      org.opencontainers.image.description="Loupe: eBPF CPU profiles, network spans and logs, correlated for Grafana" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/loupe-agent /usr/bin/loupe-agent
ENTRYPOINT ["/usr/bin/loupe-agent"]
CMD ["run"]
