//! TCP and DNS-over-TLS connections to one server (or its DoQ or DoH one, `hickory.rs`), reused and pipelined (RFC 7766 §6.2.1,
//! RFC 7858): one connection at a time, opened on first use; queries are written as they
//! come, each with an ID unique on the connection, and answers are matched by ID and question
//! in whatever order they arrive. A connection closes after `IDLE` without queries; a query
//! whose reused connection turns out closed is asked once more on a new one.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use rustc_hash::FxBuildHasher;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::answers;

/// A connection with nothing in flight closes after this long.
const IDLE: Duration = Duration::from_secs(10);
/// Queries queued for writing on one connection at most.
const QUEUED: usize = 1024;

/// What a TLS connection needs: the client config (roots) and the name to verify.
#[derive(Clone)]
pub(super) struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

/// The stream connection to one server.
pub(super) struct Streams {
    server: SocketAddr,
    tls: Option<Tls>,
    /// DNS over QUIC or HTTPS instead of a TCP or TLS stream.
    hickory: Option<super::hickory::Hickory>,
    current: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Counts connections opened.
    opened: IntCounter,
}

/// One open connection: its write queue and the queries waiting for answers.
struct Conn {
    frames: mpsc::Sender<Vec<u8>>,
    waiting: Mutex<HashMap<u16, Waiter, FxBuildHasher>>,
    closed: AtomicBool,
}

struct Waiter {
    /// The query as sent on this connection (its ID and question), to match the answer.
    request: Vec<u8>,
    reply: oneshot::Sender<Vec<u8>>,
}

impl Streams {
    pub fn new(
        server: SocketAddr,
        tls: Option<Tls>,
        link: Option<super::hickory::Link>,
        host: Option<super::hickory::Host>,
        opened: IntCounter,
    ) -> Streams {
        let hickory = tls.as_ref().zip(link).map(|(tls, link)| {
            let name = tls.name.to_str();
            let hickory =
                super::hickory::Hickory::new(server, link, &name, &tls.config, opened.clone());
            hickory.found_by(host)
        });
        Streams {
            server,
            tls,
            hickory,
            current: tokio::sync::Mutex::new(None),
            opened,
        }
    }

    /// Asks `request` (no length prefix) and returns the answer with the request's ID.
    pub async fn ask(&self, request: &[u8]) -> io::Result<Vec<u8>> {
        if let Some(hickory) = &self.hickory {
            return hickory.ask(request).await;
        }
        let (conn, fresh) = self.connection().await?;
        match conn.ask(request).await {
            // The server closed a connection we reused (idle, or its limit): once more.
            Err(err) if !fresh => {
                debug!(server = %self.server, %err, "reused connection closed; reconnecting");
                self.connection().await?.0.ask(request).await
            }
            result => result,
        }
    }

    /// The open connection, or a new one (`true`).
    async fn connection(&self) -> io::Result<(Arc<Conn>, bool)> {
        let mut current = self.current.lock().await;
        if let Some(conn) = current
            .as_ref()
            .filter(|c| !c.closed.load(Ordering::Relaxed))
        {
            return Ok((conn.clone(), false));
        }
        let tcp = TcpStream::connect(self.server).await?;
        tcp.set_nodelay(true)?;
        self.opened.inc();
        let conn = match &self.tls {
            None => Conn::spawn(tcp),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                Conn::spawn(connector.connect(tls.name.clone(), tcp).await?)
            }
        };
        *current = Some(conn.clone());
        Ok((conn, true))
    }
}

impl Conn {
    fn spawn<S>(stream: S) -> Arc<Conn>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (frames, queue) = mpsc::channel(QUEUED);
        let conn = Arc::new(Conn {
            frames,
            waiting: Mutex::default(),
            closed: AtomicBool::new(false),
        });
        let (read, write) = tokio::io::split(stream);
        let reader = tokio::spawn(conn.clone().read(read));
        tokio::spawn(conn.clone().write(write, queue, reader));
        conn
    }

    async fn ask(&self, request: &[u8]) -> io::Result<Vec<u8>> {
        let mut frame = Vec::with_capacity(request.len() + 2);
        frame.extend_from_slice(&(request.len() as u16).to_be_bytes());
        frame.extend_from_slice(request);
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut waiting = self.waiting.lock().expect("not poisoned");
            let id = loop {
                let id: u16 = rand::random();
                if !waiting.contains_key(&id) {
                    break id;
                }
            };
            frame[2..4].copy_from_slice(&id.to_be_bytes());
            let request = frame[2..].to_vec();
            waiting.insert(id, Waiter { request, reply });
            id
        };
        let _waiting = Forget { conn: self, id };
        if self.closed.load(Ordering::Relaxed) || self.frames.send(frame).await.is_err() {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        let mut answer = answer
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::ConnectionAborted))?;
        answer[..2].copy_from_slice(&request[..2]);
        Ok(answer)
    }

    /// Reads answers and hands each to the query it answers; others are dropped.
    async fn read(self: Arc<Self>, mut stream: impl AsyncRead + Unpin) {
        let mut len = [0u8; 2];
        loop {
            if stream.read_exact(&mut len).await.is_err() {
                break;
            }
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if stream.read_exact(&mut answer).await.is_err() {
                break;
            }
            if answer.len() < 2 {
                continue;
            }
            let id = u16::from_be_bytes([answer[0], answer[1]]);
            let mut waiting = self.waiting.lock().expect("not poisoned");
            if waiting
                .get(&id)
                .is_some_and(|w| answers(&w.request, &answer))
            {
                let waiter = waiting.remove(&id).expect("present");
                let _ = waiter.reply.send(answer);
            }
        }
        self.close();
    }

    /// Writes queued queries (a batch at a time, then flushes); closes the connection when
    /// it has been idle for [`IDLE`].
    async fn write(
        self: Arc<Self>,
        mut stream: impl AsyncWrite + Unpin,
        mut queue: mpsc::Receiver<Vec<u8>>,
        reader: tokio::task::JoinHandle<()>,
    ) {
        let mut batch = Vec::new();
        loop {
            let frame = match tokio::time::timeout(IDLE, queue.recv()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) if self.waiting.lock().expect("not poisoned").is_empty() => break,
                Err(_) => continue,
            };
            batch.clear();
            batch.extend_from_slice(&frame);
            while let Ok(frame) = queue.try_recv() {
                batch.extend_from_slice(&frame);
            }
            if stream.write_all(&batch).await.is_err() || stream.flush().await.is_err() {
                break;
            }
        }
        self.close();
        let _ = stream.shutdown().await;
        reader.abort();
    }

    /// No more queries on this connection; those waiting fail (and are asked again).
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.waiting.lock().expect("not poisoned").clear();
    }
}

/// Removes a query from the waiting table when its asker stops waiting (answered, timed out).
struct Forget<'a> {
    conn: &'a Conn,
    id: u16,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        (self.conn.waiting.lock().expect("not poisoned")).remove(&self.id);
    }
}
