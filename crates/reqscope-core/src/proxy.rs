use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;
use thiserror::Error;

/// A proxy address or CIDR that could not be parsed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("invalid trusted proxy {0:?}: expected an IP address or a CIDR such as 10.0.0.0/8")]
pub struct InvalidProxy(pub String);

/// The addresses of proxies whose `X-Forwarded-For` / `Forwarded` headers (and, with
/// [`ForwardedIdPolicy::TrustFrom`](crate::ForwardedIdPolicy::TrustFrom), request ids) are
/// believed.
///
/// Empty by default: then the client ip is always the connection's peer address, and no
/// header can spoof it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// No trusted proxies.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses addresses (`10.0.0.7`, `::1`) and CIDRs (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse<I, S>(entries: I) -> Result<Self, InvalidProxy>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = entries
            .into_iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map_err(|_| InvalidProxy(entry.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// Whether no proxy is trusted.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` belongs to a trusted proxy.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer itself, unless the peer is a trusted proxy, in which
    /// case the forwarding headers are walked from the nearest hop outwards and the first
    /// address that is not a trusted proxy wins. `Forwarded` (RFC 7239) is preferred over
    /// `X-Forwarded-For`. A hop that cannot be parsed (`unknown`, an obfuscated name) stops
    /// the walk: nothing beyond it can be believed, and the nearest trusted proxy seen so far
    /// is taken as the client.
    #[inline]
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.contains(peer) {
            return Some(peer);
        }
        let mut hops: Vec<Option<IpAddr>> = Vec::new();
        if headers.contains_key(FORWARDED) {
            for value in headers.get_all(FORWARDED) {
                let Ok(value) = value.to_str() else { return Some(peer) };
                for element in value.split(',') {
                    let hop = element.split(';').find_map(|pair| {
                        let (key, val) = pair.split_once('=')?;
                        key.trim().eq_ignore_ascii_case("for").then(|| parse_node(val.trim()))
                    });
                    hops.push(hop.flatten());
                }
            }
        } else {
            for value in headers.get_all("x-forwarded-for") {
                let Ok(value) = value.to_str() else { return Some(peer) };
                hops.extend(value.split(',').map(|hop| parse_node(hop.trim())));
            }
        }
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            match hop {
                Some(ip) => {
                    client = ip;
                    if !self.contains(ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        Some(client)
    }
}

/// Parses one node: `192.0.2.1`, `192.0.2.1:8080`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let (addr, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(proxies.client_ip(Some("8.8.8.8".parse().unwrap()), &h), Some("8.8.8.8".parse().unwrap()));
        assert_eq!(
            TrustedProxies::none().client_ip(Some("10.0.0.1".parse().unwrap()), &h),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn walks_x_forwarded_for_from_the_right() {
        let proxies = TrustedProxies::parse(["10.0.0.0/8", "192.168.1.1"]).unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 192.168.1.1")]);
        assert_eq!(proxies.client_ip(Some("10.1.1.1".parse().unwrap()), &h), Some("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn prefers_forwarded_and_parses_ports_and_v6() {
        let proxies = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        let h = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"), ("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(proxies.client_ip(Some("127.0.0.1".parse().unwrap()), &h), Some("2001:db8::1".parse().unwrap()));
        let h = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(proxies.client_ip(Some("127.0.0.1".parse().unwrap()), &h), Some("192.0.2.60".parse().unwrap()));
    }

    #[test]
    fn unparseable_hop_stops_the_walk() {
        let proxies = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4, unknown")]);
        assert_eq!(proxies.client_ip(Some("127.0.0.1".parse().unwrap()), &h), Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_entries_are_errors() {
        assert_eq!(TrustedProxies::parse(["nope"]), Err(InvalidProxy("nope".into())));
    }
}
