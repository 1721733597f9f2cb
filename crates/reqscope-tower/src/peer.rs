//! Where the connection's peer address is found: what the server put into the request's
//! extensions.
//!
//! ```
//! use std::net::SocketAddr;
//! use reqscope_tower::request_context::RequestContextLayer;
//!
//! /// A server of our own that stores the peer in an extension of its own.
//! #[derive(Clone)]
//! struct Remote(SocketAddr);
//!
//! let layer = RequestContextLayer::new()
//!     .peer_addr(|extensions: &http::Extensions| extensions.get::<Remote>().map(|remote| remote.0));
//! ```
//!
//! The [`RequestContextLayer`](crate::request_context::RequestContextLayer) asks for the peer once per request.
//! Its ip is the request's `client_ip` — unless the peer is one of the trusted proxies, when
//! the forwarding header names the client — and it is the address the forwarded-id and
//! `traceparent` policies and the trusted-proxy check judge. No peer (an in-memory transport,
//! a test calling the service directly) means no `client_ip`, and a policy that trusts only
//! given proxies trusts nothing.
//!
//! [`DefaultPeerAddr`], the default, knows the servers' own extensions: axum's
//! `ConnectInfo<SocketAddr>` (feature `axum`; serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`), tonic's `TcpConnectInfo`
//! (feature `tonic`; `tonic::transport::Server` inserts it), and a plain `SocketAddr`.
//! With TLS, tonic's server inserts `TlsConnectInfo<TcpConnectInfo>` instead; read it with
//! a closure of your own, with tonic's TLS feature on your `tonic`:
//! `.peer_addr(|e: &http::Extensions| e.get::<TlsConnectInfo<TcpConnectInfo>>()?.get_ref().remote_addr())`.
//! When the default finds nothing, one WARN (target `reqscope::setup`) says so, once per
//! process; a reader of your own that finds nothing is taken to mean it.

use std::net::SocketAddr;

use http::Extensions;

/// Finds the peer address of the connection a request came on. See the [module docs](self).
///
/// Implemented for closures `Fn(&Extensions) -> Option<SocketAddr>`.
pub trait PeerAddr: Send + Sync + 'static {
    /// The peer address, from the request's extensions; `None` when it is not known.
    fn peer_addr(&self, extensions: &Extensions) -> Option<SocketAddr>;
}

impl<F> PeerAddr for F
where
    F: Fn(&Extensions) -> Option<SocketAddr> + Send + Sync + 'static,
{
    fn peer_addr(&self, extensions: &Extensions) -> Option<SocketAddr> {
        self(extensions)
    }
}

/// Reads, in this order: axum's `ConnectInfo<SocketAddr>` (feature `axum`), tonic's
/// `TcpConnectInfo` (feature `tonic`), a `SocketAddr` extension.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultPeerAddr;

impl PeerAddr for DefaultPeerAddr {
    fn peer_addr(&self, extensions: &Extensions) -> Option<SocketAddr> {
        #[cfg(feature = "axum")]
        if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Some(info.0);
        }
        #[cfg(feature = "tonic")]
        if let Some(addr) =
            extensions.get::<tonic::transport::server::TcpConnectInfo>().and_then(|info| info.remote_addr())
        {
            return Some(addr);
        }
        extensions.get::<SocketAddr>().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_socket_addr_is_read_and_nothing_means_none() {
        let mut extensions = Extensions::new();
        assert_eq!(DefaultPeerAddr.peer_addr(&extensions), None);
        let addr: SocketAddr = "192.0.2.7:4242".parse().unwrap();
        extensions.insert(addr);
        assert_eq!(DefaultPeerAddr.peer_addr(&extensions), Some(addr));
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axum_connect_info_comes_first() {
        let mut extensions = Extensions::new();
        let connected: SocketAddr = "198.51.100.1:1".parse().unwrap();
        extensions.insert("192.0.2.7:4242".parse::<SocketAddr>().unwrap());
        extensions.insert(axum::extract::ConnectInfo(connected));
        assert_eq!(DefaultPeerAddr.peer_addr(&extensions), Some(connected));
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn tonic_tcp_connect_info_is_read() {
        let mut extensions = Extensions::new();
        let remote: SocketAddr = "203.0.113.9:50051".parse().unwrap();
        extensions.insert(tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: Some(remote) });
        assert_eq!(DefaultPeerAddr.peer_addr(&extensions), Some(remote));
    }

    #[test]
    fn a_closure_is_a_peer_addr() {
        let fixed: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let peer = move |_: &Extensions| Some(fixed);
        assert_eq!(PeerAddr::peer_addr(&peer, &Extensions::new()), Some(fixed));
    }
}
