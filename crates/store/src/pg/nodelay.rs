//! `TCP_NODELAY` for the database connections. sqlx 0.9 leaves Nagle's algorithm on for its
//! TCP connections, and a batch's statements are large (hundreds of kilobytes of bound
//! arrays): the tail of each one waited for the server's delayed ACK, up to 40 ms per
//! statement — about a quarter of a 100,000-workflow tick was spent so (docs/benchmarks.md).
//! sqlx exposes no socket option and no socket, so after every new connection this turns the
//! option on for each TCP socket of the process (harmless for the others: every client here
//! sends whole requests). Linux only; elsewhere it does nothing.
#![allow(unsafe_code)]

/// Sets `TCP_NODELAY` on every TCP socket the process holds. Returns how many accepted it.
#[cfg(target_os = "linux")]
pub fn tcp_nodelay_all() -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut set = 0;
    for entry in fds.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&on`, which lives across
        // the call, and touches no memory of ours otherwise. An fd that is not a TCP socket
        // (a Unix socket, or one closed and reused since it was listed) rejects the option
        // with an error, which is ignored: nothing else about the descriptor changes.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&on as *const libc::c_int).cast::<libc::c_void>(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            set += 1;
        }
    }
    set
}

/// Does nothing off Linux.
#[cfg(not(target_os = "linux"))]
pub fn tcp_nodelay_all() -> usize {
    0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{TcpListener, TcpStream};

    #[test]
    fn every_tcp_socket_of_the_process_gets_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!client.nodelay().unwrap());
        assert!(super::tcp_nodelay_all() >= 2);
        assert!(client.nodelay().unwrap());
        assert!(server.nodelay().unwrap());
    }
}
