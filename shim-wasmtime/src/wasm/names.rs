//! `wasi:sockets/ip-name-lookup` as a process in the container would see
//! it: the container's `/etc/hosts` first, then DNS with the container's
//! `/etc/resolv.conf`, never the shim's. (wasmtime-wasi's own lookup calls
//! `getaddrinfo`, which reads the shim's files.)
//!
//! DNS goes through hickory-resolver. Its sockets are made by the task that
//! runs the lookup, spawned on the guest's runtime, so they live in the
//! guest's network namespace (see `lifecycle::netns`).
//!
//! Shadowing wasmtime-wasi's interface keeps its resource type
//! (`resolve-address-stream`), whose Rust type cannot be built outside
//! wasmtime-wasi; the stream the guest holds is our [`Resolving`], under the
//! same handle. The table checks the type of every entry it returns, so a
//! mix-up is an error, never a wrong value.

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup_ip::LookupIp;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};
use oci_spec::runtime::Spec;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{Host, HostResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, Network};
use wasmtime_wasi::p2::{DynPollable, Pollable, SocketError};
use wasmtime_wasi::runtime::AbortOnDropJoinHandle;

/// The most of `/etc/hosts` or `/etc/resolv.conf` that is read.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// DNS answers one guest's resolver keeps (hickory's default is 8192).
const DNS_CACHE_ENTRIES: u64 = 32;
/// Addresses one lookup returns at most, as a bound on what a hostile zone
/// or hosts file makes the shim hold.
const MAX_ADDRESSES: usize = 64;

/// A container's name lookup configuration.
pub struct ContainerNames {
    hosts: Hosts,
    dns: (ResolverConfig, ResolverOpts),
    /// Built on the first DNS lookup, on the guest's runtime.
    resolver: tokio::sync::OnceCell<TokioResolver>,
}

impl ContainerNames {
    /// Reads the container's `/etc/hosts` and `/etc/resolv.conf`, through
    /// its mounts (CRI bind-mounts both from the pod) or from its rootfs.
    /// Blocking: call on a blocking thread.
    /// A file that cannot be read counts as absent, as it would for libc.
    pub fn read(spec: &Spec, rootfs: &Path) -> Self {
        let file = |path| {
            super::mounts::read_container_file(spec, rootfs, path, MAX_FILE_BYTES).unwrap_or_else(
                |err| {
                    tracing::warn!("name lookup: the container's {path} is not used: {err:#}");
                    None
                },
            )
        };
        let mut hosts = Hosts::default();
        if let Some(bytes) = file("/etc/hosts") {
            // Lines that do not parse are skipped, as libc skips them.
            if let Err(err) = hosts.read_hosts_conf(bytes.as_slice()) {
                tracing::warn!("name lookup: the container's /etc/hosts is not used: {err}");
                hosts = Hosts::default();
            }
        }
        Self {
            hosts,
            dns: dns_config(file("/etc/resolv.conf").as_deref()),
            resolver: tokio::sync::OnceCell::new(),
        }
    }

    /// Resolves `name` to its addresses.
    #[cfg(test)]
    async fn lookup(self: Arc<Self>, name: String) -> Result<Vec<IpAddr>, ErrorCode> {
        match Target::parse(&name)? {
            Target::Address(ip) => Ok(vec![ip]),
            Target::Name(parsed) => self.resolve(parsed).await,
        }
    }

    /// Resolves a name: the hosts file, then DNS.
    async fn resolve(self: Arc<Self>, parsed: Name) -> Result<Vec<IpAddr>, ErrorCode> {
        let from_hosts: Vec<IpAddr> = [RecordType::A, RecordType::AAAA]
            .into_iter()
            .filter_map(|t| {
                self.hosts
                    .lookup_static_host(&Query::query(parsed.clone(), t))
            })
            .flat_map(|lookup| LookupIp::from(lookup).into_iter())
            .collect();
        if !from_hosts.is_empty() {
            return Ok(from_hosts.into_iter().take(MAX_ADDRESSES).collect());
        }
        let resolver = self
            .resolver
            .get_or_try_init(|| async {
                let (config, opts) = self.dns.clone();
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                    .with_options(opts)
                    .build()
            })
            .await
            .map_err(|err| {
                tracing::debug!("name lookup: resolver setup failed: {err}");
                ErrorCode::PermanentResolverFailure
            })?;
        match resolver.lookup_ip(parsed.clone()).await {
            Ok(found) => Ok(found
                .iter()
                .map(|ip| ip.to_canonical())
                .take(MAX_ADDRESSES)
                .collect()),
            Err(err) => {
                tracing::debug!("name lookup of {parsed} failed: {err}");
                Err(lookup_error(&err))
            }
        }
    }
}

