//! Containers: which network namespace, veth and published port belongs to which Docker
//! container, kept current from the Docker events stream.
//!
//! [`ContainerIndex`] is built from `docker inspect` data (pure, tested on recorded JSON); the
//! watcher refreshes it on container and network events and reconnects with backoff when
//! dockerd goes away, so a restarted daemon costs no later resolution.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use crate::{
    host::{ContainerRef, Published},
    net::Proto,
};
use bollard::{
    Docker,
    models::ContainerInspectResponse,
    query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder},
};
use futures_util::StreamExt as _;

/// Where dockerd listens unless `DOCKER_HOST` says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// What pathtrace knows of one running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub container: ContainerRef,
    pub full_id: String,
    pub pid: i64,
    /// Inode of its network namespace.
    pub netns: Option<u32>,
    pub addresses: Vec<Ipv4Addr>,
}

/// Whether Docker answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DockerStatus {
    #[default]
    NotTried,
    Connected {
        api: String,
        containers: usize,
    },
    Unavailable(String),
}

impl std::fmt::Display for DockerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotTried => f.write_str("not used"),
            Self::Connected { api, containers } => {
                write!(f, "connected (API {api}, {containers} running containers)")
            }
            Self::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

/// Running containers by namespace, name and published port.
#[derive(Clone, Debug, Default)]
pub struct ContainerIndex {
    pub containers: Vec<ContainerInfo>,
    pub published: Vec<Published>,
    pub status: DockerStatus,
    /// Bumped on every refresh, so caches derived from the index know to drop.
    pub generation: u64,
}

/// Shared between the watcher task and the resolver.
pub type SharedIndex = Arc<RwLock<ContainerIndex>>;

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

impl ContainerIndex {
    /// Builds the index from inspect responses; `netns_of_pid` maps a PID to the inode of its
    /// network namespace (`/proc/<pid>/ns/net` on a live host).
    pub fn from_inspections(
        list: &[ContainerInspectResponse],
        netns_of_pid: impl Fn(i64) -> Option<u32>,
    ) -> Self {
        let mut index = Self::default();
        for c in list {
            let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
            let pid = c.state.as_ref().and_then(|s| s.pid).unwrap_or(0);
            if !running || pid <= 0 {
                continue;
            }
            let full_id = c.id.clone().unwrap_or_default();
            let container = ContainerRef {
                id: short_id(&full_id),
                name: c
                    .name
                    .clone()
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                image: c
                    .config
                    .as_ref()
                    .and_then(|cfg| cfg.image.clone())
                    .unwrap_or_default(),
            };
            let settings = c.network_settings.as_ref();
            let addresses: Vec<Ipv4Addr> = settings
                .and_then(|s| s.networks.as_ref())
                .map(|nets| {
                    let mut v: Vec<Ipv4Addr> = nets
                        .values()
                        .filter_map(|e| e.ip_address.as_deref()?.parse().ok())
                        .collect();
                    v.sort();
                    v
                })
                .unwrap_or_default();
            if let Some(ports) = settings.and_then(|s| s.ports.as_ref()) {
                for (spec, bindings) in ports {
                    let Some((port, proto)) = spec.split_once('/') else {
                        continue;
                    };
                    let (Ok(container_port), Some(proto)) =
                        (port.parse::<u16>(), proto_number(proto))
                    else {
                        continue;
                    };
                    for b in bindings.iter().flatten() {
                        let Some(host_port) = b.host_port.as_deref().and_then(|p| p.parse().ok())
                        else {
                            continue;
                        };
                        // "" and 0.0.0.0 (and "::", its IPv6 twin) are every address; an IPv6
                        // address publishes nothing to IPv4 clients.
                        let host_ip = match b.host_ip.as_deref().unwrap_or("") {
                            "" | "::" => None,
                            ip => match ip.parse::<Ipv4Addr>() {
                                Ok(ip) if ip.is_unspecified() => None,
                                Ok(ip) => Some(ip),
                                Err(_) => continue,
                            },
                        };
                        let p = Published {
                            container: container.clone(),
                            host_ip,
                            host_port,
                            proto,
                            container_addr: addresses.first().copied(),
                            container_port,
                        };
                        // IPv4 and IPv6 bindings of one port are one mapping here.
                        if !index.published.contains(&p) {
                            index.published.push(p);
                        }
                    }
                }
            }
            index.containers.push(ContainerInfo {
                container,
                full_id,
                pid,
                netns: netns_of_pid(pid),
                addresses,
            });
        }
        index
            .published
            .sort_by_key(|p| (p.host_port, p.proto.number()));
        index
    }

