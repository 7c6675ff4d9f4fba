//! Connection admission: how many connections the server holds, and how many one address holds.
//!
//! Every accepted connection — TCP on either I/O driver, QUIC before its handshake, and the
//! operations listener with a budget of its own — asks [`Admission::admit`] first. A refused
//! connection is closed at once (TCP) or refused (QUIC) and counted; an admitted one holds an
//! [`Admitted`] guard that gives its place back when the connection ends, whichever way.
//!
//! Two limits, both counted here and nowhere else:
//! - **global**: at most `max_connections` at once. The default is derived from
//!   `RLIMIT_NOFILE` minus a reserve of descriptors for the store, rings, listeners and the
//!   operations listener, so that `accept` never fails with `EMFILE` (we accept and close instead
//!   of leaving connections in the kernel's backlog and spinning on errors);
//! - **per address**: at most `per_address` from one IPv4 address or one IPv6 /64 (a single host
//!   usually owns a whole /64, so counting /128s would not limit anyone). IPv4-mapped IPv6
//!   addresses count as their IPv4 address.
//!
//! The counts are plain data ([`Counts`], sans-IO: no clock, no sockets) behind one mutex: this is
//! the connection path, not the message path, and one uncontended lock per accept and per close
//! is far cheaper than the TLS handshake that follows. The map holds only addresses with at least
//! one open connection, so its key count is bounded by `max_connections`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The two budgets of one listener family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub max_connections: usize,
    pub per_address: usize,
}

/// What one address counts as: an IPv4 address, or the /64 prefix of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4(u32),
    V6Prefix64(u64),
}

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                None => AddressKey::V6Prefix64((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server holds `max_connections` already.
    Global,
    /// This address (or /64) holds `per_address` already.
    PerAddress,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Global => "global",
            Refused::PerAddress => "per_address",
        }
    }
}

/// The counting, without locks or I/O.
#[derive(Debug)]
pub struct Counts {
    limits: AdmissionLimits,
    total: usize,
    per_address: HashMap<AddressKey, usize>,
}

impl Counts {
    pub fn new(limits: AdmissionLimits) -> Counts {
        Counts {
            limits,
            total: 0,
            per_address: HashMap::new(),
        }
    }

    pub fn admit(&mut self, key: AddressKey) -> Result<(), Refused> {
        if self.total >= self.limits.max_connections {
            return Err(Refused::Global);
        }
        let held = self.per_address.entry(key).or_insert(0);
        if *held >= self.limits.per_address {
            return Err(Refused::PerAddress);
        }
        *held += 1;
        self.total += 1;
        Ok(())
    }

    pub fn release(&mut self, key: AddressKey) {
        if let Some(held) = self.per_address.get_mut(&key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.per_address.remove(&key);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn addresses(&self) -> usize {
        self.per_address.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

/// Series of every admission budget (`listener` = "client" or "ops").
#[derive(Default)]
pub struct AdmissionMetrics {
    pub refused: Family<RefusedLabels, Counter>,
    pub admitted: Family<ListenerLabels, Gauge>,
    /// Connections closed because a phase took too long (`phase` in the label's place).
    pub timeouts: Family<PhaseLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

impl AdmissionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tern_connections_refused",
            "Connections closed at accept: over the global or the per-address budget",
            self.refused.clone(),
        );
        registry.register(
            "tern_connections_admitted",
            "Connections currently holding a place in a budget, by listener",
            self.admitted.clone(),
        );
        registry.register(
            "tern_edge_timeouts",
            "Connections or requests ended because a phase took too long, by phase",
            self.timeouts.clone(),
        );
    }

    pub fn timeout(&self, phase: &'static str) {
        self.timeouts.get_or_create(&PhaseLabels { phase }).inc();
    }
}

/// One shared budget (all shards, both TCP drivers and QUIC share the client one).
pub struct Admission {
    counts: Mutex<Counts>,
    listener: &'static str,
    refused_global: Counter,
    refused_per_address: Counter,
    admitted: Gauge,
}

impl Admission {
    pub fn new(
        listener: &'static str,
        limits: AdmissionLimits,
        metrics: &AdmissionMetrics,
    ) -> Arc<Admission> {
        let refused = |reason: Refused| {
            metrics
                .refused
                .get_or_create(&RefusedLabels {
                    listener,
                    reason: reason.label(),
                })
                .clone()
        };
        Arc::new(Admission {
            counts: Mutex::new(Counts::new(limits)),
            listener,
            refused_global: refused(Refused::Global),
            refused_per_address: refused(Refused::PerAddress),
            admitted: metrics
                .admitted
                .get_or_create(&ListenerLabels { listener })
                .clone(),
        })
    }

    /// A place for a connection from `ip`, or why not (counted, and logged at debug only: a
    /// flood of refusals must not become a flood of log lines).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let key = AddressKey::of(ip);
        let result = match self.counts.lock() {
            Ok(mut counts) => counts.admit(key),
            Err(poisoned) => poisoned.into_inner().admit(key),
        };
        match result {
            Ok(()) => {
                self.admitted.inc();
                Ok(Admitted {
                    admission: self.clone(),
                    key,
                })
            }
            Err(why) => {
                match why {
                    Refused::Global => self.refused_global.inc(),
                    Refused::PerAddress => self.refused_per_address.inc(),
                };
                tracing::debug!(listener = self.listener, %ip, ?why, "connection refused");
                Err(why)
            }
        }
    }

    fn release(&self, key: AddressKey) {
        match self.counts.lock() {
            Ok(mut counts) => counts.release(key),
            Err(poisoned) => poisoned.into_inner().release(key),
        }
        self.admitted.dec();
    }
}

/// A connection's place in its budget, given back on drop.
pub struct Admitted {
    admission: Arc<Admission>,
    key: AddressKey,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.release(self.key);
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what the operator allowed us) and returns
/// the limit in force. Servers that hold one descriptor per connection need it, and the default
/// soft limit (often 1,024) is a leftover from `select(2)`.
pub fn raise_fd_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on a stack struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return 1024;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                }
            }
        }
        limit.rlim_cur
    }
    #[cfg(not(unix))]
    {
        1024
    }
}