/// What a guest asked to look up.
enum Target {
    /// An address literal: the answer itself.
    Address(IpAddr),
    Name(Name),
}

impl Target {
    fn parse(name: &str) -> Result<Self, ErrorCode> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Target::Address(ip.to_canonical()));
        }
        // Validates the name, and turns a unicode one into punycode.
        Name::from_utf8(name)
            .map(Target::Name)
            .map_err(|_| ErrorCode::InvalidArgument)
    }
}

/// The DNS configuration from the container's `resolv.conf`. Without one,
/// or with no name server in it, the name server is 127.0.0.1 (inside the
/// container's namespace), as libc assumes.
fn dns_config(resolv_conf: Option<&[u8]>) -> (ResolverConfig, ResolverOpts) {
    let parsed = resolv_conf.and_then(|bytes| {
        let (config, opts) = hickory_resolver::system_conf::parse_resolv_conf(bytes)
            .map_err(|err| tracing::debug!("container resolv.conf not used: {err}"))
            .ok()?;
        // Without a `domain` line the parser takes the domain of the
        // shim's hostname: not the container's to search.
        let has_domain = String::from_utf8_lossy(bytes)
            .lines()
            .any(|l| l.split_whitespace().next() == Some("domain"));
        let config = match has_domain {
            true => config,
            false => ResolverConfig::from_parts(
                None,
                config.search().to_vec(),
                config.name_servers().to_vec(),
            ),
        };
        Some((config, opts))
    });
    let (config, mut opts) = parsed.unwrap_or_else(|| {
        let local =
            hickory_resolver::config::NameServerConfig::udp_and_tcp(IpAddr::from([127, 0, 0, 1]));
        (
            ResolverConfig::from_parts(None, vec![], vec![local]),
            ResolverOpts::default(),
        )
    });
    // The container's hosts file was read above; the resolver must never
    // read the shim's.
    opts.use_hosts_file = ResolveHosts::Never;
    // A guest chooses what it looks up: keep what a resolver caches, held
    // in the shim's memory outside the guest's limit, small.
    opts.cache_size = DNS_CACHE_ENTRIES;
    (config, opts)
}

fn lookup_error(err: &NetError) -> ErrorCode {
    if err.is_nx_domain() || err.is_no_records_found() {
        ErrorCode::NameUnresolvable
    } else {
        ErrorCode::TemporaryResolverFailure
    }
}

/// A lookup in progress, then its addresses.
pub enum Resolving {
    Waiting(AbortOnDropJoinHandle<Result<Vec<IpAddr>, ErrorCode>>),
    Done(Result<std::vec::IntoIter<IpAddr>, ErrorCode>),
}

#[async_trait::async_trait]
impl Pollable for Resolving {
    async fn ready(&mut self) {
        if let Resolving::Waiting(task) = self {
            let result = joined((&mut **task).await);
            *self = Resolving::Done(result.map(Vec::into_iter));
        }
    }
}

/// What the interface's host functions work on: the guest's resource table
/// and its container's names (`None`: no sockets for this guest).
pub struct NamesView<'a> {
    pub table: &'a mut ResourceTable,
    pub names: Option<&'a Arc<ContainerNames>>,
}

/// The `HasData` type under which the interface is linked.
pub struct ContainerLookup;

impl wasmtime::component::HasData for ContainerLookup {
    type Data<'a> = NamesView<'a>;
}

type Stream = wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::ResolveAddressStream;

/// Our stream under the handle the guest holds (see the module's notes).
fn ours(stream: &Resource<Stream>) -> Resource<Resolving> {
    Resource::new_borrow(stream.rep())
}

/// `ip-name-lookup` uses `network`'s types, so its bindings ask for this
/// too: the same as wasmtime-wasi's, which stays linked for `network` itself.
impl network::Host for NamesView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        err: Resource<network::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        let err = self.table.get(&err)?;
        Ok(err.downcast_ref::<std::io::Error>().map(ErrorCode::from))
    }
}

impl network::HostNetwork for NamesView<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl Host for NamesView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<Stream>, SocketError> {
        // The network resource is the capability to look names up.
        self.table.get(&network)?;
        let Some(names) = self.names else {
            return Err(ErrorCode::PermanentResolverFailure.into());
        };
        let resolving = match Target::parse(&name)? {
            Target::Address(ip) => Resolving::Done(Ok(vec![ip].into_iter())),
            Target::Name(parsed) => {
                Resolving::Waiting(wasmtime_wasi::runtime::spawn(names.clone().resolve(parsed)))
            }
        };
        let pushed = self.table.push(resolving)?;
        Ok(Resource::new_own(pushed.rep()))
    }
}

