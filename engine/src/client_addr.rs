//! Which "client" an address belongs to, for limits and fair queuing.
//!
//! An IPv4 address is one client (/32): a NAT puts many people behind one, which is why the
//! per-address defaults leave room for a classroom. An IPv6 host usually gets a whole /64 (SLAAC,
//! privacy addresses), so keying per /128 let one machine rotate through 2^64 addresses and
//! escape every per-address limit: IPv6 is keyed per /64. IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`, what a dual-stack socket reports for IPv4 peers) count as their IPv4.

use std::net::{IpAddr, Ipv6Addr};

/// The limit key of a client address: IPv4 as is, IPv6 masked to its /64.
pub fn client_prefix(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_per_64_and_ipv4_per_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_prefix(a), client_prefix(b));
        assert_ne!(client_prefix(a), client_prefix(other));
        assert_eq!(
            client_prefix(a),
            "2001:db8:1:2::".parse::<IpAddr>().expect("ip")
        );
        let v4: IpAddr = "127.0.0.2".parse().expect("ip");
        assert_eq!(client_prefix(v4), v4);
        assert_ne!(
            client_prefix(v4),
            client_prefix("127.0.0.3".parse().expect("ip"))
        );
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("ip");
        assert_eq!(client_prefix(mapped), v4);
    }
}
