//! `respmesh-init`: see the library documentation for the ruleset.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use respmesh_init::{Family, Plan, cleanup_ruleset, count_rules, has_global_ipv6, has_jump, has_net_caps};

/// Redirects the pod's outbound TCP connections to Redis ports to the respmesh proxy.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Destination ports to capture, comma-separated.
    #[arg(long, default_value = "6379", env = "RESPMESH_CAPTURE_PORTS")]
    ports: String,
    /// The proxy's capture port.
    #[arg(long, default_value_t = 15379)]
    proxy_port: u16,
    /// The proxy's UID; its own connections are never captured.
    #[arg(long, default_value_t = 1379)]
    proxy_uid: u32,
    /// Destinations never captured, comma-separated CIDRs (IPv4 and IPv6).
    #[arg(long, default_value = "", env = "RESPMESH_EXCLUDE_CIDRS")]
    exclude_cidrs: String,
    /// Which iptables backend: the one the node uses (auto), or forced.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// IPv6 rules too: when the pod has an IPv6 address (auto), always, or never. With
    /// --dry-run, auto means off (the output must not depend on the machine).
    #[arg(long, value_enum, default_value_t = Switch::Auto)]
    ipv6: Switch,
    /// Print the ruleset instead of applying it.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules instead of adding them.
    #[arg(long, conflicts_with = "dry_run")]
    cleanup: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Backend {
    Auto,
    Legacy,
    Nft,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Switch {
    Auto,
    On,
    Off,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("respmesh-init: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let ports = respmesh_init::parse_ports(&args.ports).map_err(anyhow::Error::msg).context("--ports")?;
    if ports.is_empty() {
        bail!("--ports: at least one port is needed");
    }
    let mut exclude_cidrs = Vec::new();
    for c in args.exclude_cidrs.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        exclude_cidrs.push(respmesh_init::parse_cidr(c).map_err(anyhow::Error::msg).context("--exclude-cidrs")?);
    }
    Ok(Plan { ports, proxy_port: args.proxy_port, proxy_uid: args.proxy_uid, exclude_cidrs })
}

fn run(args: &Args) -> anyhow::Result<()> {
    let plan = plan(args)?;
    if args.dry_run {
        print!("# iptables (IPv4), nat table\n{}", plan.ruleset(Family::V4, true));
        if args.ipv6 == Switch::On {
            print!("# ip6tables (IPv6), nat table\n{}", plan.ruleset(Family::V6, true));
        }
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !has_net_caps(&status) {
        bail!(
            "the capabilities NET_ADMIN and NET_RAW are missing; the init container needs \
             securityContext.capabilities.add: [NET_ADMIN, NET_RAW] (and to run as root)"
        );
    }
    let v6 = match args.ipv6 {
        Switch::On => true,
        Switch::Off => false,
        Switch::Auto => has_global_ipv6(&std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default()),
    };
    let backend = match args.backend {
        Backend::Legacy => "legacy",
        Backend::Nft => "nft",
        Backend::Auto => detect_backend(),
    };
    let mut families = vec![Family::V4];
    if v6 {
        families.push(Family::V6);
    }
    for family in families {
        let tool = |what: &str| tool_name(family, backend, what);
        let saved = run_tool(&tool("save"), &["-t", "nat"], None)?;
        if args.cleanup {
            match cleanup_ruleset(&saved) {
                Some(r) => {
                    run_tool(&tool("restore"), &["--noflush"], Some(&r))?;
                    eprintln!("respmesh-init: {} rules removed ({backend})", family_name(family));
                }
                None => eprintln!("respmesh-init: no {} rules to remove", family_name(family)),
            }
            continue;
        }
        let ruleset = plan.ruleset(family, !has_jump(&saved));
        run_tool(&tool("restore"), &["--noflush"], Some(&ruleset))?;
        eprintln!(
            "respmesh-init: {} TCP to ports {:?} now goes to port {} ({backend}); UID {} is exempt",
            family_name(family),
            plan.ports,
            plan.proxy_port,
            plan.proxy_uid
        );
    }
    Ok(())
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// `iptables-nft-save`, `ip6tables-legacy-restore`, ...; the plain name when the backend's
/// own binary is not installed.
fn tool_name(family: Family, backend: &str, what: &str) -> String {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let specific = format!("{base}-{backend}-{what}");
    if which(&specific) { specific } else { format!("{base}-{what}") }
}

fn which(name: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| std::path::Path::new(d).join(name).is_file())
}

/// The backend with rules already in this network namespace (kubelet or CNI rules show which
/// one the node uses); when neither has any, the one the plain `iptables` binary uses.
fn detect_backend() -> &'static str {
    let count = |b: &str| {
        let tool = tool_name(Family::V4, b, "save");
        run_tool(&tool, &[], None).map(|s| count_rules(&s)).unwrap_or(0)
    };
    let (legacy, nft) = (count("legacy"), count("nft"));
    if legacy != nft {
        return if legacy > nft { "legacy" } else { "nft" };
    }
    let version = Command::new("iptables").arg("--version").output().map(|o| o.stdout).unwrap_or_default();
    if String::from_utf8_lossy(&version).contains("legacy") { "legacy" } else { "nft" }
}

fn run_tool(tool: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {tool} (is iptables installed in the image?)"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(input.unwrap_or("").as_bytes())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Permission denied") || err.contains("Operation not permitted") {
            bail!("{tool} was refused ({}); the init container needs NET_ADMIN and NET_RAW", err.trim());
        }
        bail!("{tool} {} failed: {}", args.join(" "), err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
