//! A TCP proxy between Redis clients and a `redis-server`, for faults a real server
//! cannot be asked for: a reply lost after the command ran (the connection cut right
//! after the server answered), or one command refused with an error. A fault is armed
//! for the next command whose bytes contain a pattern (a key, a marker in an argument).
//!
//! It parses the clients' commands (RESP arrays, as every Redis client sends them), so
//! an error takes the command's place in order: the command is swapped for an unknown
//! one, and the server's own error reply comes back where the command's would have.
//! A lost reply cuts the connection at the first bytes the server sends after the
//! command (a held reply waits there): meant for a connection with one request in
//! flight at that moment.
//!
//! It can also cut its clients off altogether ([`TcpProxy::cut_off`]: every byte in
//! either direction is dropped, as in a network partition; connections stay open and
//! new ones are accepted, so clients see only silence) and let them back
//! ([`TcpProxy::restore`]), and it can record the size of the commands that contain a
//! pattern ([`TcpProxy::watch`]).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What happens to a command that matches an armed pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward the command, let it run, then cut the connection instead of passing
    /// the reply on.
    LoseReply,
    /// Do not run the command: the client gets an error reply (`-ERR unknown command`).
    Error,
    /// Forward the command, let it run, and hold its reply (and every later one on that
    /// connection) until [`TcpProxy::release_held`].
    HoldReply,
}

struct Rule {
    pattern: Vec<u8>,
    fault: Fault,
    times: usize,
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    injected: AtomicUsize,
    stopped: AtomicBool,
    released: AtomicBool,
    /// Drop every byte in both directions (see [`TcpProxy::cut_off`]).
    cut_off: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
    /// Patterns watched, each with the sizes of the commands that contained it.
    watches: Mutex<Vec<(Vec<u8>, Vec<usize>)>>,
}

pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
}

/// The command that takes a refused command's place: unknown to Redis, so it answers
/// with an error in the refused command's turn.
const REFUSED: &[u8] = b"*1\r\n$25\r\nFLEET-TEST-INJECTED-FAULT\r\n";

