//! respmesh-init: installs, in the pod's network namespace, the nat rules that send the pod's
//! outbound Redis connections to the sidecar's capture port.
//!
//! One ruleset, in chains of its own, applied with `iptables-restore --noflush` so that
//! nothing else in the table is touched:
//!
//! ```text
//! *nat
//! :RESPMESH_OUTPUT - [0:0]          outbound TCP is sent here from OUTPUT
//! :RESPMESH_REDIRECT - [0:0]        what ends here goes to the proxy
//! -A RESPMESH_OUTPUT -m owner --uid-owner 1379 -j RETURN     the proxy's own connections
//! -A RESPMESH_OUTPUT -o lo -j RETURN                         this pod's own loopback
//! -A RESPMESH_OUTPUT -d <excluded CIDR> -j RETURN            per pod, by annotation
//! -A RESPMESH_OUTPUT -p tcp --dport <port> -j RESPMESH_REDIRECT
//! -A RESPMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15379
//! -A OUTPUT -p tcp -j RESPMESH_OUTPUT                        once, even when run again
//! COMMIT
//! ```
//!
//! Running it again gives the same rules (declaring the chains flushes them, and the jump from
//! OUTPUT is added only when missing); `--cleanup` removes them.

use std::fmt::Write as _;
use std::net::IpAddr;

pub const OUTPUT_CHAIN: &str = "RESPMESH_OUTPUT";
pub const REDIRECT_CHAIN: &str = "RESPMESH_REDIRECT";
pub const JUMP: &str = "-A OUTPUT -p tcp -j RESPMESH_OUTPUT";

/// IPv4 or IPv6 (iptables or ip6tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// What to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Destination ports whose outbound TCP connections go to the proxy.
    pub ports: Vec<u16>,
    /// The proxy's capture port.
    pub proxy_port: u16,
    /// The proxy's UID: its own connections are never captured.
    pub proxy_uid: u32,
    /// Destinations never captured, as `ADDR/PREFIX`.
    pub exclude_cidrs: Vec<(IpAddr, u8)>,
}

/// Parses `10.0.0.0/8`, `fd00::/8` or a bare address (a host route).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.trim().parse().map_err(|_| format!("{s:?} is not an address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().map_err(|_| format!("{s:?}: bad prefix length"))?,
        None => max,
    };
    if len > max {
        return Err(format!("{s:?}: the prefix length is more than {max}"));
    }
    Ok((ip, len))
}

/// Parses a comma-separated list of ports (`6379,6380`); each between 1 and 65535.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => out.push(n),
            _ => return Err(format!("{p:?} is not a port (1-65535)")),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl Plan {
    /// The `iptables-restore` input for `family`; `with_jump` adds the rule that sends
    /// OUTPUT to our chain (left out when it is already there).
    pub fn ruleset(&self, family: Family, with_jump: bool) -> String {
        let mut r = String::new();
        r.push_str("*nat\n");
        let _ = writeln!(r, ":{OUTPUT_CHAIN} - [0:0]");
        let _ = writeln!(r, ":{REDIRECT_CHAIN} - [0:0]");
        let _ = writeln!(r, "-F {OUTPUT_CHAIN}");
        let _ = writeln!(r, "-F {REDIRECT_CHAIN}");
        let _ = writeln!(r, "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN", self.proxy_uid);
        let _ = writeln!(r, "-A {OUTPUT_CHAIN} -o lo -j RETURN");
        for (ip, len) in &self.exclude_cidrs {
            let ours = matches!((family, ip), (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_)));
            if ours {
                let _ = writeln!(r, "-A {OUTPUT_CHAIN} -d {ip}/{len} -j RETURN");
            }
        }
        for port in &self.ports {
            let _ = writeln!(r, "-A {OUTPUT_CHAIN} -p tcp --dport {port} -j {REDIRECT_CHAIN}");
        }
        let _ = writeln!(r, "-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}", self.proxy_port);
        if with_jump {
            r.push_str(JUMP);
            r.push('\n');
        }
        r.push_str("COMMIT\n");
        r
    }
}

/// The `iptables-restore --noflush` input that removes everything [`Plan::ruleset`] adds, for
/// the current table state `saved` (`iptables-save -t nat` output).
pub fn cleanup_ruleset(saved: &str) -> Option<String> {
    let has_chain = saved.lines().any(|l| l.starts_with(&format!(":{OUTPUT_CHAIN} ")));
    let has_jump = has_jump(saved);
    if !has_chain && !has_jump {
        return None;
    }
    let mut r = String::from("*nat\n");
    if has_jump {
        r.push_str(&JUMP.replacen("-A ", "-D ", 1));
        r.push('\n');
    }
    for chain in [OUTPUT_CHAIN, REDIRECT_CHAIN] {
        if saved.lines().any(|l| l.starts_with(&format!(":{chain} "))) {
            let _ = writeln!(r, "-F {chain}");
            let _ = writeln!(r, "-X {chain}");
        }
    }
    r.push_str("COMMIT\n");
    Some(r)
}

/// Whether `iptables-save` output already has our jump from OUTPUT.
pub fn has_jump(saved: &str) -> bool {
    saved.lines().any(|l| l.trim() == JUMP)
}

/// Counts the rules in `iptables-save` output (to tell which backend the node uses).
pub fn count_rules(saved: &str) -> usize {
    saved.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Whether the pod has an IPv6 address other than loopback and link-local, from the text of
/// `/proc/net/if_inet6`.
pub fn has_global_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (Some(addr), Some(_), Some(_), Some(scope), Some(name)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return false;
        };
        name != "lo" && scope == "00" && !addr.starts_with("fe80")
    })
}

/// Whether the effective capability set in `/proc/self/status` text has CAP_NET_ADMIN (12)
/// and CAP_NET_RAW (13).
pub fn has_net_caps(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0 && caps & (1 << 13) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_cidrs_parse_strictly() {
        assert_eq!(parse_ports("6380, 6379,6379").unwrap(), vec![6379, 6380]);
        assert!(parse_ports("0").is_err() && parse_ports("70000").is_err() && parse_ports("x").is_err());
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap(), ("10.0.0.0".parse().unwrap(), 8));
        assert_eq!(parse_cidr("fd00::1").unwrap(), ("fd00::1".parse().unwrap(), 128));
        assert!(parse_cidr("10.0.0.0/33").is_err() && parse_cidr("nope").is_err());
    }

    #[test]
    fn cleanup_removes_only_what_exists() {
        assert_eq!(cleanup_ruleset("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"), None);
        let saved = format!(":{OUTPUT_CHAIN} - [0:0]\n:{REDIRECT_CHAIN} - [0:0]\n{JUMP}\n");
        let r = cleanup_ruleset(&saved).unwrap();
        assert!(r.contains("-D OUTPUT -p tcp -j RESPMESH_OUTPUT") && r.contains("-X RESPMESH_REDIRECT"), "{r}");
    }

    #[test]
    fn environment_probes() {
        let v6 = "00000000000000000000000000000001 01 80 10 80       lo\n\
                  fe800000000000000000000000000001 02 40 20 80     eth0\n";
        assert!(!has_global_ipv6(v6));
        assert!(has_global_ipv6(&format!("{v6}fd000000000000000000000000000002 02 40 00 80     eth0\n")));
        assert!(has_net_caps("Name:\tx\nCapEff:\t000001ffffffffff\n"));
        assert!(!has_net_caps("CapEff:\t0000000000000000\n"));
        assert!(!has_net_caps("CapEff:\t0000000000001000\n"), "NET_ADMIN without NET_RAW");
    }
}
