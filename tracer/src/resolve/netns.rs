//! Network namespaces: inode → a path to enter it and a name to show, and running code inside
//! one (on a short-lived thread, so the daemon's own threads never change namespace).

use std::{
    collections::HashMap,
    fs,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use crate::host::NetnsEntry;

/// Inode of the namespace behind a `/proc/.../ns/net`-like path.
pub fn inode_of(path: &Path) -> Option<u32> {
    fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// The tracer's own network namespace.
pub fn own_inode() -> Option<u32> {
    inode_of(Path::new("/proc/self/ns/net"))
}

/// Scans named namespaces and processes. Named ones win over process paths, the init
/// namespace is called `root`.
pub fn scan() -> HashMap<u32, NetnsEntry> {
    let mut found = HashMap::new();
    for dir in ["/run/netns", "/var/run/docker/netns"] {
        let Ok(rd) = fs::read_dir(dir) else { continue };
        for entry in rd.flatten() {
            let path = entry.path();
            let Some(ino) = inode_of(&path) else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_ip_netns = dir == "/run/netns";
            found.entry(ino).or_insert(NetnsEntry {
                path,
                label: if is_ip_netns {
                    name.clone()
                } else {
                    format!("docker:{name}")
                },
                ip_netns_name: is_ip_netns.then_some(name),
            });
        }
    }
    // The init namespace is `root`; pathtrace's own, when it is not init's (a container or a
    // sandbox), is `host`. Both beat a process name.
    if let Some(ino) = own_inode() {
        found.entry(ino).or_insert(NetnsEntry {
            path: "/proc/self/ns/net".into(),
            label: "host".into(),
            ip_netns_name: None,
        });
    }
    if let Some(ino) = inode_of(Path::new("/proc/1/ns/net")) {
        found.insert(
            ino,
            NetnsEntry {
                path: "/proc/1/ns/net".into(),
                label: "root".into(),
                ip_netns_name: None,
            },
        );
    }
    if let Ok(rd) = fs::read_dir("/proc") {
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let path = entry.path().join("ns/net");
            let Some(ino) = inode_of(&path) else { continue };
            found.entry(ino).or_insert_with(|| {
                let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                NetnsEntry {
                    path,
                    label: format!("pid {pid} ({})", comm.trim()),
                    ip_netns_name: None,
                }
            });
        }
    }
    found
}

/// Runs `f` on a thread that has joined the namespace at `path`.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let file = fs::File::open(path)?;
    let handle = std::thread::Builder::new()
        .name("pathtrace-netns".into())
        .spawn(move || {
            // SAFETY: setns on this thread only; the fd is valid for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        })?;
    handle
        .join()
        .map_err(|_| std::io::Error::other("netns worker panicked"))?
}

/// Reads a sysctl under /proc/sys as seen from the namespace at `path` (net sysctls are per
/// namespace of the reader). `key` uses dots: `net.ipv4.conf.eth0.forwarding`.
pub fn sysctl(path: &Path, key: &str) -> std::io::Result<String> {
    let file = sysctl_path(key);
    run_in(path, move || {
        fs::read_to_string(&file).map(|s| s.trim().to_owned())
    })?
}

/// `net.ipv4.conf.eth0.forwarding` → `/proc/sys/net/ipv4/conf/eth0/forwarding`. Interface
/// names may contain dots (`eth0.100`), which sysctl(8) writes as `/`: only the conf/neigh
/// interface component keeps its dots.
pub fn sysctl_path(key: &str) -> PathBuf {
    let parts: Vec<&str> = key.split('.').collect();
    let mut path = PathBuf::from("/proc/sys");
    if parts.len() > 5 && matches!(parts.get(2), Some(&"conf") | Some(&"neigh")) {
        // net.ipv4.conf.<iface with dots>.<leaf>
        for p in &parts[..3] {
            path.push(p);
        }
        path.push(parts[3..parts.len() - 1].join("."));
        path.push(parts[parts.len() - 1]);
    } else {
        for p in parts {
            path.push(p);
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0.forwarding"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0/forwarding")
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0.100.rp_filter"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
    }
}
