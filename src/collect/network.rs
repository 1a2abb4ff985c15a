//! Network interfaces → `network[]`: addresses (from the kernel or a capture,
//! see `Root::interface_addrs`), MAC and loopback flag from
//! `/sys/class/net/<if>/`, byte counters from `/proc/net/dev`.
//!
//! Like the server expects, an interface is reported when it has at least one
//! address and is not a loopback; its up/down state does not matter and no
//! names are filtered (`docker0` with an address is reported).
//!
//! The counters are read every cycle; the rest (which interfaces, their
//! addresses and MAC) is kept by [`Watch`] until the kernel says an interface
//! or address changed (a netlink socket subscribed to those changes, live
//! root only; a captured root is read every cycle).

use std::collections::{BTreeMap, HashMap};

use super::Error;
use crate::root::{self, ReadError, Root};
use crate::sys::LinkChanges;

const NET_DEV: &str = "/proc/net/dev";
/// `IFF_LOOPBACK` from `<linux/if.h>`.
const IFF_LOOPBACK: u64 = 0x8;
/// ARPHRD types of IP tunnels, whose "hardware address" is an IP address.
const TUNNEL_TYPES: [u32; 5] = [768, 769, 776, 778, 823];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// Lower-case `aa:bb:cc:dd:ee:ff`; empty when the interface has no L2 address.
    pub mac: String,
    /// `ip/prefixlen`, kernel order.
    pub addresses: Vec<String>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The interfaces worth reporting, without their counters, kept while the
/// kernel reports no change of interfaces or addresses.
#[derive(Default)]
pub struct Watch {
    /// Open once the first cycle of a live root ran; `None` on a captured
    /// root, or where the socket cannot be had (read every cycle then).
    changes: Option<LinkChanges>,
    tried: bool,
    kept: Option<Vec<Interface>>,
    /// How many times the interfaces were read (getifaddrs and sysfs).
    reads: u64,
}

impl Watch {
    pub fn new() -> Watch {
        Watch::default()
    }

    /// How many times the interfaces and addresses were read.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// The interfaces (counters at zero): kept, or read again when the
    /// kernel queued a change since the last read (or cannot tell).
    fn interfaces(&mut self, root: &Root) -> Result<&[Interface], Error> {
        if !self.tried && !root.is_captured() {
            self.tried = true;
            // Subscribed before the first read: nothing after it is missed.
            match LinkChanges::open() {
                Ok(c) => self.changes = Some(c),
                Err(e) => log::debug!("no netlink link changes ({e}); interfaces read every cycle"),
            }
        }
        let unchanged = match &self.changes {
            // Taken before the read: a change during it is seen next time.
            Some(c) => !c.changed().unwrap_or(true) && self.kept.is_some(),
            None => false,
        };
        if !unchanged {
            self.kept = None;
            self.kept = Some(read_interfaces(root)?);
            self.reads += 1;
        }
        Ok(self
            .kept
            .as_deref()
            .expect("invariant: kept was read or kept"))
    }
}

pub fn collect(root: &Root, watch: &mut Watch) -> Result<Vec<Interface>, Error> {
    let interfaces = watch.interfaces(root)?;
    // Counters are optional: an interface is still worth reporting without them.
    let counters = root
        .read_kept(NET_DEV, root::LARGE)
        .ok()
        .map(|c| parse_net_dev(&c.text))
        .unwrap_or_default();
    Ok(interfaces
        .iter()
        .map(|i| {
            let (rx_bytes, tx_bytes) = counters.get(&i.name).copied().unwrap_or((0, 0));
            Interface {
                rx_bytes,
                tx_bytes,
                ..i.clone()
            }
        })
        .collect())
}

/// Interfaces with an address that are not loopbacks, with their MAC.
fn read_interfaces(root: &Root) -> Result<Vec<Interface>, Error> {
    let addrs = root.interface_addrs().map_err(|e| {
        Error::Read(ReadError {
            path: "getifaddrs".into(),
            source: e,
        })
    })?;
    let by_name = by_interface(addrs);
    let mut out = Vec::with_capacity(by_name.len());
    for (name, addresses) in by_name {
        let sys = |file: &str| root.read_trimmed(&format!("/sys/class/net/{name}/{file}"));
        let loopback = match sys("flags").and_then(|f| parse_hex(&f)) {
            Some(flags) => flags & IFF_LOOPBACK != 0,
            None => addresses.iter().all(|a| is_loopback_cidr(a)),
        };
        if loopback {
            continue;
        }
        let arphrd = sys("type").and_then(|t| t.parse::<u32>().ok());
        let mac = sys("address")
            .map(|a| normalise_mac(&a, arphrd))
            .unwrap_or_default();
        out.push(Interface {
            name,
            mac,
            addresses,
            rx_bytes: 0,
            tx_bytes: 0,
        });
    }
    Ok(out)
}

