//! Who may talk to the proxy, and with which capabilities (spec §3).
//!
//! The kernel names the peer (`SO_PEERCRED`, in the host's user namespace),
//! so nothing the peer sends is trusted for this. First match wins:
//! 1. its UID is listed (root and the proxy's own UID always are, with every
//!    capability; `allowed_peers` with theirs; `allowed_peer_uids` with all);
//! 2. its GID is listed (0, the proxy's own, `allowed_peer_gids`): all;
//! 3. its UID and GID fall inside a subordinate range of `/etc/subuid` and
//!    `/etc/subgid` owned by an `allowed_idmap_users` name (the root of an
//!    unprivileged Proxmox container arrives as 100000): **read** only;
//! 4. otherwise refused.

use std::collections::BTreeMap;

use super::{Peer, caps};

/// A subordinate ID range: `start .. start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u32,
    pub len: u32,
}

impl Range {
    fn contains(&self, id: u32) -> bool {
        id >= self.start && u64::from(id) < u64::from(self.start) + u64::from(self.len)
    }
}

/// The allow-lists, built once at start.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    uids: BTreeMap<u32, u8>,
    gids: Vec<u32>,
    subuid: Vec<Range>,
    subgid: Vec<Range>,
}

/// What the rules are built from (the configuration's peer keys).
#[derive(Debug, Clone, Default)]
pub struct Lists<'a> {
    pub allowed_peers: &'a [(u32, u8)],
    pub allowed_peer_uids: &'a [u32],
    pub allowed_peer_gids: &'a [u32],
    /// `None` when `allow_idmapped_root` is off.
    pub idmap_users: Option<&'a [String]>,
}

impl Rules {
    /// `subuid`/`subgid`: the contents of `/etc/subuid` and `/etc/subgid`
    /// (`None` when absent).
    pub fn new(
        lists: &Lists<'_>,
        own_uid: u32,
        own_gid: u32,
        subuid: Option<&str>,
        subgid: Option<&str>,
    ) -> Rules {
        let mut uids = BTreeMap::new();
        uids.insert(0, caps::ALL);
        uids.insert(own_uid, caps::ALL);
        for &(uid, c) in lists.allowed_peers {
            *uids.entry(uid).or_insert(0) |= c;
        }
        for &uid in lists.allowed_peer_uids {
            uids.entry(uid).or_insert(caps::ALL);
        }
        let mut gids = vec![0, own_gid];
        gids.extend_from_slice(lists.allowed_peer_gids);
        gids.sort_unstable();
        gids.dedup();
        let (subuid, subgid) = match lists.idmap_users {
            Some(users) => (
                subuid.map(|t| parse_subid(t, users)).unwrap_or_default(),
                subgid.map(|t| parse_subid(t, users)).unwrap_or_default(),
            ),
            None => Default::default(),
        };
        Rules {
            uids,
            gids,
            subuid,
            subgid,
        }
    }

    /// Whether ID-mapped container roots can get in at all.
    pub fn has_ranges(&self) -> bool {
        !self.subuid.is_empty() && !self.subgid.is_empty()
    }

    fn ranges(&self, peer: &Peer) -> Option<Range> {
        let r = self.subuid.iter().find(|r| r.contains(peer.uid))?;
        self.subgid
            .iter()
            .any(|g| g.contains(peer.gid))
            .then_some(*r)
    }

    /// The peer's capabilities, or the refusal's audit reason.
    pub fn authorize(&self, peer: &Peer) -> Result<u8, String> {
        if let Some(&c) = self.uids.get(&peer.uid) {
            return Ok(c);
        }
        if self.gids.contains(&peer.gid) {
            return Ok(caps::ALL);
        }
        if self.ranges(peer).is_some() {
            return Ok(caps::READ);
        }
        Err(format!("unauthorized: uid={} gid={}", peer.uid, peer.gid))
    }

