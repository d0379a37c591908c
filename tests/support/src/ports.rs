//! Free loopback ports, below the kernel's ephemeral range.
//!
//! A peer that a test kills and starts again (nats-server, etcd, kube-apiserver, the SPIRE
//! server, a registry) must bind the same port again. A port from the ephemeral range (what
//! binding port 0 returns) can be handed by the kernel, while the peer is down, to any outgoing
//! connection on the machine as its local port; the restart then fails with "address already in
//! use" (seen: etcd's peer port, during `cargo xtask chaos`). Ports below the range are never
//! given to outgoing connections, so only a listener can hold one, and [`free_port`] checks that
//! none does.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out (above the ports well-known services use).
const FLOOR: u16 = 10_000;
/// Where Linux's ephemeral range starts by default, when `/proc` does not say.
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;
/// Candidates tried before falling back to an ephemeral port.
const ATTEMPTS: u32 = 1_000;

/// The next candidate's offset. Each process starts at its own offset (from its id and the
/// clock), so parallel test processes walk different parts of the range, and a port this process
/// just released is not handed out again straight away.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A TCP port on 127.0.0.1 that was free a moment ago and that no outgoing connection can take
/// (see the module docs); an ephemeral one if the range below the ephemeral ports is unusable.
pub fn free_port() -> u16 {
    let low = ephemeral_low();
    if low > FLOOR + 1_000 {
        let span = u32::from(low - FLOOR);
        for _ in 0..ATTEMPTS {
            let offset = next_offset() % span;
            let candidate = FLOOR + u16::try_from(offset).unwrap_or(0);
            if TcpListener::bind((Ipv4Addr::LOCALHOST, candidate)).is_ok() {
                return candidate;
            }
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

fn next_offset() -> u32 {
    let mut current = NEXT.load(Ordering::Relaxed);
    loop {
        let value = if current == u32::MAX {
            start_offset()
        } else {
            current
        };
        let next = value.wrapping_add(1) % (u32::MAX - 1);
        match NEXT.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return value,
            Err(seen) => current = seen,
        }
    }
}

fn start_offset() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(nanos)
        % (u32::MAX - 1)
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_LOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        for port in &ports {
            assert!((FLOOR..low).contains(port), "{port} not in {FLOOR}..{low}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, *port)).expect("the port is free");
        }
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }
}