impl TcpProxy {
    /// Listen on a free local port and forward every connection to `upstream_port`.
    pub fn start(upstream_port: u16) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                connect_pair(&s, client, server);
            }
        });
        TcpProxy { port, shared }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Arm `fault` for the next `times` commands containing `pattern`.
    pub fn inject(&self, pattern: &str, fault: Fault, times: usize) {
        self.shared.rules.lock().unwrap().push(Rule {
            pattern: pattern.as_bytes().to_vec(),
            fault,
            times,
        });
    }

    /// Disarm every fault not injected yet.
    pub fn clear_faults(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    /// Pass on the replies held by [`Fault::HoldReply`].
    pub fn release_held(&self) {
        self.shared.released.store(true, Ordering::SeqCst);
    }

    /// How many faults have been injected so far.
    pub fn injected(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Cut every client off from the server, as a network partition would: from now
    /// on every byte in either direction is dropped, on open connections and on new
    /// ones, and nothing is closed, so clients see only silence (their calls time out).
    pub fn cut_off(&self) {
        self.shared.cut_off.store(true, Ordering::SeqCst);
    }

    /// End a [`cut_off`](Self::cut_off): the connections open during it are closed
    /// (the bytes they lost would leave client and server out of step), so clients
    /// reconnect; new connections are forwarded as before.
    pub fn restore(&self) {
        // Under the lock, so no connection is opened while some are still cut off.
        let mut open = self.shared.streams.lock().unwrap();
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.shared.cut_off.store(false, Ordering::SeqCst);
    }

    /// Record the size in bytes of every later command containing `pattern`
    /// (see [`watched`](Self::watched)).
    pub fn watch(&self, pattern: &str) {
        self.shared
            .watches
            .lock()
            .unwrap()
            .push((pattern.as_bytes().to_vec(), Vec::new()));
    }

    /// The sizes of the commands forwarded so far that contained the watched `pattern`.
    pub fn watched(&self, pattern: &str) -> Vec<usize> {
        self.shared
            .watches
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == pattern.as_bytes())
            .map(|(_, sizes)| sizes.clone())
            .unwrap_or_default()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        for s in self.shared.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn connect_pair(shared: &Arc<Shared>, client: TcpStream, server: TcpStream) {
    {
        let mut streams = shared.streams.lock().unwrap();
        streams.push(client.try_clone().unwrap());
        streams.push(server.try_clone().unwrap());
    }
    let cut_on_reply = Arc::new(AtomicBool::new(false));
    let hold = Arc::new(AtomicBool::new(false));
    // client -> server, command by command
    {
        let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (shared, cut, hold) = (shared.clone(), cut_on_reply.clone(), hold.clone());
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if shared.cut_off.load(Ordering::SeqCst) {
                    buf.clear();
                    continue;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(len) = command_len(&buf) {
                    let command: Vec<u8> = buf.drain(..len).collect();
                    record_watched(&shared, &command);
                    let out = match take_fault(&shared, &command) {
                        Some(Fault::Error) => REFUSED.to_vec(),
                        Some(Fault::LoseReply) => {
                            cut.store(true, Ordering::SeqCst);
                            command
                        }
                        Some(Fault::HoldReply) => {
                            hold.store(true, Ordering::SeqCst);
                            command
                        }
                        None => command,
                    };
                    if to.write_all(&out).is_err() {
                        return;
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    // server -> client, cut at the first reply after a LoseReply command
    {
        let (mut from, mut to) = (server, client);
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if cut_on_reply.load(Ordering::SeqCst) {
                    break;
                }
                if shared.cut_off.load(Ordering::SeqCst) {
                    continue;
                }
                while hold.load(Ordering::SeqCst)
                    && !shared.released.load(Ordering::SeqCst)
                    && !shared.stopped.load(Ordering::SeqCst)
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                if to.write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        });
    }
}

fn contains(command: &[u8], pattern: &[u8]) -> bool {
    command.windows(pattern.len()).any(|w| w == pattern)
}

fn record_watched(shared: &Shared, command: &[u8]) {
    for (pattern, sizes) in shared.watches.lock().unwrap().iter_mut() {
        if contains(command, pattern) {
            sizes.push(command.len());
        }
    }
}

fn take_fault(shared: &Shared, command: &[u8]) -> Option<Fault> {
    let mut rules = shared.rules.lock().unwrap();
    let rule = rules
        .iter_mut()
        .find(|r| r.times > 0 && contains(command, &r.pattern))?;
    rule.times -= 1;
    shared.injected.fetch_add(1, Ordering::SeqCst);
    Some(rule.fault)
}

/// The length of the first whole command in `buf`, if it holds one. Anything that is
/// not a RESP array (an inline command) is passed on as it is.
fn command_len(buf: &[u8]) -> Option<usize> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] != b'*' {
        return Some(buf.len());
    }
    let (n, mut at) = line_number(buf, 1)?;
    for _ in 0..n {
        if *buf.get(at)? != b'$' {
            return Some(buf.len());
        }
        let (len, next) = line_number(buf, at + 1)?;
        at = next + len + 2;
        if at > buf.len() {
            return None;
        }
    }
    Some(at)
}

/// The decimal number from `from` up to the next CRLF, and where the next line starts.
fn line_number(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let end = from + buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
    let n = std::str::from_utf8(&buf[from..end]).ok()?.parse().ok()?;
    Some((n, end + 2))
}

#[cfg(test)]
mod tests {
    use super::command_len;

    #[test]
    fn commands_are_cut_whole() {
        let two = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        assert_eq!(command_len(two), Some(20));
        assert_eq!(command_len(&two[..10]), None);
        assert_eq!(command_len(&two[20..]), Some(14));
        assert_eq!(command_len(b"PING\r\n"), Some(6));
    }
}