    pub fn by_netns(&self, netns: u32) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.netns == Some(netns))
    }

    /// What `dst:host_port` (`dst` `None`: any address) is published to.
    pub fn published(
        &self,
        dst: Option<Ipv4Addr>,
        host_port: u16,
        proto: Proto,
    ) -> Option<&Published> {
        self.published
            .iter()
            .find(|p| p.from_host_port(dst, host_port, proto))
    }

    /// The published port whose DNAT leads to `addr:port` (the container's side).
    pub fn published_to(&self, addr: Ipv4Addr, port: u16, proto: Proto) -> Option<&Published> {
        self.published
            .iter()
            .find(|p| p.leads_to(addr, port, proto))
    }

    /// By name (with or without `/`), short or full id, or id prefix.
    pub fn find(&self, name_or_id: &str) -> Option<&ContainerInfo> {
        let want = name_or_id.trim_start_matches('/');
        self.containers
            .iter()
            .find(|c| c.container.name == want)
            .or_else(|| {
                let matching: Vec<_> = self
                    .containers
                    .iter()
                    .filter(|c| !want.is_empty() && c.full_id.starts_with(want))
                    .collect();
                (matching.len() == 1).then(|| matching[0])
            })
    }

    /// Host ports published by one container.
    pub fn ports_of(&self, container: &ContainerRef) -> Vec<&Published> {
        self.published
            .iter()
            .filter(|p| &p.container == container)
            .collect()
    }
}

/// The protocol of a `80/tcp` port key: Docker publishes TCP, UDP and SCTP.
fn proto_number(name: &str) -> Option<Proto> {
    Proto::parse(name).filter(|p| matches!(*p, Proto::TCP | Proto::UDP | Proto::SCTP))
}

/// The socket to use: `DOCKER_HOST=unix://...`, or the default when it is unset. Any other
/// scheme (`tcp://`, `ssh://`) is refused: pathtrace traces the kernel it runs on, so the
/// Docker it asks must be that host's, through its socket.
pub fn socket_path() -> Result<PathBuf, DockerError> {
    socket_for(std::env::var("DOCKER_HOST").ok().as_deref())
}

fn socket_for(docker_host: Option<&str>) -> Result<PathBuf, DockerError> {
    match docker_host.map(str::trim).filter(|h| !h.is_empty()) {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(h) => match h.strip_prefix("unix://") {
            Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
            _ => Err(DockerError::Host(h.to_owned())),
        },
    }
}

/// Why Docker could not be asked: the status line says it, and names stay interface names.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no Docker socket at {}", .0.display())]
    NoSocket(PathBuf),
    #[error("{}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        source: bollard::errors::Error,
    },
    #[error(transparent)]
    Api(#[from] bollard::errors::Error),
    #[error(
        "DOCKER_HOST={0} is not a unix socket: pathtrace traces this host's kernel, so it asks this host's Docker through its socket; unset DOCKER_HOST or set it to unix:///var/run/docker.sock"
    )]
    Host(String),
}

async fn connect(socket: &Path) -> Result<Docker, DockerError> {
    if !socket.exists() {
        return Err(DockerError::NoSocket(socket.to_owned()));
    }
    let failed = |source| DockerError::Connect {
        socket: socket.to_owned(),
        source,
    };
    let path = socket.to_string_lossy();
    let docker =
        Docker::connect_with_unix(&path, 10, bollard::API_DEFAULT_VERSION).map_err(failed)?;
    docker.negotiate_version().await.map_err(failed)
}

/// Lists and inspects running containers.
async fn snapshot(docker: &Docker) -> Result<ContainerIndex, DockerError> {
    let opts = ListContainersOptionsBuilder::default().all(false).build();
    let list = docker.list_containers(Some(opts)).await?;
    let mut inspected = Vec::with_capacity(list.len());
    for c in list {
        let Some(id) = c.id else { continue };
        match docker.inspect_container(&id, None).await {
            Ok(i) => inspected.push(i),
            // Gone between list and inspect: the next event refreshes again.
            Err(e) => tracing::debug!(id, "inspect failed: {e}"),
        }
    }
    let mut index = ContainerIndex::from_inspections(&inspected, |pid| {
        super::netns::inode_of(Path::new(&format!("/proc/{pid}/ns/net")))
    });
    index.status = DockerStatus::Connected {
        api: docker.client_version().to_string(),
        containers: index.containers.len(),
    };
    Ok(index)
}

fn store(shared: &SharedIndex, mut index: ContainerIndex) {
    if let Ok(mut guard) = shared.write() {
        index.generation = guard.generation + 1;
        *guard = index;
    }
}

fn set_status(shared: &SharedIndex, status: DockerStatus) {
    if let Ok(mut guard) = shared.write() {
        guard.status = status;
    }
}

/// Connects and fills the index once (before tracing starts, so the first packets resolve).
pub async fn initial(shared: &SharedIndex, socket: &Path) -> DockerStatus {
    let attempt = async {
        let docker = connect(socket).await?;
        snapshot(&docker).await
    };
    let status = match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(index)) => {
            let status = index.status.clone();
            store(shared, index);
            status
        }
        Ok(Err(e)) => DockerStatus::Unavailable(e.to_string()),
        Err(_) => {
            DockerStatus::Unavailable(format!("{} did not answer within 3 s", socket.display()))
        }
    };
    set_status(shared, status.clone());
    status
}

