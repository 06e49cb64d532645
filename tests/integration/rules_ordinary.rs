//! The default rules stay silent on an admin's ordinary activity, run for real: a key-based
//! `ssh` login into a real sshd (PAM, privilege separation) that runs commands, `sudo` by a
//! user in a sudoers drop-in, and a real package install and purge with dpkg. Each test creates its own throwaway user (removed afterwards, also
//! on failure), checks that the activity really happened (its outputs and its exec events in the
//! agent's output) and that none of its processes raised an alert.
//! Needs root, BPF, sudo and openssh-server (scripts/setup installs both, sshd never as a service).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{TempDir, wait_for};
use crate::rules::alerts;
use crate::watch::{Watch, pid_of};

const SSHD: &str = "/usr/sbin/sshd";

/// A throwaway local user with a home below /home (as `useradd -m` makes one); removed with its
/// home on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl TestUser {
    fn create(tag: &str) -> TestUser {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        // useradd takes at most 32 characters, lower case, digits and `-`; no `.` (a sudoers.d
        // file named after the user must not contain one).
        let name = format!("lgq-{tag}-{}-{}", std::process::id(), nanos % 100_000_000);
        let home = PathBuf::from("/home").join(&name);
        let o = Command::new("useradd")
            .args([
                "--create-home",
                "--user-group",
                "--shell",
                "/bin/bash",
                "--home-dir",
            ])
            .arg(&home)
            .arg(&name)
            .output()
            .expect("run useradd");
        assert!(
            o.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // From here on, the user is removed again whatever happens.
        let mut u = TestUser {
            name,
            uid: 0,
            gid: 0,
            home,
        };
        let id = |flag: &str| -> u32 {
            let o = Command::new("id")
                .arg(flag)
                .arg(&u.name)
                .output()
                .expect("id");
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .expect("a numeric id")
        };
        u.uid = id("-u");
        u.gid = id("-g");
        assert_ne!(u.uid, 0);
        u
    }

    /// What `id` prints for this user (uid, primary group, groups).
    fn id_line(&self) -> String {
        let o = Command::new("id").arg(&self.name).output().expect("id");
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Creates `rel` (a file or, ending in `/`, a directory) in the home, owned by the user.
    fn own(&self, rel: &str, content: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.home.join(rel.trim_end_matches('/'));
        if rel.ends_with('/') {
            std::fs::create_dir_all(&p).expect("mkdir in home");
        } else {
            std::fs::write(&p, content).expect("write in home");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        std::os::unix::fs::chown(&p, Some(self.uid), Some(self.gid)).expect("chown");
        p
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // -f: even if a process of the user is still running (a failed test).
        let o = Command::new("userdel")
            .args(["--remove", "--force"])
            .arg(&self.name)
            .output();
        if !matches!(&o, Ok(o) if o.status.success()) {
            eprintln!("userdel {} failed: {o:?}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A file that is removed on drop (the sudoers drop-in).
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A child process killed on drop (the test's sshd).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pids of the trees below `roots` (the roots included), from the agent's fork and exec
/// events (`process.parent.pid`); a tree deeper than `process.ancestry` (4) is followed whole.
fn tree(w: &Watch, roots: &[u64]) -> HashSet<u64> {
    let events = w.events.lock().expect("lock").clone();
    let mut set: HashSet<u64> = roots.iter().copied().collect();
    loop {
        let before = set.len();
        for v in events
            .iter()
            .filter(|v| v["type"] == "fork" || v["type"] == "exec")
        {
            if v["process"]["parent"]["pid"]
                .as_u64()
                .is_some_and(|p| set.contains(&p))
            {
                set.insert(pid_of(v));
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// Waits until every process of the trees below `roots` has exited (its `exit` event arrived),
/// `roots` included unless `but_roots`.
fn wait_trees_done(w: &Watch, roots: &[u64], but_roots: bool) {
    wait_for("the activity's exits", 10, || {
        let pids = tree(w, roots);
        let exited: HashSet<u64> = w
            .events
            .lock()
            .expect("lock")
            .iter()
            .filter(|v| v["type"] == "exit")
            .map(pid_of)
            .collect();
        pids.iter()
            .all(|p| (but_roots && roots.contains(p)) || exited.contains(p))
    });
}

/// The exec events of the trees below `roots`.
fn execs(w: &Watch, roots: &[u64]) -> Vec<Value> {
    let pids = tree(w, roots);
    w.events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| v["type"] == "exec" && pids.contains(&pid_of(v)))
        .cloned()
        .collect()
}

/// The exec of `name` with `args` after its name, by effective uid `uid`, in `execs`.
fn find_exec<'a>(execs: &'a [Value], name: &str, args: &[&str], uid: u32) -> Option<&'a Value> {
    execs.iter().find(|v| {
        v["process"]["name"] == name
            && v["process"]["user"]["id"] == uid.to_string().as_str()
            && v["process"]["args"].as_array().is_some_and(|a| {
                a.len() == args.len() + 1 && a[1..].iter().zip(args).all(|(x, y)| x == y)
            })
    })
}

/// No alert from a process of the trees below `roots` (by pid, or an ancestor's pid).
fn assert_no_alert(w: &Watch, roots: &[u64], what: &str) {
    std::thread::sleep(Duration::from_millis(300));
    let pids = tree(w, roots);
    let ours: Vec<Value> = alerts(w)
        .into_iter()
        .filter(|a| {
            pids.contains(&pid_of(a))
                || a["process"]["ancestry"].as_array().is_some_and(|x| {
                    x.iter()
                        .any(|p| p["pid"].as_u64().is_some_and(|p| roots.contains(&p)))
                })
        })
        .collect();
    assert!(ours.is_empty(), "{what} raised alerts: {ours:#?}");
}

fn hostname_file() -> String {
    std::fs::read_to_string("/etc/hostname").expect("read /etc/hostname")
}

fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "lg-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen (scripts/setup installs openssh-client)");
    assert!(
        o.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A free loopback TCP port (bound and released: the sshd binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A real sshd (its own config and host key, loopback, a free port, PAM as installs have it,
/// privilege separation as default) and a real key-based login by a fresh user that runs
/// `id; ls; cat /etc/hostname`: no alert from the sshd's process tree or the client's.
#[test]
fn root_sshd_login_raises_no_alert() {
    crate::common::require_root("root");
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing: run scripts/setup (it installs openssh-server, never as a service)"
    );
    let dir = TempDir::new("rules-sshd");
    let user = TestUser::create("ssh");
    let key = dir.path().join("user_key");
    keygen(&key);
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).expect("read the public key");
    user.own(".ssh/", "", 0o700);
    user.own(".ssh/authorized_keys", &pubkey, 0o600);
    let listed = "lg-in-home";
    user.own(listed, "", 0o644);
    let host_key = dir.path().join("host_ed25519");
    keygen(&host_key);
    // The privilege-separation directory (systemd's unit or the init script makes it).
    std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
    let pam = Path::new("/etc/pam.d/sshd").exists();
    let port = free_port();
    let config = dir.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
             UsePAM {pam}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin no\nAllowUsers {u}\nPrintMotd no\nLogLevel VERBOSE\n",
            hk = host_key.display(),
            pid = dir.path().join("sshd.pid").display(),
            pam = if pam { "yes" } else { "no" },
            u = user.name
        ),
    )
    .expect("write sshd_config");

    let w = Watch::start(&[]);
    let log = dir.path().join("sshd.log");
    let sshd = Killed(
        Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start sshd"),
    );
    let sshd_pid = u64::from(sshd.0.id());
    let listening = format!("Server listening on 127.0.0.1 port {port}");
    let end = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&listening)
    {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            Instant::now() < end,
            "sshd does not listen within 10 s: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let client = Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(&key)
        .args(["-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
        .arg(format!("{}@127.0.0.1", user.name))
        .arg("id; ls; cat /etc/hostname")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ssh (scripts/setup installs openssh-client)");
    let client_pid = u64::from(client.id());
    let o = client.wait_with_output().expect("wait for ssh");
    let sshd_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        o.status.success(),
        "the ssh login failed: {}\nsshd: {sshd_log}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{}{listed}\n{}", user.id_line(), hostname_file()),
        "the login's commands printed something else"
    );
    assert!(
        sshd_log.contains(&format!("Accepted publickey for {}", user.name)),
        "{sshd_log}"
    );

    // The login is over when every process below the test's sshd has exited (the connection's
    // monitor closes the PAM session last).
    let roots = [sshd_pid, client_pid];
    wait_trees_done(&w, &roots, true);
    let ex = execs(&w, &roots);
    let uid = user.uid;
    for (name, args) in [
        ("id", &[][..]),
        ("ls", &[][..]),
        ("cat", &["/etc/hostname"][..]),
    ] {
        let e = find_exec(&ex, name, args, uid).unwrap_or_else(|| {
            panic!("no exec of {name} by uid {uid} below the test's sshd; execs there: {ex:#?}")
        });
        assert!(
            e["process"]["ancestry"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["executable"] == SSHD)),
            "{name} not below an sshd: {e:#?}"
        );
    }
    assert_no_alert(&w, &roots, "an ssh login");
    drop(sshd);
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

/// An admin's `sudo`: a fresh user in a sudoers drop-in runs `sudo -n true`, `sudo -n cat
/// /etc/hostname` and `sudo -n -u root id`; no alert from that process tree.
#[test]
fn root_sudo_by_an_admin_raises_no_alert() {
    use std::os::unix::fs::PermissionsExt;
    crate::common::require_root("root");
    let sudo = Path::new("/usr/bin/sudo");
    assert!(
        sudo.exists(),
        "{} is missing: run scripts/setup (it installs sudo)",
        sudo.display()
    );
    let user = TestUser::create("sudo");
    // A drop-in as admins write them (sudo skips names with a `.`; the user's name has none).
    let dropin = Removed(PathBuf::from("/etc/sudoers.d").join(&user.name));
    std::fs::write(
        &dropin.0,
        format!("{} ALL=(ALL:ALL) NOPASSWD: ALL\n", user.name),
    )
    .expect("write the sudoers drop-in");
    std::fs::set_permissions(&dropin.0, std::fs::Permissions::from_mode(0o440)).expect("chmod");
    let o = Command::new("visudo")
        .args(["-c", "-q", "-f"])
        .arg(&dropin.0)
        .output()
        .expect("visudo");
    assert!(
        o.status.success(),
        "visudo: {}",
        String::from_utf8_lossy(&o.stdout)
    );

    let w = Watch::start(&[]);
    let child = Command::new("setpriv")
        .args([
            "--reuid",
            &user.name,
            "--regid",
            &user.name,
            "--init-groups",
            "--",
        ])
        .args([
            "/bin/bash",
            "-c",
            "sudo -n true && sudo -n cat /etc/hostname && sudo -n -u root id",
        ])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .current_dir(&user.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let root = u64::from(child.id());
    let o = child.wait_with_output().expect("wait");
    assert!(
        o.status.success(),
        "sudo failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "{}uid=0(root) gid=0(root) groups=0(root)\n",
            hostname_file()
        ),
        "the sudo commands printed something else"
    );
    wait_trees_done(&w, &[root], false);
    let ex = execs(&w, &[root]);
    for args in [
        &["-n", "true"][..],
        &["-n", "cat", "/etc/hostname"],
        &["-n", "-u", "root", "id"],
    ] {
        // sudo is setuid root: its exec runs with the effective uid 0, the user's real uid.
        let e = find_exec(&ex, "sudo", args, 0)
            .unwrap_or_else(|| panic!("no exec of sudo {args:?}; execs: {ex:#?}"));
        assert_eq!(
            e["process"]["real_user"]["id"],
            user.uid.to_string().as_str()
        );
    }
    for (name, args) in [("cat", &["/etc/hostname"][..]), ("id", &[][..])] {
        find_exec(&ex, name, args, 0)
            .unwrap_or_else(|| panic!("no exec of {name} as root below sudo; execs: {ex:#?}"));
    }
    assert_no_alert(&w, &[root], "sudo by an admin");
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}

/// Purges the test package on drop (also when the test fails).
struct Purged(&'static str);

impl Drop for Purged {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A real package install: `dpkg -i` of a package built here (a program in /usr/bin, a
/// library directory, a conffile in /etc, a systemd unit, a maintainer script that runs
/// ldconfig), the program run, then `dpkg --purge`. The watch sees dpkg's writes below the
/// persistence paths; none of them, nor the maintainer script's, raises an alert.
#[test]
fn root_a_real_package_install_raises_no_alert() {
    const PKG: &str = "lg-test-quiet";
    crate::common::require_root("root");
    let dir = TempDir::new("dpkg");
    let root = dir.path().join("pkg");
    for d in [
        "DEBIAN",
        "usr/bin",
        "usr/lib/lg-test-quiet",
        "etc",
        "lib/systemd/system",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let write = |rel: &str, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = root.join(rel);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    write(
        "DEBIAN/control",
        &format!(
            "Package: {PKG}\nVersion: 1.0\nArchitecture: all\nMaintainer: tests <t@example.com>\n\
             Description: linuxguard-agent's ordinary-activity test package\n"
        ),
        0o644,
    );
    write("DEBIAN/conffiles", "/etc/lg-test-quiet.conf\n", 0o644);
    write(
        "DEBIAN/postinst",
        "#!/bin/sh\nset -e\nldconfig\necho configured > /usr/lib/lg-test-quiet/state\n",
        0o755,
    );
    write(
        "DEBIAN/postrm",
        "#!/bin/sh\nset -e\nrm -f /usr/lib/lg-test-quiet/state\n",
        0o755,
    );
    write(
        "usr/bin/lg-test-quiet",
        "#!/bin/sh\necho lg-test-quiet-ran\n",
        0o755,
    );
    write("usr/lib/lg-test-quiet/data", "data\n", 0o644);
    write("etc/lg-test-quiet.conf", "x=1\n", 0o644);
    write(
        "lib/systemd/system/lg-test-quiet.service",
        "[Service]\nExecStart=/usr/bin/lg-test-quiet\n",
        0o644,
    );
    let deb = dir.path().join("pkg.deb");
    let o = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&deb)
        .output()
        .expect("dpkg-deb");
    assert!(
        o.status.success(),
        "dpkg-deb: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let w = Watch::start(&[]);
    let _purge = Purged(PKG);
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "dpkg -i {deb} && lg-test-quiet && dpkg --purge {PKG}",
            deb = deb.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    let pid = u64::from(child.id());
    let o = child.wait_with_output().expect("wait");
    assert!(
        o.status.success(),
        "the install failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("lg-test-quiet-ran"));
    wait_trees_done(&w, &[pid], false);
    // It really happened where the agent looks: dpkg's execs and its changes below /usr/bin.
    let pids = tree(&w, &[pid]);
    let ex = execs(&w, &[pid]);
    assert!(
        ex.iter().any(|v| v["process"]["name"] == "dpkg"),
        "no exec of dpkg: {ex:#?}"
    );
    assert!(
        ex.iter().any(|v| v["process"]["name"] == "ldconfig"),
        "the maintainer script did not run ldconfig: {ex:#?}"
    );
    let changes = w
        .events
        .lock()
        .expect("lock")
        .iter()
        .filter(|v| {
            v["type"] == "file"
                && pids.contains(&pid_of(v))
                && v["file"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/usr/bin/lg-test-quiet"))
        })
        .count();
    assert!(changes > 0, "no file event of dpkg's writes below /usr/bin");
    assert_no_alert(&w, &[pid], "a package install");
    let (status, err) = w.stop();
    assert!(status.success(), "watch failed: {err}");
}
