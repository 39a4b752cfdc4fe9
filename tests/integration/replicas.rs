//! Two replicas of the real binary behind dnsdist (PROXY protocol v2, so each replica sees the
//! clients' own addresses), in a network namespace of their own: both enforce the segments,
//! a list change gives both the same new hash, one is killed under load and no answer is lost
//! beyond the client's retry, and the restarted one serves again with the same hash.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::harness::{Answered, FakeUpstream, encode, found, present_or_skip, question};

const BIN: &str = env!("CARGO_BIN_EXE_portvakt");
/// Fixed ports: the namespace is ours alone.
const BALANCER: &str = "127.0.0.1:5300";
const REPLICAS: [(u16, u16); 2] = [(5301, 9101), (5302, 9102)];
const STAFF: &str = "127.0.0.2";
const DEVICE: &str = "127.0.0.3";
/// The client's retry, as a stub resolver's: this many tries, each waiting this long.
const TRIES: u32 = 3;
const TRY_TIMEOUT: Duration = Duration::from_secs(1);

#[test]
fn two_replicas_behind_dnsdist_enforce_alike_and_survive_one_dying() {
    if !present_or_skip(found("dnsdist"), "dnsdist (Debian package dnsdist)")
        || !present_or_skip(found("ip"), "ip (Debian package iproute2)")
    {
        return;
    }
    // The namespace is this thread's: what it spawns (threads, processes) lives in it.
    let scenario = std::thread::spawn(|| {
        if enter_network_namespace() {
            scenario();
        }
    });
    if let Err(panic) = scenario.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Moves this thread into a new network namespace with loopback up.
fn enter_network_namespace() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: unshare has no memory effects; it changes only this thread's namespace.
    let entered = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
    if !present_or_skip(entered, "permission to create a network namespace (root)") {
        return false;
    }
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    assert!(up.is_ok_and(|s| s.success()), "loopback up");
    true
}

