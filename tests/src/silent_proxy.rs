//! A TCP proxy that can turn its open connections into silent peers: the sockets stay open, but
//! no byte is forwarded any more in either direction and nothing is closed — what a half-dead
//! NAT entry, a frozen VM or a pulled cable on the far side looks like. Only a heartbeat notices.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Connections the proxy stopped forwarding, held open until it is dropped.
type Held = Arc<Mutex<Vec<(TcpStream, TcpStream)>>>;

/// A forwarding proxy whose current connections can be silenced (see the module docs).
#[derive(Debug)]
pub struct SilentProxy {
    /// The proxy's address.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    silence: watch::Sender<u64>,
    held: Held,
    task: JoinHandle<()>,
}

impl SilentProxy {
    /// Listens on an ephemeral local port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (silence, _) = watch::channel(0u64);
        let held: Held = Arc::default();
        let (counter, silencer, holder) = (accepted.clone(), silence.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                // Subscribed now: only a later `silence()` affects this connection.
                let mut silenced = silencer.subscribe();
                let holder = holder.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let went_silent = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        _ = silenced.changed() => true,
                    };
                    if went_silent {
                        holder
                            .lock()
                            .expect("not poisoned")
                            .push((inbound, outbound));
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            silence,
            held,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops forwarding on every open connection, keeping them open; new connections are
    /// forwarded as usual.
    pub fn silence(&self) {
        self.silence.send_modify(|generation| *generation += 1);
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.held.lock().map(|mut held| held.clear()).ok();
    }
}
