//! The proxy against plain UDP sockets: each impairment really happens, with generous bounds.
use super::*;

/// An upstream that echoes every datagram, and a client socket.
struct Rig {
    proxy: Proxy,
    client: UdpSocket,
    _echo: EchoServer,
}

struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl EchoServer {
    fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(TICK)).unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
            addr,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rig() -> Rig {
    let echo = EchoServer::start();
    let proxy = Proxy::start(echo.addr, 7).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(proxy.addr()).unwrap();
    Rig {
        proxy,
        client,
        _echo: echo,
    }
}

/// Sends `n` numbered datagrams (paced a little, so no socket buffer overflows) and collects
/// the echoes that arrive within `wait` of the last send, or until `enough` have.
fn round_trip(r: &Rig, n: u32, wait: Duration, enough: usize) -> Vec<u32> {
    for i in 0..n {
        r.client.send(&i.to_be_bytes()).unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 16];
    while Instant::now() < deadline && got.len() < enough {
        r.client
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        if let Ok(4) = r.client.recv(&mut buf) {
            got.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
        }
    }
    got
}

#[test]
fn no_impairment_forwards_everything_both_ways() {
    let r = rig();
    let mut got = round_trip(&r, 200, Duration::from_secs(5), 200);
    got.sort_unstable();
    assert_eq!(got, (0..200).collect::<Vec<_>>());
}

#[test]
fn total_loss_drops_everything() {
    let r = rig();
    r.proxy.set_dir(
        Dir::Up,
        Impairment {
            loss: 1.0,
            ..Impairment::default()
        },
    );
    assert!(round_trip(&r, 100, Duration::from_millis(500), usize::MAX).is_empty());
    assert_eq!(r.proxy.stats().lost, 100);
}

#[test]
fn certain_duplication_doubles_each_way() {
    let r = rig();
    r.proxy.set(Impairment {
        dup: 1.0,
        ..Impairment::default()
    });
    let got = round_trip(&r, 50, Duration::from_secs(5), 200);
    // Doubled on the way up, and each copy doubled again on the way back.
    assert_eq!(got.len(), 200, "{:?}", r.proxy.stats());
    for i in 0..50 {
        assert_eq!(got.iter().filter(|&&g| g == i).count(), 4);
    }
}

#[test]
fn blackout_drops_everything_until_it_ends() {
    let r = rig();
    r.proxy.blackout(true);
    assert!(round_trip(&r, 50, Duration::from_millis(500), usize::MAX).is_empty());
    assert_eq!(r.proxy.stats().blacked_out, 50);
    r.proxy.blackout(false);
    assert_eq!(round_trip(&r, 50, Duration::from_secs(5), 50).len(), 50);
}

#[test]
fn a_blackout_of_one_direction_drops_replies_only() {
    let r = rig();
    r.proxy.blackout_dir(Dir::Down, true);
    assert!(round_trip(&r, 20, Duration::from_millis(500), usize::MAX).is_empty());
    let s = r.proxy.stats();
    // All 20 went up and were echoed; the 20 echoes were dropped.
    assert_eq!((s.blacked_out, s.sent), (20, 20), "{s:?}");
}

#[test]
fn delay_holds_each_datagram_at_least_the_delay() {
    let r = rig();
    r.proxy.set_dir(
        Dir::Up,
        Impairment {
            delay: Duration::from_millis(200),
            ..Impairment::default()
        },
    );
    let t = Instant::now();
    r.client.send(&1u32.to_be_bytes()).unwrap();
    r.client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(r.client.recv(&mut buf).unwrap(), 4);
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn reordering_and_jitter_reorder_but_keep_every_datagram() {
    let r = rig();
    r.proxy.set_dir(
        Dir::Up,
        Impairment {
            reorder: 0.3,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(3),
            ..Impairment::default()
        },
    );
    let got = round_trip(&r, 200, Duration::from_secs(5), 200);
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..200).collect::<Vec<_>>());
    assert_ne!(got, sorted, "nothing was reordered");
    assert!(r.proxy.stats().reordered > 0);
}

#[test]
fn partial_loss_with_a_seed_is_roughly_the_rate() {
    let r = rig();
    r.proxy.set_dir(
        Dir::Up,
        Impairment {
            loss: 0.5,
            ..Impairment::default()
        },
    );
    let got = round_trip(&r, 400, Duration::from_secs(1), usize::MAX);
    // Generous: a fair coin over 400 throws lands in 120..=280 all but never.
    assert!((120..=280).contains(&got.len()), "{}", got.len());
    assert_eq!(r.proxy.stats().lost as usize + got.len(), 400);
}

#[test]
fn specs_parse_percentages_fractions_and_units() {
    let imp: Impairment = "loss=5%, delay=150ms,jitter=0.03s,dup=0.01"
        .parse()
        .unwrap();
    assert_eq!(
        imp,
        Impairment {
            loss: 0.05,
            dup: 0.01,
            reorder: 0.0,
            delay: Duration::from_millis(150),
            jitter: Duration::from_millis(30),
        }
    );
    assert_eq!("".parse::<Impairment>().unwrap(), Impairment::default());
    for (bad, says) in [
        ("loss=150%", "0%..=100%"),
        ("delay=150", "unit"),
        ("delay=11s", "0 to 10 s"),
        ("lag=1ms", "unknown key"),
        ("loss", "key=value"),
    ] {
        let e = bad.parse::<Impairment>().unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
