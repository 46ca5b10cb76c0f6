//! Network namespaces for tests: a "pod" namespace joined to this machine by a veth pair on a
//! private /30, with no other interface and no default route, so nothing in it can reach
//! anything but this machine. Needs root (CAP_NET_ADMIN) and iproute2.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// A network namespace with one veth to the host: `host_ip` on this side, `ip` inside.
pub struct NetNs {
    pub name: String,
    /// The namespace's address, reachable from the host.
    pub ip: String,
    /// The host side's address, reachable from inside.
    pub host_ip: String,
    host_if: String,
}

/// Prefix of every namespace this process creates (the control plane's watchdog removes
/// them when the process ends).
pub fn prefix() -> String {
    format!("rmt-{}-", std::process::id())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl NetNs {
    pub fn create() -> anyhow::Result<NetNs> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // A /30 per namespace in 10.250.0.0/16, spread by pid so parallel test binaries differ.
        let slot = (std::process::id().wrapping_mul(64) + n) % 16384;
        let (a, b) = (slot / 64, (slot % 64) * 4);
        let name = format!("{}{n}", prefix());
        let host_if = format!("rmh{}x{n}", std::process::id() % 100000);
        let ns_if = "eth0";
        let host_ip = format!("10.250.{a}.{}", b + 1);
        let inner_ip = format!("10.250.{a}.{}", b + 2);
        ip(&["netns", "add", &name])?;
        let made =
            NetNs { name: name.clone(), ip: inner_ip.clone(), host_ip: host_ip.clone(), host_if: host_if.clone() };
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", &name, "addr", "add", &format!("{inner_ip}/30"), "dev", ns_if])?;
        ip(&["-n", &name, "link", "set", ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(made)
    }

    /// Joins this namespace to `other` with a veth pair of their own on a private /30;
    /// returns (this side's address, the other side's address).
    pub fn link_to(&self, other: &NetNs) -> anyhow::Result<(String, String)> {
        self.link_to_named(other).map(|(a, b, _)| (a, b))
    }

    /// [`NetNs::link_to`], also returning the link's name prefix (for [`NetNs::link_v6`]).
    pub fn link_to_named(&self, other: &NetNs) -> anyhow::Result<(String, String, String)> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let slot = (std::process::id().wrapping_mul(64) + n) % 16384;
        let (a, b) = (slot / 64, (slot % 64) * 4);
        let (mine, theirs) = (format!("10.251.{a}.{}", b + 1), format!("10.251.{a}.{}", b + 2));
        let (if_a, if_b) = (format!("lk{n}a"), format!("lk{n}b"));
        ip(&["-n", &self.name, "link", "add", &if_a, "type", "veth", "peer", "name", &if_b, "netns", &other.name])?;
        ip(&["-n", &self.name, "addr", "add", &format!("{mine}/30"), "dev", &if_a])?;
        ip(&["-n", &other.name, "addr", "add", &format!("{theirs}/30"), "dev", &if_b])?;
        ip(&["-n", &self.name, "link", "set", &if_a, "up"])?;
        ip(&["-n", &other.name, "link", "set", &if_b, "up"])?;
        Ok((mine, theirs, format!("lk{n}")))
    }

    /// Adds IPv6 addresses to the link made by [`NetNs::link_to`] (its `n`th link, as the
    /// interface names `lk<n>a`/`lk<n>b` say): `mine` here and `theirs` on `other`, /64.
    pub fn link_v6(&self, other: &NetNs, link: &str, mine: &str, theirs: &str) -> anyhow::Result<()> {
        ip(&["-n", &self.name, "-6", "addr", "add", &format!("{mine}/64"), "dev", &format!("{link}a"), "nodad"])?;
        ip(&["-n", &other.name, "-6", "addr", "add", &format!("{theirs}/64"), "dev", &format!("{link}b"), "nodad"])
    }

    /// Adds a route inside the namespace, e.g. `("10.96.0.0/16", "10.251.0.2")`.
    pub fn route(&self, cidr: &str, via: &str) -> anyhow::Result<()> {
        let family = if cidr.contains(':') { "-6" } else { "-4" };
        ip(&["-n", &self.name, family, "route", "add", cidr, "via", via])
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
