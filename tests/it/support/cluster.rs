//! A RabbitMQ cluster of the test's own: three nodes of the installed
//! `rabbitmq-server` on this machine, each with its own node name, AMQP and
//! distribution ports and data folder, nodes 2 and 3 joined to node 1. The
//! machine's broker (`rabbit@…`, port 5672) is never touched: every command names
//! its node, and the nodes read neither `/etc/rabbitmq/rabbitmq-env.conf` nor
//! `/etc/rabbitmq/rabbitmq.conf`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::free_port;
use std::time::{Duration, Instant};

/// Where Debian's package keeps the server's own scripts: the ones in
/// `/usr/sbin` switch to the `rabbitmq` user, which cannot read the test's folder.
const BIN: &str = "/usr/lib/rabbitmq/bin";

/// How long a node may take to start.
const START_WITHIN: Duration = Duration::from_secs(90);

/// One node of the cluster.
struct Node {
    /// `hr…@localhost`.
    name: String,
    /// Its AMQP port on 127.0.0.1.
    port: u16,
    /// Its Erlang distribution port on 127.0.0.1.
    dist_port: u16,
    /// Its folder: config, data, logs, pid file.
    dir: PathBuf,
    /// The `rabbitmq-server` script running it, reaped once the node is killed.
    server: std::sync::Mutex<Option<std::process::Child>>,
}

/// RabbitMQ nodes of the test's own (three in one cluster, or separate ones),
/// stopped (killed) on drop.
pub struct RabbitCluster {
    nodes: Vec<Node>,
    home: tempfile::TempDir,
}

/// The plugins folder of the installed release.
fn plugins_dir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/rabbitmq/lib")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("plugins")))
        .find(|p| p.is_dir())
}

impl RabbitCluster {
    /// Starts three nodes and joins nodes 2 and 3 to node 1. `None` (the test is
    /// skipped, and says so) when RabbitMQ's server is not installed here, except
    /// in CI, where `.ci/run` installs it and the test must run.
    pub fn start() -> Option<Self> {
        Self::start_nodes(3, true)
    }

    /// `n` nodes that are not joined: separate brokers, as a relay may list
    /// behind separate load balancers. `None` as for [`start`](Self::start).
    pub fn start_separate(n: usize) -> Option<Self> {
        Self::start_nodes(n, false)
    }

