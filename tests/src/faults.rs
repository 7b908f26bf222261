//! Backends that fail on a script, for the outage tests: a [`Gate`] on a loopback port in front
//! of a receiver from [`crate::receivers`], both reading one [`Faults`] switch.
//!
//! - [`Fault::Refuse`]: nothing listens on the gate's port (connections are refused) and every
//!   open connection is reset.
//! - [`Fault::Reset`]: the gate accepts, then resets each connection at once.
//! - [`Fault::Unavailable`] and [`Fault::Throttled`]: the gate forwards and the receiver answers
//!   each request with 503 or 429 (HTTP, with `Retry-After`), or gRPC's UNAVAILABLE or
//!   RESOURCE_EXHAUSTED, keeping nothing.
//! - [`Fault::None`]: forwarded and kept.
//!
//! Before the gate cuts connections it makes the receiver refuse for a moment, so that a request
//! the receiver kept always has its answer delivered: a duplicate then means the agent sent twice
//! what was acknowledged, never that the test lost an acknowledgement.

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    None = 0,
    Refuse = 1,
    Unavailable = 2,
    Throttled = 3,
    Reset = 4,
}

/// The switch a gate and its receiver share.
#[derive(Clone, Default)]
pub struct Faults(Arc<AtomicU8>);

impl Faults {
    pub fn get(&self) -> Fault {
        match self.0.load(Ordering::SeqCst) {
            1 => Fault::Refuse,
            2 => Fault::Unavailable,
            3 => Fault::Throttled,
            4 => Fault::Reset,
            _ => Fault::None,
        }
    }

    fn set(&self, fault: Fault) {
        self.0.store(fault as u8, Ordering::SeqCst);
    }

    /// The HTTP status line and headers a receiver answers with now, or `None` when it keeps the
    /// request.
    pub fn http_refusal(&self) -> Option<&'static str> {
        match self.get() {
            Fault::Unavailable | Fault::Refuse | Fault::Reset => {
                Some("503 Service Unavailable\r\nRetry-After: 1")
            }
            Fault::Throttled => Some("429 Too Many Requests\r\nRetry-After: 1"),
            Fault::None => None,
        }
    }

    /// The gRPC status a receiver answers with now, or `None` when it keeps the request.
    pub fn grpc_refusal(&self) -> Option<tonic::Status> {
        match self.get() {
            Fault::Unavailable | Fault::Refuse | Fault::Reset => {
                Some(tonic::Status::unavailable("scripted outage"))
            }
            Fault::Throttled => Some(tonic::Status::resource_exhausted("scripted throttling")),
            Fault::None => None,
        }
    }
}

/// A TCP gate on `127.0.0.1:addr.port()` forwarding to an upstream receiver, failing as its
/// [`Faults`] say.
pub struct Gate {
    pub addr: SocketAddr,
    pub faults: Faults,
    open: Arc<Mutex<HashMap<u64, TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Gate {
    /// A gate forwarding to `upstream`; the receiver there should read the same `faults`.
    pub fn start(upstream: SocketAddr, faults: Faults) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate");
        let addr = listener.local_addr().expect("gate address");
        let open: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Gate {
            addr,
            faults: faults.clone(),
            open: open.clone(),
            stop: stop.clone(),
        };
        thread::spawn(move || accept_loop(listener, addr, upstream, faults, open, stop));
        gate
    }

    /// Switches to `fault`. Leaving service (to refuse or reset connections), the receiver first
    /// refuses for a moment, so that answers to what it kept are delivered before connections
    /// are cut.
    pub fn set(&self, fault: Fault) {
        if matches!(fault, Fault::Refuse | Fault::Reset) {
            if matches!(self.faults.get(), Fault::None) {
                self.faults.set(Fault::Unavailable);
                thread::sleep(Duration::from_millis(500));
            }
            self.faults.set(fault);
            let open: Vec<TcpStream> = self
                .open
                .lock()
                .expect("lock")
                .drain()
                .map(|(_, s)| s)
                .collect();
            for stream in open {
                reset(&stream);
            }
        } else {
            self.faults.set(fault);
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Closes `stream` with a reset (SO_LINGER 0) rather than a FIN.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger` (a valid struct of the size passed) during the call only;
    // the descriptor is owned by `stream`, alive for the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    faults: Faults,
    open: Arc<Mutex<HashMap<u64, TcpStream>>>,
    stop: Arc<AtomicBool>,
) {
    let next_id = AtomicU64::new(0);
    let mut listener = Some(listener);
    while !stop.load(Ordering::SeqCst) {
        let fault = faults.get();
        if fault == Fault::Refuse {
            // Closing the listening socket: connects are refused by the kernel.
            listener = None;
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        let Some(l) = listener.as_ref() else {
            // The port is this gate's: std sets SO_REUSEADDR, so connections in TIME_WAIT do not
            // keep it.
            match TcpListener::bind(addr) {
                Ok(l) => listener = Some(l),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
            continue;
        };
        l.set_nonblocking(true).expect("non-blocking listener");
        let client = match l.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        if faults.get() == Fault::Reset {
            reset(&client);
            continue;
        }
        let Ok(server) = TcpStream::connect(upstream) else {
            reset(&client);
            continue;
        };
        let id = next_id.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = client.try_clone() {
            open.lock().expect("lock").insert(id, c);
        }
        let (Ok(client_r), Ok(server_w)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let open_up = open.clone();
        thread::spawn(move || {
            pipe(client_r, server_w);
            open_up.lock().expect("lock").remove(&id);
        });
        thread::spawn(move || pipe(server, client));
    }
}

/// Copies `from` to `to` until either end closes, then shuts both down.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
