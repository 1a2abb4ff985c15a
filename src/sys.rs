//! The only module with `unsafe`: thin wrappers over the libc calls the agent
//! needs (statvfs, getifaddrs, uname, geteuid, getpwuid_r, getrandom, sysconf,
//! flock, signal masks, poll, fstatfs, a netlink socket for link changes).
//!
//! Each wrapper returns owned Rust values and an `io::Error` built from errno.
//! Nothing here reads host files or knows about `Root`; callers decide which
//! paths to pass.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The numbers of `statvfs(3)` that a filesystem report needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// `f_frsize` (fragment size), falling back to `f_bsize`: the unit of the block counts.
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
}

/// `statvfs(2)` on `path`. May block indefinitely on a dead network mount:
/// callers run it behind a deadline (`collect::filesystems`).
// The conversions are no-ops on 64-bit targets only.
#[allow(clippy::useless_conversion)]
pub fn statvfs(path: &Path) -> io::Result<FsStats> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut out = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated string and `out` points to writable
    // memory of the right size; statvfs fully initialises it on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), out.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: rc == 0, so the kernel filled the struct.
    let s = unsafe { out.assume_init() };
    // `u64::from`, not `as`: the fields are 32-bit on 32-bit ARM.
    let frsize = u64::from(s.f_frsize);
    Ok(FsStats {
        block_size: if frsize > 0 {
            frsize
        } else {
            u64::from(s.f_bsize)
        },
        blocks: u64::from(s.f_blocks),
        blocks_free: u64::from(s.f_bfree),
        blocks_avail: u64::from(s.f_bavail),
    })
}

/// One interface address as the kernel reports it (netlink order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub interface: String,
    /// `ip/prefixlen`, e.g. `192.168.1.10/24` or `fe80::1/64`.
    pub cidr: String,
}

/// Every IPv4 and IPv6 address of every interface, from `getifaddrs(3)`.
pub fn getifaddrs() -> io::Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a pointer to a linked list it allocates.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned and we have not
        // freed it yet; its fields are valid for reading.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated C string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points to at least a sockaddr.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let (ip, prefix) = match family {
            libc::AF_INET => {
                // SAFETY: family says this is a sockaddr_in; the netmask, when present,
                // has the same family.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                let prefix = if ifa.ifa_netmask.is_null() {
                    32
                } else {
                    // SAFETY: as above.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
                    u32::from_be(m.sin_addr.s_addr).count_ones()
                };
                (std::net::IpAddr::V4(ip), prefix)
            }
            libc::AF_INET6 => {
                // SAFETY: family says this is a sockaddr_in6.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                let prefix = if ifa.ifa_netmask.is_null() {
                    128
                } else {
                    // SAFETY: as above.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in6) };
                    m.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum()
                };
                (std::net::IpAddr::V6(ip), prefix)
            }
            _ => continue,
        };
        out.push(IfAddr {
            interface: name,
            cidr: format!("{ip}/{prefix}"),
        });
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// A route netlink socket subscribed to interface and address changes
/// (`RTMGRP_LINK`, `RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`), as `ip monitor`
/// listens: the kernel queues a message on it whenever an interface appears,
/// goes, or changes its flags or hardware address, and whenever an address is
/// added or removed, in the agent's network namespace (the one `getifaddrs`
/// reports). Nothing is ever sent on it.
pub struct LinkChanges(std::os::fd::OwnedFd);

/// Messages taken per [`LinkChanges::changed`] at most: a host whose links
/// change faster than that is simply always "changed".
const LINK_DRAIN: usize = 1024;

impl LinkChanges {
    pub fn open() -> io::Result<LinkChanges> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: socket takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups =
            (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        // SAFETY: `addr` is a valid sockaddr_nl and the length is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(LinkChanges(fd))
    }