/// Addresses grouped by interface, interfaces sorted by name, addresses in
/// kernel order. getifaddrs names a labelled IPv4 address by its label
/// (`eth0:1`); the interface is the part before the colon (a name cannot
/// hold one).
pub fn by_interface(addrs: Vec<crate::sys::IfAddr>) -> BTreeMap<String, Vec<String>> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in addrs.into_iter().filter(|a| !a.cidr.is_empty()) {
        let name = a
            .interface
            .split(':')
            .next()
            .unwrap_or(&a.interface)
            .to_string();
        by_name.entry(name).or_default().push(a.cidr);
    }
    by_name
}

/// Parses `/proc/net/dev` into `name → (rx_bytes, tx_bytes)`. Header and
/// malformed lines are skipped.
pub fn parse_net_dev(text: &str) -> HashMap<String, (u64, u64)> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.contains('|') || name.contains(char::is_whitespace) {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 16 {
            continue;
        }
        if let (Ok(rx), Ok(tx)) = (f[0].parse::<u64>(), f[8].parse::<u64>()) {
            out.insert(name.to_string(), (rx, tx));
        }
    }
    out
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn is_loopback_cidr(cidr: &str) -> bool {
    let ip = cidr.split('/').next().unwrap_or(cidr);
    ip.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The MAC as the server shows it: lower case, colon-separated; empty for
/// all-zero addresses and for IP tunnels, like Go's `net.Interfaces`.
fn normalise_mac(addr: &str, arphrd: Option<u32>) -> String {
    let bytes: Vec<&str> = addr.split(':').collect();
    if bytes.iter().any(|b| u8::from_str_radix(b, 16).is_err()) {
        return String::new();
    }
    if arphrd.is_some_and(|t| TUNNEL_TYPES.contains(&t)) && matches!(bytes.len(), 4 | 16) {
        return String::new();
    }
    if bytes.iter().all(|b| u8::from_str_radix(b, 16) == Ok(0)) {
        return String::new();
    }
    addr.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev() {
        let t = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
    lo:    6079      69    0    0    0     0          0         0     6079      69    0    0    0     0       0          0\n  \
  eth0:625 10 0 0 0 0 0 0 1473 18 0 0 0 0 0 0\n  bad: 1 2 3\n";
        let m = parse_net_dev(t);
        assert_eq!(m.get("lo"), Some(&(6079, 6079)));
        assert_eq!(m.get("eth0"), Some(&(625, 1473)));
        assert!(!m.contains_key("bad"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn labels_belong_to_their_interface() {
        let a = |i: &str, c: &str| crate::sys::IfAddr {
            interface: i.into(),
            cidr: c.into(),
        };
        let g = by_interface(vec![
            a("eth0", "10.0.0.1/24"),
            a("lo:1", "10.9.0.2/24"),
            a("eth0:1", "10.0.1.1/24"),
            a("lo", "127.0.0.1/8"),
        ]);
        assert_eq!(g.keys().collect::<Vec<_>>(), ["eth0", "lo"]);
        assert_eq!(g["eth0"], ["10.0.0.1/24", "10.0.1.1/24"]);
        assert_eq!(g["lo"], ["10.9.0.2/24", "127.0.0.1/8"]);
    }

    #[test]
    fn mac_rules() {
        assert_eq!(
            normalise_mac("BC:24:11:5A:9F:02", Some(1)),
            "bc:24:11:5a:9f:02"
        );
        assert_eq!(normalise_mac("00:00:00:00:00:00", Some(772)), "");
        assert_eq!(normalise_mac("c0:a8:01:02", Some(768)), "");
        assert_eq!(normalise_mac("", Some(65534)), "");
        assert_eq!(normalise_mac("zz:00", None), "");
    }

    #[test]
    fn flags_and_loopback() {
        assert_eq!(parse_hex("0x1003"), Some(0x1003));
        assert_eq!(parse_hex("0x9").map(|f| f & IFF_LOOPBACK), Some(8));
        assert!(is_loopback_cidr("127.0.0.1/8"));
        assert!(is_loopback_cidr("::1/128"));
        assert!(!is_loopback_cidr("10.0.0.1/8"));
    }
}
