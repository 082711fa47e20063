//! A bare pingora reverse proxy with no filters: the floor the gateway's own work is measured
//! against (`make bench`, figures 1 and 2). Usage: `bare_proxy LISTEN UPSTREAM`, both `host:port`.
//!
//! pingora's server knobs, for trying them on the floor itself (each optional; the defaults are
//! the gateway's): `BARE_THREADS` (worker threads, default 2), `BARE_WORK_STEALING` (`true` or
//! `false`, default true), `BARE_LISTENER_TASKS` (accept tasks per listening socket, default
//! 1), `BARE_KEEPALIVE_POOL` (idle upstream connections kept, default 128).

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

/// The value of environment variable `name` parsed as `T`, or `default` when unset; exits with
/// a message when it is set but does not parse.
fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("bare_proxy: {name}={v} is not a valid value");
            std::process::exit(2);
        }),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: knob("BARE_THREADS", 2),
        work_stealing: knob("BARE_WORK_STEALING", true),
        listener_tasks_per_fd: knob("BARE_LISTENER_TASKS", 1),
        upstream_keepalive_pool_size: knob("BARE_KEEPALIVE_POOL", 128),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
