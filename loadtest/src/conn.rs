//! One keep-alive HTTP/1.1 connection to the target, owned by one load slot (hyper's
//! connection-level client, `hyper::client::conn::http1`): no pool to check out of, no
//! connection task: the connection's state machine is polled by the slot's own task together
//! with the request, so a request and its answer cross no thread and wake no other task.

use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{handshake, Connection as Driver, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no HTTP answer.
#[derive(Debug)]
pub enum ConnError {
    /// Connecting failed (refused, unreachable).
    Connect(std::io::Error),
    /// The HTTP exchange failed (reset, closed early, malformed answer).
    Http(hyper::Error),
    /// The server closed the connection before answering.
    Closed,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Connect(e) => write!(f, "connect: {e}"),
            ConnError::Http(e) => write!(f, "http: {e}"),
            ConnError::Closed => write!(f, "the server closed the connection"),
        }
    }
}

/// hyper's HTTP/1.1 client state machine over a TCP stream, sending full-body requests.
type HttpDriver = Driver<TokioIo<TcpStream>, Full<Bytes>>;

/// A connection that reconnects on the next request after a failure or a server close.
pub struct Connection {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// hyper's connection state machine, polled by [`Connection::send`] itself (no task).
    driver: Option<Pin<Box<HttpDriver>>>,
}

impl Connection {
    /// A connection to `addr`, not yet open.
    pub fn new(addr: SocketAddr) -> Self {
        Connection {
            addr,
            sender: None,
            driver: None,
        }
    }

    /// The open connection, or a new one (TCP_NODELAY: a request is one small write that
    /// must not wait for an acknowledgement, RFC 896).
    ///
    /// # Errors
    /// [`ConnError::Connect`] or a failed HTTP/1.1 handshake.
    pub async fn open(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ConnError> {
        let sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => {
                let stream = TcpStream::connect(self.addr)
                    .await
                    .map_err(ConnError::Connect)?;
                stream.set_nodelay(true).map_err(ConnError::Connect)?;
                let (sender, conn) = handshake(TokioIo::new(stream))
                    .await
                    .map_err(ConnError::Http)?;
                self.driver = Some(Box::pin(conn));
                sender
            }
        };
        Ok(self.sender.insert(sender))
    }

    /// Drops the connection (after a timeout: its answer may still come); the next request
    /// opens a new one.
    pub fn close(&mut self) {
        self.sender = None;
        self.driver = None;
    }

    /// Sends one request and reads the whole answer; returns its HTTP status.
    ///
    /// # Errors
    /// The connection could not be (re)opened or the exchange failed; the connection is then
    /// dropped and the next request opens a new one.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<u16, ConnError> {
        if let Err(e) = self.open().await {
            self.close();
            return Err(e);
        }
        let result = {
            let (Some(sender), Some(driver)) = (self.sender.as_mut(), self.driver.as_mut()) else {
                return Err(ConnError::Closed);
            };
            let exchange = async {
                sender.ready().await.map_err(ConnError::Http)?;
                let resp = sender.send_request(req).await.map_err(ConnError::Http)?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await.map_err(ConnError::Http)?;
                Ok(status)
            };
            tokio::pin!(exchange);
            // The exchange and the connection's state machine, polled together in this task.
            tokio::select! {
                biased;
                r = &mut exchange => r,
                _ = driver.as_mut() => Err(ConnError::Closed),
            }
        };
        if result.is_err() {
            self.close();
        }
        result
    }
}