/// Keeps the index current for as long as the trace runs: refresh on container and network
/// events, reconnect with backoff (100 ms doubling to 5 s) when dockerd goes away.
pub async fn watch(shared: SharedIndex, socket: PathBuf) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let docker = match connect(&socket).await {
            Ok(d) => d,
            Err(e) => {
                set_status(&shared, DockerStatus::Unavailable(e.to_string()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut filters = HashMap::new();
        filters.insert("type", vec!["container", "network"]);
        let mut events = docker.events(Some(
            EventsOptionsBuilder::default().filters(&filters).build(),
        ));
        // Subscribe first, then snapshot: nothing that happens in between is missed.
        match snapshot(&docker).await {
            Ok(index) => {
                store(&shared, index);
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                set_status(&shared, DockerStatus::Unavailable(e.to_string()));
                tokio::time::sleep(backoff).await;
                continue;
            }
        }
        while let Some(event) = events.next().await {
            match event {
                Ok(ev) => {
                    let action = ev.action.unwrap_or_default();
                    if matches!(
                        action.as_str(),
                        "start" | "die" | "destroy" | "connect" | "disconnect" | "restart"
                    ) {
                        tracing::debug!(action, "docker event: refreshing containers");
                        if let Ok(index) = snapshot(&docker).await {
                            store(&shared, index);
                        }
                    }
                }
                Err(e) => {
                    tracing::info!("docker events stream ended: {e}; reconnecting");
                    break;
                }
            }
        }
        set_status(
            &shared,
            DockerStatus::Unavailable("dockerd went away; reconnecting".into()),
        );
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> Vec<ContainerInspectResponse> {
        let text = include_str!("../../test_data/docker_inspect_web.json");
        serde_json::from_str(text).expect("recorded docker inspect parses")
    }

    #[test]
    fn indexes_a_recorded_container() {
        let index = ContainerIndex::from_inspections(&recorded(), |pid| {
            (pid == 29649).then_some(4026532300)
        });
        let c = index.by_netns(4026532300).expect("container by netns");
        assert_eq!(c.container.name, "ptweb");
        assert_eq!(c.container.id, "75e048d0b2ee");
        assert_eq!(c.container.image, "pathtrace-busybox:test");
        assert_eq!(c.addresses, vec![Ipv4Addr::new(172, 17, 0, 2)]);
        let p = index
            .published(Some(Ipv4Addr::new(192, 0, 2, 77)), 10001, Proto::TCP)
            .expect("published on every address");
        assert_eq!(p.host_ip, None);
        assert_eq!(
            (p.container_addr, p.container_port),
            (Some(Ipv4Addr::new(172, 17, 0, 2)), 80)
        );
        assert_eq!(
            index.published.len(),
            1,
            "IPv4 and IPv6 bindings fold into one"
        );
        assert!(index.published(None, 10001, Proto::UDP).is_none());
    }

    #[test]
    fn a_port_published_on_one_address_is_published_there_only() {
        let text = include_str!("../../test_data/docker_inspect_web.json")
            .replace("\"0.0.0.0\"", "\"198.51.100.1\"")
            .replace("\"::\"", "\"2001:db8::1\"");
        let list: Vec<ContainerInspectResponse> = serde_json::from_str(&text).expect("parses");
        let index = ContainerIndex::from_inspections(&list, |_| None);
        assert_eq!(
            index.published.len(),
            1,
            "the IPv6 binding publishes nothing to IPv4"
        );
        let on = Ipv4Addr::new(198, 51, 100, 1);
        let p = index
            .published(Some(on), 10001, Proto::TCP)
            .expect("published on 198.51.100.1");
        assert_eq!(p.host_ip, Some(on));
        assert_eq!(p.host_side(), "198.51.100.1:10001");
        assert!(
            index
                .published(Some(Ipv4Addr::new(198, 51, 100, 99)), 10001, Proto::TCP)
                .is_none(),
            "not on another address"
        );
    }

    #[test]
    fn docker_host_is_a_unix_socket_or_refused() {
        assert_eq!(socket_for(None).unwrap(), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(socket_for(Some("")).unwrap(), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            socket_for(Some("unix:///run/podman/podman.sock")).unwrap(),
            PathBuf::from("/run/podman/podman.sock")
        );
        let err = socket_for(Some("tcp://10.1.2.3:2375"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("DOCKER_HOST=tcp://10.1.2.3:2375 is not a unix socket"),
            "{err}"
        );
        assert!(socket_for(Some("unix://")).is_err());
    }

    #[test]
    fn finds_by_name_or_id_prefix_and_skips_stopped() {
        let index = ContainerIndex::from_inspections(&recorded(), |_| None);
        assert!(index.find("ptweb").is_some());
        assert!(index.find("/ptweb").is_some());
        assert!(index.find("75e048").is_some());
        assert!(index.find("nope").is_none());
        let mut stopped = recorded();
        if let Some(state) = stopped[0].state.as_mut() {
            state.running = Some(false);
        }
        assert!(
            ContainerIndex::from_inspections(&stopped, |_| None)
                .containers
                .is_empty()
        );
    }
}
