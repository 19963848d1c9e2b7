//! The client's address behind reverse proxies.
//!
//! `X-Forwarded-For` is a list every hop appends to: a client may write any entries it likes at
//! its left, and only the entries appended by proxies the operator runs are true. So the address
//! is read from the right: past the trusted hops, the first address is the client's. The left-most
//! entry, the one a client chose, is never believed.
//!
//! `TRUSTED_PROXIES` says which hops are trusted: a count of proxies in front of the service
//! (`1`: a load balancer; every request passes through it) or a list of addresses and networks
//! (`10.0.0.0/8,fd00::/8,127.0.0.1`). Unset, `X-Forwarded-For` is ignored.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context, bail};
use axum::http::HeaderMap;

/// An address with a prefix length: `10.0.0.0/8`, `fd00::/8`, `127.0.0.1` (a /32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().with_context(|| format!("`{s}` is not an address or a network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .with_context(|| format!("`{s}`: the prefix length must be a number from 0 to {max}"))?,
            None => max,
        };
        Ok(Self { addr: mask(addr, prefix), prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

/// Which hops in front of the service may be believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TrustedProxies {
    /// `X-Forwarded-For` is ignored: the peer is the client.
    #[default]
    None,
    /// This many proxies stand in front of the service on every path.
    Hops(usize),
    /// Peers (and hops) at these addresses are proxies.
    Networks(Vec<Network>),
}

impl TrustedProxies {
    /// `TRUSTED_PROXIES`: empty, a count, or a comma-separated list of addresses and networks.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let s = s.trim();
        if s.is_empty() || s == "0" {
            return Ok(Self::None);
        }
        if let Ok(n) = s.parse::<usize>() {
            if n > 64 {
                bail!("TRUSTED_PROXIES: {n} proxies in a row is not a real set-up (at most 64)");
            }
            return Ok(Self::Hops(n));
        }
        let networks = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Network::parse)
            .collect::<anyhow::Result<Vec<_>>>()
            .context("TRUSTED_PROXIES must be a number of proxies or a list of addresses and networks")?;
        Ok(Self::Networks(networks))
    }

    /// The client's address: `peer` is the address that connected to the service.
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer.map(canonical);
        match self {
            Self::None => peer,
            Self::Hops(n) => {
                // the chain as the last proxy saw it, nearest hop last: [..x-forwarded-for, peer]
                let mut hops = forwarded(headers).rev();
                let mut client = peer;
                for _ in 0..*n {
                    match hops.next() {
                        // fewer hops than proxies: the request did not come the usual way; the
                        // furthest address known is the best there is
                        None => break,
                        // an entry a proxy wrote is an address; garbage stops the walk there
                        Some(None) => break,
                        Some(Some(ip)) => client = Some(ip),
                    }
                }
                client
            }
            Self::Networks(networks) => {
                let trusted = |ip: IpAddr| networks.iter().any(|n| n.contains(ip));
                let mut client = peer?;
                if !trusted(client) {
                    return Some(client);
                }
                for hop in forwarded(headers).rev() {
                    let Some(ip) = hop else { break };
                    client = ip;
                    if !trusted(ip) {
                        break;
                    }
                }
                Some(client)
            }
        }
    }
}

/// The entries of every `X-Forwarded-For` header, in order; `None` for one that is not an address.
fn forwarded(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_hop(s).map(canonical))
}

/// One entry: `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443` or `203.0.113.7:1234`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sock) = s.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    None
}

/// IPv4 addresses written as IPv6 (`::ffff:a.b.c.d`) are IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// The address a client is counted under by the rate limits: an IPv4 address, or an IPv6
/// address's /64 — one subscriber gets a whole /64, and counting single IPv6 addresses would give
/// one machine 2^64 allowances.
pub fn limit_identity(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(_) => mask(ip, 64),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let client = TrustedProxies::None.client(Some(ip("198.51.100.1")), &headers(&["1.2.3.4"]));
        assert_eq!(client, Some(ip("198.51.100.1")));
    }

    #[test]
    fn a_hop_count_takes_the_entry_its_last_proxy_wrote() {
        let one = TrustedProxies::parse("1").unwrap();
        // the client wrote 6.6.6.6 itself; the load balancer appended the address it saw
        let h = headers(&["6.6.6.6, 203.0.113.9"]);
        assert_eq!(one.client(Some(ip("10.0.0.2")), &h), Some(ip("203.0.113.9")));
        let two = TrustedProxies::parse("2").unwrap();
        let h = headers(&["6.6.6.6, 203.0.113.9, 10.0.0.7"]);
        assert_eq!(two.client(Some(ip("10.0.0.2")), &h), Some(ip("203.0.113.9")));
        // several headers are one list
        let h = headers(&["6.6.6.6", "203.0.113.9", "10.0.0.7"]);
        assert_eq!(two.client(Some(ip("10.0.0.2")), &h), Some(ip("203.0.113.9")));
        // no header: the peer is all there is
        assert_eq!(one.client(Some(ip("10.0.0.2")), &HeaderMap::new()), Some(ip("10.0.0.2")));
        // a garbage entry where an address should be stops at the hop before it
        let h = headers(&["6.6.6.6, not-an-address"]);
        assert_eq!(one.client(Some(ip("10.0.0.2")), &h), Some(ip("10.0.0.2")));
    }

    #[test]
    fn networks_take_the_right_most_untrusted_hop() {
        let p = TrustedProxies::parse("10.0.0.0/8, fd00::/8, 127.0.0.1").unwrap();
        // a peer that is not a proxy is the client, whatever it writes
        assert_eq!(p.client(Some(ip("198.51.100.1")), &headers(&["1.2.3.4"])), Some(ip("198.51.100.1")));
        let h = headers(&["6.6.6.6, 203.0.113.9, 10.1.2.3"]);
        assert_eq!(p.client(Some(ip("127.0.0.1")), &h), Some(ip("203.0.113.9")));
        let h = headers(&["2001:db8::1, fd00::5"]);
        assert_eq!(p.client(Some(ip("::ffff:10.0.0.1")), &h), Some(ip("2001:db8::1")));
        // every hop a proxy: the furthest one
        let h = headers(&["10.9.9.9, 10.1.2.3"]);
        assert_eq!(p.client(Some(ip("127.0.0.1")), &h), Some(ip("10.9.9.9")));
        let h = headers(&["[2001:db8::7]:443, 203.0.113.9:5000"]);
        assert_eq!(p.client(Some(ip("127.0.0.1")), &h), Some(ip("203.0.113.9")));
    }

    #[test]
    fn parsing() {
        assert_eq!(TrustedProxies::parse("").unwrap(), TrustedProxies::None);
        assert_eq!(TrustedProxies::parse("0").unwrap(), TrustedProxies::None);
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
        assert!(TrustedProxies::parse("1000").is_err());
        let n = Network::parse("192.168.1.77/24").unwrap();
        assert!(n.contains(ip("192.168.1.1")) && !n.contains(ip("192.168.2.1")));
        assert!(Network::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(!Network::parse("::/0").unwrap().contains(ip("1.2.3.4")));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        assert_eq!(limit_identity(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_identity(ip("2001:db8:1:2:ffff::9")), ip("2001:db8:1:2::"));
        assert_ne!(limit_identity(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_identity(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(limit_identity(ip("1.2.3.4")), ip("1.2.3.4"));
    }
}
