use std::net::IpAddr;
use std::str::FromStr;

use http::header::FORWARDED;
use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use thiserror::Error;

/// A proxy address or CIDR that could not be parsed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("invalid trusted proxy {0:?}: expected an IP address or a CIDR such as 10.0.0.0/8")]
pub struct InvalidProxy(pub String);

/// The addresses of proxies whose forwarding header (the [`ClientIpHeader`] chosen with them)
/// and, with
/// [`ForwardedIdPolicy::TrustFrom`](crate::ForwardedIdPolicy::TrustFrom), request ids are
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
    /// case the one forwarding `header` named here is walked from the nearest hop outwards
    /// and the first address that is not a trusted proxy wins. Only that header is read:
    /// proxies that append to one header (nginx, AWS ALB and Google Cloud load balancers
    /// append to `X-Forwarded-For`) pass any other the client sent through untouched, so
    /// believing another header would let the client pick its own address. A hop that
    /// cannot be parsed (`unknown`, an obfuscated name) stops the walk: nothing beyond it
    /// can be believed, and the nearest trusted proxy seen so far is taken as the client.
    #[inline]
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap, header: &ClientIpHeader) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.contains(peer) {
            return Some(peer);
        }
        Some(self.forwarded_client(peer, headers, header))
    }

    /// The walk of [`client_ip`](Self::client_ip) behind a trusted proxy; apart, so that
    /// the common case (no proxy) stays a few instructions where it is inlined.
    #[inline(never)]
    fn forwarded_client(&self, peer: IpAddr, headers: &HeaderMap, header: &ClientIpHeader) -> IpAddr {
        let mut hops: Vec<Option<IpAddr>> = Vec::new();
        let name = match header {
            ClientIpHeader::Forwarded => &FORWARDED,
            ClientIpHeader::XForwardedFor => &X_FORWARDED_FOR,
            ClientIpHeader::Other(name) => name,
        };
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else { return peer };
            for element in value.split(',') {
                let hop = match header {
                    ClientIpHeader::Forwarded => element
                        .split(';')
                        .find_map(|pair| {
                            let (key, val) = pair.split_once('=')?;
                            key.trim().eq_ignore_ascii_case("for").then(|| parse_node(val.trim()))
                        })
                        .flatten(),
                    _ => parse_node(element.trim()),
                };
                hops.push(hop);
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
        client
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The one header a trusted proxy names the client in. There is no default: it must be the
/// header *your* proxies append to, because they pass the others through as the client sent
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientIpHeader {
    /// `X-Forwarded-For`, a comma-separated list, nearest hop last: what nginx
    /// (`$proxy_add_x_forwarded_for`), HAProxy, AWS ALB/ELB, Google Cloud load balancers and
    /// most CDNs append to.
    XForwardedFor,
    /// `Forwarded` (RFC 7239) `for=` parameters: only when every trusted proxy appends to it
    /// (e.g. Envoy or Traefik configured so). A client-sent `Forwarded` header passes through
    /// proxies that only know `X-Forwarded-For`.
    Forwarded,
    /// Another header holding one address or a comma-separated list, nearest hop last (e.g.
    /// `x-real-ip`, `true-client-ip`, `cf-connecting-ip`), set — not appended to — by the
    /// proxy.
    Other(HeaderName),
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
        assert_eq!(
            proxies.client_ip(Some("8.8.8.8".parse().unwrap()), &h, &ClientIpHeader::XForwardedFor),
            Some("8.8.8.8".parse().unwrap())
        );
        assert_eq!(
            TrustedProxies::none().client_ip(Some("10.0.0.1".parse().unwrap()), &h, &ClientIpHeader::XForwardedFor),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn walks_x_forwarded_for_from_the_right() {
        let proxies = TrustedProxies::parse(["10.0.0.0/8", "192.168.1.1"]).unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 192.168.1.1")]);
        assert_eq!(
            proxies.client_ip(Some("10.1.1.1".parse().unwrap()), &h, &ClientIpHeader::XForwardedFor),
            Some("1.2.3.4".parse().unwrap())
        );
    }

    #[test]
    fn reads_only_the_chosen_header() {
        let proxies = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        let peer = Some("127.0.0.1".parse().unwrap());
        let h = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"), ("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(proxies.client_ip(peer, &h, &ClientIpHeader::Forwarded), Some("2001:db8::1".parse().unwrap()));
        // Behind an XFF-appending proxy a client-sent `Forwarded` is the client's own word.
        assert_eq!(proxies.client_ip(peer, &h, &ClientIpHeader::XForwardedFor), Some("9.9.9.9".parse().unwrap()));
        let h = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(proxies.client_ip(peer, &h, &ClientIpHeader::Forwarded), Some("192.0.2.60".parse().unwrap()));
        assert_eq!(
            proxies.client_ip(peer, &h, &ClientIpHeader::XForwardedFor),
            peer,
            "no XFF: the proxy is the client"
        );
        let h = headers(&[("x-real-ip", "198.51.100.4"), ("x-forwarded-for", "9.9.9.9")]);
        let real_ip = ClientIpHeader::Other(HeaderName::from_static("x-real-ip"));
        assert_eq!(proxies.client_ip(peer, &h, &real_ip), Some("198.51.100.4".parse().unwrap()));
    }

    #[test]
    fn unparseable_hop_stops_the_walk() {
        let proxies = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4, unknown")]);
        assert_eq!(
            proxies.client_ip(Some("127.0.0.1".parse().unwrap()), &h, &ClientIpHeader::XForwardedFor),
            Some("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn bad_entries_are_errors() {
        assert_eq!(TrustedProxies::parse(["nope"]), Err(InvalidProxy("nope".into())));
    }
}
