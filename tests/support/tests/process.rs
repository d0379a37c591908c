//! A peer killed with SIGKILL is "not running" only once it holds nothing: a restart on its
//! ports must then be able to bind them.
//!
//! The case that mattered (etcd in `cargo xtask chaos`, refused on restart with "address already
//! in use"): a multi-threaded peer whose main thread has exited, a zombie, while another thread
//! still runs and the process's sockets stay open. Played here by a Python process whose main
//! thread calls `pthread_exit` after starting a thread that never returns.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::Duration;

use countersign_test_support::process::{PeerProcess, process_state};
use countersign_test_support::wait;
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(10);

/// Binds a listener, prints its port, leaves a thread blocked for good, and ends the main thread
/// alone.
const SCRIPT: &str = "\
import ctypes, socket, threading
listener = socket.socket()
listener.bind(('127.0.0.1', 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
threading.Thread(target=threading.Event().wait).start()
ctypes.CDLL(None).pthread_exit(None)
";

#[tokio::test]
async fn a_zombie_main_thread_with_a_live_thread_is_still_running_and_holds_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("python.log");
    let mut peer = PeerProcess::spawn(
        "python",
        Path::new("python3"),
        &["-c".to_owned(), SCRIPT.to_owned()],
        &[],
        &log,
    )
    .await
    .unwrap();
    let pid = peer.pid().unwrap();
    let port: u16 = wait::until("the port in the log", WAIT, || async {
        std::fs::read_to_string(&log)
            .ok()
            .and_then(|text| text.lines().next().and_then(|line| line.parse().ok()))
    })
    .await
    .unwrap();
    wait::until_true("the main thread to be a zombie", WAIT, || async {
        process_state(pid) == Some('Z')
    })
    .await
    .unwrap();

    assert!(
        peer.is_running(),
        "a process whose main thread is a zombie but another thread runs is still running"
    );
    assert!(
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err(),
        "its listener still holds port {port}"
    );

    peer.signal(Signal::SIGKILL);
    wait::until_true("the killed peer to stop running", WAIT, || async {
        !peer.is_running()
    })
    .await
    .unwrap();
    assert!(
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok(),
        "once it is not running, port {port} is free again"
    );
    peer.stop(Duration::from_secs(5));
}