    fn start_nodes(n: usize, join: bool) -> Option<Self> {
        if plugins_dir().is_none() || !Path::new(BIN).join("rabbitmq-server").exists() {
            assert!(
                !super::in_ci(),
                "CI=true but RabbitMQ's server is not under {BIN}: .ci/run installs it"
            );
            eprintln!("SKIPPED: no rabbitmq-server under {BIN}; CI runs this test");
            return None;
        }
        let home = tempfile::tempdir().expect("tempdir");
        // One cookie for the nodes and the CLI, not the machine broker's.
        let cookie = home.path().join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).expect("cookie");
        let mut permissions = std::fs::metadata(&cookie).expect("cookie").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o400);
        std::fs::set_permissions(&cookie, permissions).expect("cookie mode");
        std::fs::write(home.path().join("empty.conf"), "").expect("empty env file");
        let run = uuid::Uuid::new_v4().simple().to_string();
        let nodes: Vec<Node> = (1..=n)
            .map(|k| {
                let dir = home.path().join(format!("n{k}"));
                std::fs::create_dir_all(&dir).expect("node folder");
                let port = free_port();
                std::fs::write(
                    dir.join("rabbitmq.conf"),
                    format!(
                        "listeners.tcp.default = 127.0.0.1:{port}\nloopback_users.guest = true\n"
                    ),
                )
                .expect("node config");
                std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
                Node {
                    name: format!("hr{}n{k}@localhost", &run[..8]),
                    port,
                    dist_port: free_port(),
                    dir,
                    server: std::sync::Mutex::new(None),
                }
            })
            .collect();
        let cluster = Self { nodes, home };
        // The nodes start side by side; each takes seconds.
        for k in 0..n {
            cluster.spawn(k);
        }
        for k in 0..n {
            cluster.wait_started(k);
        }
        let first = cluster.nodes[0].name.clone();
        for k in (1..n).filter(|_| join) {
            cluster.ctl(k, &["stop_app"]);
            cluster.ctl(k, &["join_cluster", &first]);
            cluster.ctl(k, &["start_app"]);
        }
        Some(cluster)
    }

    /// The environment every server and CLI command of node `k` runs with.
    fn env(&self, k: usize) -> Vec<(&'static str, String)> {
        let node = &self.nodes[k];
        let at = |name: &str| node.dir.join(name).display().to_string();
        let path = format!("{BIN}:{}", std::env::var("PATH").unwrap_or_default());
        vec![
            ("HOME", self.home.path().display().to_string()),
            ("PATH", path),
            (
                "RABBITMQ_CONF_ENV_FILE",
                self.home.path().join("empty.conf").display().to_string(),
            ),
            ("RABBITMQ_NODENAME", node.name.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".to_owned()),
            ("RABBITMQ_NODE_PORT", node.port.to_string()),
            ("RABBITMQ_DIST_PORT", node.dist_port.to_string()),
            ("RABBITMQ_CONFIG_FILE", at("rabbitmq.conf")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", at("enabled_plugins")),
            ("RABBITMQ_MNESIA_BASE", at("mnesia")),
            ("RABBITMQ_LOG_BASE", at("log")),
            ("RABBITMQ_PID_FILE", at("beam.pid")),
            (
                "RABBITMQ_PLUGINS_DIR",
                plugins_dir().expect("plugins").display().to_string(),
            ),
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".to_owned(),
            ),
        ]
    }

    /// Starts node `k`'s server in the background (its own process group, so a
    /// signal to the test does not reach it).
    fn spawn(&self, k: usize) {
        let _ = std::fs::remove_file(self.nodes[k].dir.join("beam.pid"));
        let log = std::fs::File::create(self.nodes[k].dir.join("server.out")).expect("log");
        let mut command = Command::new(Path::new(BIN).join("rabbitmq-server"));
        command
            .env_clear()
            .envs(self.env(k))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start rabbitmq-server");
        *self.nodes[k].server.lock().expect("server") = Some(child);
    }

    /// Waits until node `k` runs its applications.
    fn wait_started(&self, k: usize) {
        let pid_file = self.nodes[k].dir.join("beam.pid");
        let deadline = Instant::now() + START_WITHIN;
        while !pid_file.exists() {
            assert!(
                Instant::now() < deadline,
                "node {} wrote no pid file: {}",
                k + 1,
                self.server_log(k)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let within = START_WITHIN.as_secs().to_string();
        self.ctl(
            k,
            &[
                "wait",
                pid_file.to_str().expect("path"),
                "--timeout",
                &within,
            ],
        );
    }

    fn server_log(&self, k: usize) -> String {
        std::fs::read_to_string(self.nodes[k].dir.join("server.out")).unwrap_or_default()
    }

    /// `rabbitmqctl -n NODE ARGS` on node `k`; fails the test if it fails.
    fn ctl(&self, k: usize, args: &[&str]) -> String {
        let out = Command::new(Path::new(BIN).join("rabbitmqctl"))
            .env_clear()
            .envs(self.env(k))
            .args(["-n", &self.nodes[k].name, "-q"])
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on node {}: {}{}",
            k + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `127.0.0.1:PORT` of node `k` (0-based).
    pub fn addr(&self, k: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[k].port)
    }

    /// The guest URL of node `k`.
    pub fn url(&self, k: usize) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr(k))
    }

    /// The operating system's process id of node `k`'s Erlang VM.
    fn pid(&self, k: usize) -> Option<i32> {
        std::fs::read_to_string(self.nodes[k].dir.join("beam.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Kills node `k` with SIGKILL, as a crash or a lost machine would.
    pub fn kill9(&self, k: usize) {
        let pid = self.pid(k).expect("the node's pid");
        // SAFETY: kill has no memory preconditions; the pid is the node's VM.
        let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(killed, 0, "kill -9 node {}", k + 1);
        let _ = std::fs::remove_file(self.nodes[k].dir.join("beam.pid"));
        self.reap(k);
    }

    /// Ends node `k`'s script (it ends with its VM anyway) and reaps it.
    fn reap(&self, k: usize) {
        let server = self.nodes[k]
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut server) = server {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Raises a memory alarm on node `k` (and, in a cluster, on every node: the
    /// alarm is the cluster's), so the broker blocks its publishers.
    pub fn block(&self, k: usize) {
        self.ctl(k, &["set_vm_memory_high_watermark", "0.0000001"]);
    }

    /// Starts node `k` again (after [`kill9`](Self::kill9)) and waits until it
    /// runs; it rejoins the cluster from its data folder.
    pub fn restart(&self, k: usize) {
        self.spawn(k);
        self.wait_started(k);
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for k in 0..self.nodes.len() {
            if let Some(pid) = self.pid(k) {
                // SAFETY: as in kill9; a node already gone makes this a no-op.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            self.reap(k);
        }
    }
}