/// The global connection budget: what the operator configured, but never more than the
/// descriptors left after the reserve (a larger value would bring `EMFILE` back). The reserve
/// takes at most half of a small descriptor limit, so a 1,024-descriptor host still serves 512.
pub fn global_budget(configured: Option<usize>, fd_limit: u64, fd_reserve: usize) -> usize {
    let limit = usize::try_from(fd_limit).unwrap_or(usize::MAX);
    let available = limit.saturating_sub(fd_reserve.min(limit / 2)).max(1);
    configured.map_or(available, |c| c.min(available)).max(1)
}

/// Makes everything the server creates private to its user: files 0600, directories 0700 (the
/// store holds password hashes, token hashes and every message). Set once at startup, before any
/// file is created; explicit modes on the data directory and the keys come on top.
pub fn restrict_file_modes() {
    #[cfg(unix)]
    // SAFETY: umask only changes the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates the data directory 0700, or tightens an existing one to 0700.
pub fn private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            tracing::info!(dir = %path.display(), mode = format!("{mode:o}"), "data directory made private (0700)");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per: usize) -> AdmissionLimits {
        AdmissionLimits {
            max_connections: max,
            per_address: per,
        }
    }

    #[test]
    fn per_address_and_global_limits_and_release() {
        let mut counts = Counts::new(limits(3, 2));
        let a = AddressKey::of("10.0.0.1".parse().unwrap());
        let b = AddressKey::of("10.0.0.2".parse().unwrap());
        assert_eq!(counts.admit(a), Ok(()));
        assert_eq!(counts.admit(a), Ok(()));
        assert_eq!(counts.admit(a), Err(Refused::PerAddress));
        assert_eq!(counts.admit(b), Ok(()));
        assert_eq!(counts.admit(b), Err(Refused::Global));
        counts.release(a);
        assert_eq!(counts.admit(b), Ok(()));
        counts.release(a);
        counts.release(b);
        counts.release(b);
        assert_eq!((counts.total(), counts.addresses()), (0, 0));
        // Releasing what was never admitted changes nothing.
        counts.release(a);
        assert_eq!(counts.total(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let one = AddressKey::of("2001:db8:1:2::1".parse().unwrap());
        let other_host = AddressKey::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let other_net = AddressKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(one, other_host);
        assert_ne!(one, other_net);
        assert_eq!(
            AddressKey::of("::ffff:192.0.2.7".parse().unwrap()),
            AddressKey::of("192.0.2.7".parse().unwrap())
        );
    }

    #[test]
    fn the_global_budget_stays_below_the_descriptor_limit() {
        assert_eq!(global_budget(None, 20_000, 1_024), 18_976);
        assert_eq!(global_budget(Some(100), 20_000, 1_024), 100);
        assert_eq!(global_budget(Some(50_000), 20_000, 1_024), 18_976);
        assert_eq!(global_budget(None, 512, 1_024), 256);
    }
}