    /// The rate limiter's key: one bucket per UID, or one per subordinate
    /// range (all processes of one container share it).
    pub fn limiter_key(&self, peer: &Peer) -> String {
        match self.ranges(peer) {
            Some(r) => format!(
                "range:{}-{}",
                r.start,
                u64::from(r.start) + u64::from(r.len)
            ),
            None => format!("uid:{}", peer.uid),
        }
    }
}

/// The names of the bits set in `c`, as `get_status` lists them.
pub fn cap_names(c: u8) -> Vec<&'static str> {
    [
        (caps::READ, "read"),
        (caps::WRITE, "write"),
        (caps::ADMIN, "admin"),
    ]
    .into_iter()
    .filter(|(b, _)| c & b != 0)
    .map(|(_, n)| n)
    .collect()
}

/// `name:start:length` lines of `/etc/subuid` or `/etc/subgid` whose name is
/// in `users`; comments, malformed lines and empty ranges are skipped.
pub fn parse_subid(text: &str, users: &[String]) -> Vec<Range> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let (name, start, len) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || !users.iter().any(|u| u == name) {
                return None;
            }
            let r = Range {
                start: start.trim().parse().ok()?,
                len: len.trim().parse().ok()?,
            };
            (r.len > 0).then_some(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { pid: 1, uid, gid }
    }

    #[test]
    fn the_decision_order_of_the_spec() {
        let users = vec!["root".to_string()];
        let lists = Lists {
            allowed_peers: &[
                (100999, caps::READ),
                (2000, caps::READ),
                (2000, caps::ADMIN),
            ],
            allowed_peer_uids: &[1000, 100999],
            allowed_peer_gids: &[3000],
            idmap_users: Some(&users),
        };
        let sub = "# comment\nroot:100000:65536\nbob:200000:65536\nroot:x:1\nroot:300000:0\n";
        let r = Rules::new(&lists, 999, 998, Some(sub), Some(sub));
        assert_eq!(r.authorize(&peer(0, 5)), Ok(caps::ALL));
        assert_eq!(r.authorize(&peer(999, 5)), Ok(caps::ALL));
        assert_eq!(r.authorize(&peer(1000, 5)), Ok(caps::ALL));
        // allowed_peers wins over the legacy list, and duplicates OR together.
        assert_eq!(r.authorize(&peer(100999, 100999)), Ok(caps::READ));
        assert_eq!(r.authorize(&peer(2000, 5)), Ok(caps::READ | caps::ADMIN));
        assert_eq!(r.authorize(&peer(4000, 3000)), Ok(caps::ALL));
        assert_eq!(r.authorize(&peer(4000, 998)), Ok(caps::ALL));
        // Container root: read only; bob's range is not root's.
        assert_eq!(r.authorize(&peer(100000, 100000)), Ok(caps::READ));
        assert_eq!(r.authorize(&peer(165535, 100000)), Ok(caps::READ));
        assert_eq!(r.limiter_key(&peer(101000, 101000)), "range:100000-165536");
        assert!(r.authorize(&peer(165536, 100000)).is_err());
        assert!(r.authorize(&peer(200000, 200000)).is_err());
        // UID in range but GID outside: refused.
        assert_eq!(
            r.authorize(&peer(100000, 5)),
            Err("unauthorized: uid=100000 gid=5".into())
        );
        assert_eq!(r.limiter_key(&peer(4000, 5)), "uid:4000");
    }

    #[test]
    fn idmapped_root_off_or_files_missing_means_no_ranges() {
        let lists = Lists::default();
        let r = Rules::new(&lists, 999, 998, Some("root:100000:65536"), None);
        assert!(!r.has_ranges());
        assert!(r.authorize(&peer(100000, 100000)).is_err());
    }

    #[test]
    fn cap_names_list_set_bits() {
        assert_eq!(cap_names(caps::ALL), ["read", "write", "admin"]);
        assert!(cap_names(0).is_empty());
    }
}
