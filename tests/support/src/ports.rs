//! Free loopback ports.

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago. The kernel hands out ephemeral ports in
/// sequence, so a port just released is not handed to the next caller straight away.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}
