//! A TCP relay between the service and PostgreSQL that the test controls, for
//! the fault real networks have and a clean `kill` does not: a connection that
//! goes silent. Silenced, a connection is kept open and its bytes are held in
//! both directions; unsilenced, they flow again.
//!
//! It tells the NOTIFY listener's connection from the pool's by what it carries
//! (`LISTEN`), so the connections must be in plain text (`sslmode=disable`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct Switches {
    /// Connections that have sent `LISTEN` are silent.
    listeners: AtomicBool,
    /// New connections are accepted, then silent from the first byte.
    new_connections: AtomicBool,
}

/// The running relay.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    switches: Arc<Switches>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let switches = Arc::new(Switches::default());
        let shared = Arc::clone(&switches);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let switches = Arc::clone(&shared);
                tokio::spawn(async move {
                    let born_silent = switches.new_connections.load(Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    relay(client, server, switches, born_silent).await;
                });
            }
        });
        Self {
            addr,
            switches,
            task,
        }
    }

    /// Where to connect instead of PostgreSQL.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Silences (or unsilences) every connection that has sent `LISTEN`, now and
    /// from its `LISTEN` on.
    pub fn silence_listeners(&self, silent: bool) {
        self.switches.listeners.store(silent, Ordering::SeqCst);
    }

    /// Makes new connections silent from the start (or not).
    pub fn silence_new_connections(&self, silent: bool) {
        self.switches
            .new_connections
            .store(silent, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, switches: Arc<Switches>, born_silent: bool) {
    let is_listener = Arc::new(AtomicBool::new(false));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let silent = {
        let (switches, is_listener) = (Arc::clone(&switches), Arc::clone(&is_listener));
        move || {
            (born_silent && switches.new_connections.load(Ordering::SeqCst))
                || (is_listener.load(Ordering::SeqCst) && switches.listeners.load(Ordering::SeqCst))
        }
    };
    let up = async {
        let mut buffer = vec![0_u8; 16 * 1024];
        while let Ok(read) = client_read.read(&mut buffer).await
            && read > 0
        {
            if buffer[..read].windows(7).any(|window| window == b"LISTEN ") {
                is_listener.store(true, Ordering::SeqCst);
            }
            held(&silent).await;
            if server_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let mut buffer = vec![0_u8; 16 * 1024];
        while let Ok(read) = server_read.read(&mut buffer).await
            && read > 0
        {
            held(&silent).await;
            if client_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Waits while `silent` says so: the bytes in hand are held, not dropped.
async fn held(silent: &impl Fn() -> bool) {
    while silent() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