impl HostResolveAddressStream for NamesView<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<Stream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        let resolving = self.table.get_mut(&ours(&stream))?;
        if let Resolving::Waiting(task) = resolving {
            if !task.is_finished() {
                return Err(ErrorCode::WouldBlock.into());
            }
            // Finished: its result is there without waiting.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let result = match std::pin::Pin::new(&mut **task).poll(&mut cx) {
                std::task::Poll::Ready(joined_task) => joined(joined_task),
                std::task::Poll::Pending => return Err(ErrorCode::WouldBlock.into()),
            };
            *resolving = Resolving::Done(result.map(Vec::into_iter));
        }
        match resolving {
            Resolving::Done(Ok(addrs)) => Ok(addrs.next().map(IpAddress::from)),
            Resolving::Done(Err(err)) => Err((*err).into()),
            Resolving::Waiting(_) => Err(ErrorCode::WouldBlock.into()),
        }
    }

    fn subscribe(&mut self, stream: Resource<Stream>) -> wasmtime::Result<Resource<DynPollable>> {
        // `subscribe` trusts the entry's type; check it first, so that a
        // mismatch is an error, not a panic.
        self.table.get(&ours(&stream))?;
        wasmtime_wasi::p2::subscribe(self.table, ours(&stream))
    }

    fn drop(&mut self, stream: Resource<Stream>) -> wasmtime::Result<()> {
        self.table
            .delete(Resource::<Resolving>::new_own(stream.rep()))?;
        Ok(())
    }
}

/// A lookup task's result; a task that panicked is a resolver failure, not
/// the guest's thread's panic.
fn joined(
    result: Result<Result<Vec<IpAddr>, ErrorCode>, tokio::task::JoinError>,
) -> Result<Vec<IpAddr>, ErrorCode> {
    result.unwrap_or_else(|err| {
        tracing::warn!("name lookup task failed: {err}");
        Err(ErrorCode::PermanentResolverFailure)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shims_domain_is_not_searched() {
        let (config, _) = dns_config(Some(b"nameserver 192.0.2.53\n"));
        assert!(config.domain().is_none());
        let (config, _) = dns_config(Some(b"nameserver 192.0.2.53\ndomain pod.test\n"));
        let domain = config.domain().map(|d| d.to_string());
        assert_eq!(
            domain.as_deref().map(|d| d.trim_end_matches('.')),
            Some("pod.test")
        );
    }

    #[test]
    fn dns_never_reads_the_shims_files() {
        let (config, opts) = dns_config(Some(b"nameserver 192.0.2.53\nsearch svc.test\n"));
        assert_eq!(opts.use_hosts_file, ResolveHosts::Never);
        let servers: Vec<IpAddr> = config.name_servers().iter().map(|s| s.ip).collect();
        assert_eq!(servers, vec![IpAddr::from([192, 0, 2, 53])]);

        let (config, opts) = dns_config(None);
        assert_eq!(opts.use_hosts_file, ResolveHosts::Never);
        let servers: Vec<IpAddr> = config.name_servers().iter().map(|s| s.ip).collect();
        assert_eq!(servers, vec![IpAddr::from([127, 0, 0, 1])]);
    }

    #[tokio::test]
    async fn the_containers_hosts_file_answers_first() {
        let mut hosts = Hosts::default();
        hosts
            .read_hosts_conf(
                &b"# comment\n10.1.2.3 db.test db\nnot-an-address x\n::1 six.test\n"[..],
            )
            .unwrap();
        let names = Arc::new(ContainerNames {
            hosts,
            dns: dns_config(Some(
                b"nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            )),
            resolver: tokio::sync::OnceCell::new(),
        });
        let found = names.clone().lookup("db.test".into()).await.unwrap();
        assert_eq!(found, vec![IpAddr::from([10, 1, 2, 3])]);
        let found = names.clone().lookup("six.test".into()).await.unwrap();
        assert_eq!(found, vec!["::1".parse::<IpAddr>().unwrap()]);
        let found = names.clone().lookup("192.0.2.7".into()).await.unwrap();
        assert_eq!(found, vec![IpAddr::from([192, 0, 2, 7])]);
        assert!(matches!(
            names.clone().lookup("bad name!".into()).await,
            Err(ErrorCode::InvalidArgument)
        ));
    }
}