fn scenario() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let upstream = runtime.block_on(
        FakeUpstream::new()
            .with_a("app.example.test.", "192.0.2.10")
            .start(),
    );
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("tiktok.txt");
    std::fs::write(&list, "tiktok.com\n").unwrap();
    let configs: Vec<_> = (REPLICAS.iter())
        .enumerate()
        .map(|(i, &(dns, admin))| {
            let path = dir.path().join(format!("replica-{i}.toml"));
            std::fs::write(&path, config(dns, admin, &list, upstream.addr)).unwrap();
            path
        })
        .collect();
    let mut replicas: Vec<Process> = configs.iter().map(|c| replica(c)).collect();
    for &(_, admin) in &REPLICAS {
        ready(admin);
    }
    let conf = dir.path().join("dnsdist.conf");
    std::fs::write(&conf, dnsdist_config()).unwrap();
    let _balancer = Process::spawn(
        Command::new("dnsdist").args(["--supervised", "--disable-syslog", "-C"]),
        &conf,
    );
    let staff = Asker::new(STAFF);
    let device = Asker::new(DEVICE);
    let start = Instant::now();
    while staff.ask("www.tiktok.com.").is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "dnsdist answers");
    }

    // Both replicas enforce each segment: the balancer spreads the clients over both.
    for i in 0..40 {
        let blocked = staff.ask(&format!("q{i}.tiktok.com.")).expect("answered").0;
        assert_eq!(blocked.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(blocked.ede()[0].0, 15);
    }
    for _ in 0..40 {
        let allowed = device.ask("app.example.test.").expect("answered").0;
        assert_eq!(allowed.addresses(), ["192.0.2.10"]);
    }
    let stranger = Asker::new("127.0.0.9").ask("app.example.test.").unwrap().0;
    assert_eq!(stranger.metadata.response_code, ResponseCode::Refused);
    for &(_, admin) in &REPLICAS {
        let blocked = counter(admin, "blocked", "staff");
        let allowed = counter(admin, "allowed", "tiktok-devices");
        assert!(
            blocked >= 10.0 && allowed >= 10.0,
            "replica {admin}: staff blocked {blocked} of 40, devices allowed {allowed} of 40"
        );
    }

    // A list change reaches both: equal new hashes, and the new name blocked everywhere.
    let before = hashes();
    assert_eq!(before[0], before[1], "one policy, one hash");
    let edited = dir.path().join("tiktok.txt.new");
    std::fs::write(&edited, "tiktok.com\nnewapp.test\n").unwrap();
    std::fs::rename(&edited, &list).unwrap();
    let start = Instant::now();
    let after = loop {
        let now = hashes();
        if now[0] != before[0] && now[0] == now[1] {
            break now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "both reloaded: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for _ in 0..20 {
        let answer = staff.ask("www.newapp.test.").expect("answered").0;
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    }

    // One replica dies under load: every query is answered within the client's tries.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = [(STAFF, "tiktok.com."), (DEVICE, "app.example.test.")]
        .into_iter()
        .flat_map(|client| [client, client])
        .map(|(source, name)| {
            let stop = stop.clone();
            std::thread::spawn(move || load(source, name, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    replicas[0].kill();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let mut total = Load::default();
    for thread in load {
        total.add(thread.join().unwrap());
    }
    eprintln!("load while one replica died: {total:?}");
    assert!(total.asked > 400, "the load ran: {total:?}");
    assert_eq!(
        total.lost, 0,
        "no answer lost beyond the retries: {total:?}"
    );
    assert_eq!(total.wrong, 0, "every answer the segment's: {total:?}");
    assert!(
        total.retried > 0,
        "the kill hit queries in flight: {total:?}"
    );

    // Back: the same hash, and the balancer sends it queries again.
    replicas[0] = replica(&configs[0]);
    ready(REPLICAS[0].1);
    assert_eq!(
        hashes(),
        after,
        "the restarted replica enforces the same policy"
    );
    let (_, admin) = REPLICAS[0];
    let start = Instant::now();
    while counter(admin, "blocked", "staff") == 0.0 {
        staff.ask("www.tiktok.com.").expect("answered");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the balancer uses it again"
        );
    }
}

fn config(dns: u16, admin: u16, list: &Path, upstream: SocketAddr) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:{dns}"]
proxy_protocol_from = ["127.0.0.1/32"]
[admin]
listen = "127.0.0.1:{admin}"
[lists.tiktok]
files = [{list:?}]
[[segment]]
name = "staff"
networks = ["{STAFF}/32"]
block = ["tiktok"]
[[segment]]
name = "tiktok-devices"
networks = ["{DEVICE}/32"]
[[upstream]]
servers = ["{upstream}"]
timeout_ms = 700
"#
    )
}

/// Round robin, so both replicas carry load; a replica is down after one failed check.
fn dnsdist_config() -> String {
    let mut conf = format!(
        "setLocal(\"{BALANCER}\")\nsetACL({{\"127.0.0.0/8\"}})\nsetServerPolicy(roundrobin)\n"
    );
    for (i, (dns, _)) in REPLICAS.iter().enumerate() {
        conf.push_str(&format!(
            "newServer({{address=\"127.0.0.1:{dns}\", name=\"replica-{i}\", \
             useProxyProtocol=true, checkInterval=1, maxCheckFailures=1, checkTimeout=300}})\n"
        ));
    }
    conf
}

/// A child process killed when dropped.
struct Process(Child);

impl Process {
    fn spawn(command: &mut Command, config: &Path) -> Process {
        let child = (command.arg(config))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Process(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL: no goodbye
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn replica(config: &Path) -> Process {
    Process::spawn(
        Command::new(BIN).args(["serve", "--log-level", "warn", "--config"]),
        config,
    )
}

fn http_get(admin: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", admin)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: replica\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    (response.split(' ').nth(1) == Some("200")).then_some(response)
}

fn ready(admin: u16) {
    let start = Instant::now();
    while http_get(admin, "/readyz").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replica {admin} ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(admin: u16, prefix: &str) -> Vec<(String, f64)> {
    let body = http_get(admin, "/metrics").expect("a scrape");
    (body.lines())
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn counter(admin: u16, decision: &str, segment: &str) -> f64 {
    let series = format!(
        "portvakt_queries_total{{decision=\"{decision}\",segment=\"{segment}\",transport=\"udp\"}}"
    );
    metric(admin, &series).first().map_or(0.0, |(_, v)| *v)
}

/// Each replica's policy hash.
fn hashes() -> Vec<String> {
    (REPLICAS.iter())
        .map(|&(_, admin)| {
            let info = metric(admin, "portvakt_policy_info{hash=\"");
            assert_eq!(info.len(), 1, "{info:?}");
            info[0].0.split('"').nth(1).unwrap().to_owned()
        })
        .collect()
}

/// A stub resolver at one source address, asking the balancer.
struct Asker {
    source: &'static str,
}

impl Asker {
    fn new(source: &'static str) -> Asker {
        Asker { source }
    }

    /// The answer and the tries it took, or `None` after `TRIES`.
    fn ask(&self, name: &str) -> Option<(Message, u32)> {
        let socket = UdpSocket::bind((self.source, 0)).unwrap();
        socket.set_read_timeout(Some(TRY_TIMEOUT)).unwrap();
        let mut query = question(name, RecordType::A, true);
        query.metadata.id = rand::random();
        let wire = encode(&query);
        let mut buf = [0u8; 4096];
        for tried in 1..=TRIES {
            socket.send_to(&wire, BALANCER).unwrap();
            let deadline = Instant::now() + TRY_TIMEOUT;
            while Instant::now() < deadline {
                let Ok(len) = socket.recv(&mut buf) else {
                    break;
                };
                // An answer to an earlier try counts as well: same question, same ID.
                if let Ok(reply) = Message::from_vec(&buf[..len])
                    && reply.metadata.id == query.metadata.id
                {
                    return Some((reply, tried));
                }
            }
        }
        None
    }
}

#[derive(Debug, Default)]
struct Load {
    asked: u32,
    retried: u32,
    lost: u32,
    wrong: u32,
}

impl Load {
    fn add(&mut self, other: Load) {
        self.asked += other.asked;
        self.retried += other.retried;
        self.lost += other.lost;
        self.wrong += other.wrong;
    }
}

/// Asks for `name` from `source` every 5 ms until `stop` (at most 2,000 queries).
fn load(source: &'static str, zone: &str, stop: &AtomicBool) -> Load {
    let asker = Asker::new(source);
    let mut load = Load::default();
    while !stop.load(Ordering::Relaxed) && load.asked < 2_000 {
        let name = match source {
            STAFF => format!("v{}.{zone}", load.asked),
            _ => zone.to_owned(),
        };
        load.asked += 1;
        match asker.ask(&name) {
            None => load.lost += 1,
            Some((answer, tries)) => {
                load.retried += u32::from(tries > 1);
                let right = match source {
                    STAFF => answer.metadata.response_code == ResponseCode::NXDomain,
                    _ => answer.addresses() == ["192.0.2.10"],
                };
                load.wrong += u32::from(!right);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    load
}