    /// Whether anything changed since the last call (or since `open`),
    /// taking every queued message without waiting. A queue that overflowed
    /// (`ENOBUFS`) is a change too.
    pub fn changed(&self) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 1024];
        let mut changed = false;
        for _ in 0..LINK_DRAIN {
            // SAFETY: `buf` is writable for its length; a longer message is
            // cut to it and still taken off the queue, which is all we need.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                changed = true;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(changed),
                Some(libc::EINTR) => {}
                Some(libc::ENOBUFS) => changed = true,
                _ => return Err(e),
            }
        }
        Ok(true)
    }
}

/// `uname(2)`'s machine field (`x86_64`, `aarch64`, `armv7l`).
pub fn uname_machine() -> Option<String> {
    let mut u = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: uname fills the struct on success.
    if unsafe { libc::uname(u.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: rc == 0 so the struct is initialised; `machine` is NUL-terminated.
    let u = unsafe { u.assume_init() };
    let m = unsafe { CStr::from_ptr(u.machine.as_ptr()) };
    Some(m.to_string_lossy().into_owned())
}

/// The effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The user name of `uid` from the system's user database, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    passwd(PasswdKey::Uid(uid)).map(|u| u.name)
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`; on a
/// kernel before 3.17, which lacks it, `/dev/urandom`: DSM 6 on older
/// Synology models runs 3.10).
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid writable memory of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOSYS) => {
                    use std::io::Read;
                    return std::fs::File::open("/dev/urandom")?.read_exact(rest);
                }
                _ => return Err(e),
            }
        }
        filled += n as usize;
    }
    Ok(())
}

/// Number of CPUs currently online (`sysconf(_SC_NPROCESSORS_ONLN)`).
pub fn online_cpus() -> Option<u64> {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (n > 0).then_some(n as u64)
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> std::time::Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// CPU time (user + system) of this process's children that have been
/// waited for (the programs the collectors ran), for the benchmarks.
pub fn children_cpu_time() -> std::time::Duration {
    rusage_cpu(libc::RUSAGE_CHILDREN)
}

fn rusage_cpu(who: libc::c_int) -> std::time::Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct; `who` is RUSAGE_SELF or
    // RUSAGE_CHILDREN, both always valid.
    let rc = unsafe { libc::getrusage(who, ru.as_mut_ptr()) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    // SAFETY: rc == 0 so the struct is initialised.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time the calling thread has used so far (the fuzz harness's budget
/// is CPU, not wall time, so a busy machine does not make inputs "slow").
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The agent's own process figures for `process_*` metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    /// (virtual, resident) bytes.
    pub memory: Option<(u64, u64)>,
    pub max_fds: Option<u64>,
}

/// Reads this process's memory and descriptors. This is the one
/// place that reads an absolute `/proc` path: `/proc/self` is the agent
/// itself, not the host, and must not follow `--root`.
pub fn process_stats() -> ProcessStats {
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let memory = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            let mut f = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((
                f.next()??.saturating_mul(page),
                f.next()??.saturating_mul(page),
            ))
        });
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    #[allow(clippy::useless_conversion)] // rlim_t is 32-bit on some targets
    let max_fds = ok.then_some(u64::from(lim.rlim_cur));
    ProcessStats { memory, max_fds }
}

/// The signals the service takes synchronously: SIGTERM and SIGINT stop
/// it, SIGHUP reopens its files.
const HANDLED_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

pub const SIGHUP: libc::c_int = libc::SIGHUP;

fn handled_set() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only modifies it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for s in HANDLED_SIGNALS {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every
/// thread it starts afterwards, so that [`wait_signal`] can take them
/// synchronously. Call before starting any thread.
pub fn block_signals() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: `set` is initialised; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for SIGTERM, SIGINT or SIGHUP (blocked beforehand) and returns its
/// number.
pub fn wait_signal() -> libc::c_int {
    let set = handled_set();
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised and `sig` is ours to write.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            return sig;
        }
    }
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(true)` when this open file now holds
/// the exclusive lock, `Ok(false)` when another open file holds it. The lock
/// lasts until every descriptor of this open file is closed.
pub fn try_lock_exclusive(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock takes a descriptor and flags and touches no memory;
        // the BorrowedFd keeps the descriptor open for the call.
        let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Keeps glibc from giving each thread its own malloc arena: the agent has a
/// few mostly idle threads, and per-thread arenas would multiply its resident
/// memory for nothing. No effect with other C libraries.
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tunables; M_ARENA_MAX = -8.
    unsafe {
        libc::mallopt(-8, 1);
    }
}

/// Sets the stack size of threads spawned without one (std's default is
/// 2 MiB) to `bytes`, unless the user set `RUST_MIN_STACK`. This is how the
/// threads a library starts itself (tiny_http's acceptor and pool) get a
/// small stack: std reads `RUST_MIN_STACK` once, at the first such spawn, and
/// keeps the value, so it is set for that spawn only and removed again (the
/// programs the agent runs do not inherit it).
///
/// Must be called first thing in `main`, while the process has one thread.
pub fn set_default_thread_stack(bytes: usize) {
    const VAR: &str = "RUST_MIN_STACK";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    // SAFETY: called before any other thread exists (see above), so nothing
    // reads the environment concurrently.
    unsafe { std::env::set_var(VAR, bytes.to_string()) };
    let _ = std::thread::spawn(|| ()).join();
    // SAFETY: as above; the one thread spawned since has ended.
    unsafe { std::env::remove_var(VAR) };
}

/// `poll(2)` for input on `fds`: for each, whether it is readable or closed
/// (so a read will not block). `None` waits without a time limit.
pub fn poll_readable(
    fds: &[std::os::fd::RawFd],
    timeout: Option<std::time::Duration>,
) -> io::Result<Vec<bool>> {
    let mut set: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    loop {
        // SAFETY: `set` is a valid array of `set.len()` pollfd structs.
        let rc = unsafe { libc::poll(set.as_mut_ptr(), set.len() as libc::nfds_t, ms) };
        if rc >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(set
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect())
}

/// `statfs(2)`'s `f_type` of procfs (`PROC_SUPER_MAGIC`, linux/magic.h).
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Whether the open file `fd` lives on procfs (`fstatfs(2)`).
pub fn is_procfs(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut out = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the BorrowedFd keeps the descriptor open for the call, and
    // `out` points to writable memory of the right size, which fstatfs fully
    // initialises on success.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), out.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: rc == 0, so the kernel filled the struct.
    let s = unsafe { out.assume_init() };
    // `f_type`'s C type differs between libcs and architectures.
    #[allow(clippy::unnecessary_cast)]
    let f_type = s.f_type as i64;
    Ok(f_type == PROC_SUPER_MAGIC)
}

/// `poll(2)` without waiting for `POLLPRI` or `POLLERR` on `fd`: how procfs's
/// mount tables (`/proc/PID/mountinfo`, `/proc/PID/mounts`) say that the
/// mount table changed since the file was opened or last polled (the event
/// is reported once). A regular file never reports it.
pub fn poll_priority(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    loop {
        // SAFETY: `p` is one valid pollfd; the BorrowedFd keeps its
        // descriptor open for the call; a zero timeout never blocks.
        let rc = unsafe { libc::poll(&mut p, 1, 0) };
        if rc >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if p.revents & libc::POLLNVAL != 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(p.revents & (libc::POLLPRI | libc::POLLERR) != 0)
}

/// Asks the kernel to hand a TCP connection to `accept` only once the client
/// has sent something (`TCP_DEFER_ACCEPT`, Linux): connections that never
/// send are held (and eventually dropped) by the kernel, not the agent.
pub fn defer_accept(fd: std::os::fd::RawFd, seconds: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads `seconds` for the given length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&seconds as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends SIGKILL to the process group `pgid` (a child started with its own
/// group), so its children die with it.
pub fn kill_process_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return; // never the whole session or init
    }
    // SAFETY: kill only sends a signal; a negative pid names a process group.
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            log::debug!("cannot kill process group {pgid}: {e}");
        }
    }
}

/// Whether any process of group `pgid` is left (one the agent may not
/// signal counts).
pub fn process_group_alive(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    if pgid <= 1 {
        return false;
    }
    // SAFETY: signal 0 only checks that the group exists and may be signalled.
    let rc = unsafe { libc::kill(-pgid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The process at the other end of a connected Unix socket, as the kernel
/// recorded it at `connect(2)` (`SO_PEERCRED`): pid, uid, gid in this
/// process's user namespace.
pub fn peer_cred(fd: std::os::fd::RawFd) -> io::Result<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid, cred.gid))
}

/// The effective gid of this process.
pub fn getegid() -> u32 {
    // SAFETY: getegid cannot fail and touches no memory.
    unsafe { libc::getegid() }
}

/// A user of the system's user database: what dropping to it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Looks `name` up in the user database (NSS).
pub fn user_by_name(name: &str) -> Option<User> {
    let c = CString::new(name).ok()?;
    passwd(PasswdKey::Name(&c))
}

/// What to look a user up by.
enum PasswdKey<'a> {
    Uid(u32),
    Name(&'a CStr),
}

/// One entry of the user database (`getpwuid_r` / `getpwnam_r`).
fn passwd(key: PasswdKey<'_>) -> Option<User> {
    let mut buf = vec![0u8; 4096];
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let (p, b, len) = (pwd.as_mut_ptr(), buf.as_mut_ptr().cast(), buf.len());
    // SAFETY: all pointers are valid for the sizes given; the call writes
    // strings into `buf` and points `pwd` fields into it.
    let rc = unsafe {
        match key {
            PasswdKey::Uid(uid) => libc::getpwuid_r(uid, p, b, len, &mut result),
            PasswdKey::Name(name) => libc::getpwnam_r(name.as_ptr(), p, b, len, &mut result),
        }
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: result is non-null, so `pwd` was filled and its strings point
    // into `buf`, which is still alive.
    let user = unsafe {
        let p = &*result;
        User {
            name: CStr::from_ptr(p.pw_name).to_string_lossy().into_owned(),
            uid: p.pw_uid,
            gid: p.pw_gid,
            home: CStr::from_ptr(p.pw_dir).to_string_lossy().into_owned(),
        }
    };
    Some(user)
}

/// Becomes `user` for good: supplementary groups from the group database
/// (just the primary group when there are none), then gid, then uid.
pub fn drop_to(user: &User) -> io::Result<()> {
    let c = CString::new(user.name.as_str())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut groups: Vec<libc::gid_t> = vec![0; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: `groups` holds `n` gids; getgrouplist writes at most that many
    // and sets `n` to the number found.
    let rc = unsafe { libc::getgrouplist(c.as_ptr(), user.gid, groups.as_mut_ptr(), &mut n) };
    let groups: &[libc::gid_t] = if rc < 0 || n <= 0 {
        std::slice::from_ref(&user.gid)
    } else {
        &groups[..n as usize]
    };
    // SAFETY: `groups` is a valid array of `groups.len()` gids.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setgid/setuid take plain integers.
    if unsafe { libc::setgid(user.gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(user.uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `flock(fd, LOCK_EX)`: waits until this open file holds the exclusive
/// lock (the proxy's config CLI serialises writers this way). The lock lasts
/// until every descriptor of this open file is closed.
pub fn lock_exclusive(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock takes a descriptor and flags and touches no memory;
        // the BorrowedFd keeps the descriptor open for the call.
        let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Sets the calling thread's filesystem UID and GID (`setfsgid(2)`,
/// `setfsuid(2)`): file permission checks and new files' owners use them,
/// everything else keeps the real and effective IDs. A root process works
/// in a directory another user owns *as that user* this way, so a symlink
/// planted there cannot aim root's writes elsewhere. `execve` resets them
/// to the effective IDs, so children are unaffected.
pub fn set_fs_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: setfsgid/setfsuid take plain integers and touch no memory;
    // called with -1 they change nothing and return the current value.
    let (g, u) = unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        (libc::setfsgid(u32::MAX), libc::setfsuid(u32::MAX))
    };
    if g as u32 != gid || u as u32 != uid {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// Gives the kernel back the pages of a thread's stack that it is not using
/// between jobs. A worker that went deep once (running a program, parsing
/// a large answer, a TLS handshake) otherwise keeps those pages resident
/// for as long as it sleeps, and every worker's deepest moment adds up.
pub struct StackTrim {
    /// The lowest address of the stack (above its guard page).
    low: usize,
    page: usize,
}

impl StackTrim {
    /// The calling thread's stack; `None` when the C library cannot say.
    /// For threads std spawns: the main thread's bounds cost glibc a read
    /// of `/proc/self/maps`.
    pub fn this_thread() -> Option<StackTrim> {
        // SAFETY: `attr` is filled by pthread_getattr_np before it is read,
        // and destroyed once; the out-pointers are valid locals.
        unsafe {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
            if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
                return None;
            }
            let mut addr: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            let r = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
            libc::pthread_attr_destroy(attr.as_mut_ptr());
            let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).ok()?;
            (r == 0 && !addr.is_null() && size > 0 && page > 0).then_some(StackTrim {
                low: addr as usize,
                page,
            })
        }
    }

    /// Drops the stack's pages more than a page below the caller's frame:
    /// nothing live is there (the stack grows down), and a page the thread
    /// touches again comes back zeroed. Call it where the thread is about
    /// to sleep, not from deep inside a job.
    #[inline(never)]
    pub fn trim(&self) {
        let marker = 0u8;
        let here = std::hint::black_box(std::ptr::addr_of!(marker)) as usize;
        let top = (here & !(self.page - 1)).saturating_sub(self.page);
        if top > self.low {
            // SAFETY: [low, top) is this thread's own stack, a page and
            // more below the frame of this call, which is the deepest one
            // that is live (madvise's own frame fits in that page).
            // MADV_DONTNEED on private anonymous memory only makes those
            // pages read as zeros when next touched.
            unsafe {
                libc::madvise(
                    self.low as *mut libc::c_void,
                    top - self.low,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }

    /// How many pages of the stack below the caller are resident (tests).
    #[cfg(test)]
    fn resident_below_here(&self) -> usize {
        let marker = 0u8;
        let here = std::hint::black_box(std::ptr::addr_of!(marker)) as usize;
        let top = here & !(self.page - 1);
        let pages = (top - self.low) / self.page;
        let mut vec = vec![0u8; pages];
        // SAFETY: [low, top) is mapped (this thread's stack) and `vec` has
        // one byte per page of it.
        let r = unsafe {
            libc::mincore(
                self.low as *mut libc::c_void,
                top - self.low,
                vec.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|b| *b & 1 == 1).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A captured mount table is a regular file: not procfs, and it never
    /// signals a change (the watch falls back to its stamp).
    /// Deep once, a worker kept its stack pages resident while it slept
    /// (pf-ceph 28 KiB, smart 32 KiB...): after a trim, only what lies
    /// within a page or two below the caller stays.
    #[test]
    fn a_trimmed_stack_keeps_no_pages_below_the_caller() {
        #[inline(never)]
        fn deep(n: usize) -> u64 {
            let buf = std::hint::black_box([n as u8; 4096]);
            if n == 0 {
                return buf[7] as u64;
            }
            deep(n - 1) + buf[100] as u64
        }
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                let trim = StackTrim::this_thread().expect("a spawned thread has bounds");
                std::hint::black_box(deep(40)); // 160 KiB and more touched
                let before = trim.resident_below_here();
                assert!(before >= 40, "the deep call left {before} pages");
                trim.trim();
                let after = trim.resident_below_here();
                assert!(after <= 2, "{after} pages still resident after the trim");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_regular_file_is_not_procfs_and_never_signals() {
        let path = std::env::temp_dir().join(format!("pulse-sys-poll-{}", std::process::id()));
        std::fs::write(&path, "27 1 254:0 / / rw - ext4 /dev/vda rw\n").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert!(!is_procfs(f.as_fd()).unwrap());
        assert!(!poll_priority(f.as_fd()).unwrap());
        std::fs::write(&path, "changed\n").unwrap();
        assert!(!poll_priority(f.as_fd()).unwrap());
        std::fs::remove_file(&path).unwrap();
    }
}
