//! Decoding: ring-buffer records (bytes laid out as bpf/events.h) into owned, typed Rust values.
//!
//! Records are read only through the skeleton's generated `types::*` (never a hand-written
//! mirror of a C struct): the size is checked, then the bytes are copied into the generated type.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::sensor::skel::{consts, types};

/// Record type numbers: `enum lg_type` in bpf/events.h, through the generated type.
pub const LG_EXEC: u32 = types::lg_type::LG_EXEC.0;
pub const LG_EXIT: u32 = types::lg_type::LG_EXIT.0;
pub const LG_FORK: u32 = types::lg_type::LG_FORK.0;
pub const LG_CONNECT: u32 = types::lg_type::LG_CONNECT.0;
pub const LG_ACCEPT: u32 = types::lg_type::LG_ACCEPT.0;
pub const LG_CREDS: u32 = types::lg_type::LG_CREDS.0;
pub const LG_PTRACE: u32 = types::lg_type::LG_PTRACE.0;
pub const LG_BPF_LOAD: u32 = types::lg_type::LG_BPF_LOAD.0;
pub const LG_MEMFD: u32 = types::lg_type::LG_MEMFD.0;
pub const LG_NAMESPACE: u32 = types::lg_type::LG_NAMESPACE.0;
pub const LG_MOUNT: u32 = types::lg_type::LG_MOUNT.0;
pub const LG_MODULE_LOAD: u32 = types::lg_type::LG_MODULE_LOAD.0;
pub const LG_FILE: u32 = types::lg_type::LG_FILE.0;
pub const LG_DNS: u32 = types::lg_type::LG_DNS.0;
pub const LG_CONNECTION_CLOSE: u32 = types::lg_type::LG_CONNECTION_CLOSE.0;
/// One past the largest record type: the length of per-type counter arrays.
pub const LG_TYPE_MAX: usize = types::lg_type::LG_TYPE_MAX.0 as usize;

/// The `"type"` name of each record type, indexed by type number (0 is unused): the
/// `enum lg_type` member's name (`LG_BPF_LOAD` → `bpf_load`), generated from bpf/events.h.
pub const TYPE_NAMES: [&str; LG_TYPE_MAX] = consts::LG_RECORD_NAMES;

/// Every event `"type"` the kernel's records become, in output order: one per record type,
/// except that a `creds` record is reported as `setuid` or `capset` by the call that made it.
pub const EVENT_TYPES: [&str; 16] = [
    "exec",
    "exit",
    "fork",
    "connect",
    "accept",
    "setuid",
    "capset",
    "ptrace",
    "bpf_load",
    "memfd",
    "namespace",
    "mount",
    "module_load",
    "file",
    "dns",
    "connection_close",
];

/// Why a record could not be decoded (counted as a user-space drop).
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short { len: usize },
    UnknownType(u32),
    WrongSize { ty: u32, len: usize, want: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short { len } => write!(f, "record of {len} bytes is too short"),
            DecodeError::UnknownType(t) => write!(f, "unknown record type {t}"),
            DecodeError::WrongSize { ty, len, want } => {
                write!(f, "record type {ty} has {len} bytes, expected {want}")
            }
        }
    }
}

/// The task a record belongs to (from `struct lg_task`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Task {
    pub ts_boot_ns: u64,
    pub start_boot_ns: u64,
    pub cgroup_id: u64,
    /// The memory controller's cgroup v1 id (hybrid/legacy hosts), else 0.
    pub memcg_v1_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub auid: u32,
    pub pidns: u32,
    pub mntns: u32,
    pub comm: Comm,
}

/// Bytes of a task's `comm` (`TASK_COMM_LEN`, NUL included).
const COMM_LEN: usize = consts::LG_COMM_LEN;

/// A task's `comm`, kept inline as the kernel's bytes: no allocation per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
    len: u8,
}

impl Comm {
    /// Up to the first NUL of `raw` (at most `COMM_LEN` bytes).
    pub fn new(raw: &[u8]) -> Comm {
        let raw = &raw[..raw.len().min(COMM_LEN)];
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let mut bytes = [0; COMM_LEN];
        bytes[..len].copy_from_slice(&raw[..len]);
        Comm {
            bytes,
            len: len as u8,
        }
    }

    /// As UTF-8, lossily (borrowed unless the name holds invalid bytes).
    pub fn as_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes[..usize::from(self.len)])
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Comm {
        Comm::new(s.as_bytes())
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub task: Task,
    pub old_pid: u32,
    /// The path as given to execve().
    pub filename: String,
    /// The executable's absolute path from the kernel's dentry walk ("" if unknown). When the
    /// walk stopped before the root (`path_truncated`), it starts with [`TRUNCATED_PATH`]
    /// instead of `/`: never a plausible complete path.
    pub path: String,
    pub path_truncated: bool,
    pub args: Vec<String>,
    pub args_truncated: bool,
    pub memfd: bool,
    /// Bit i: descriptor i (0 stdin, 1 stdout, 2 stderr) was a socket at exec.
    pub stdio_sockets: u8,
    pub exe_nlink: u32,
    /// The executable's file: inode number and device (`stat`'s `st_dev` encoding), 0 if
    /// unknown.
    pub exe_ino: u64,
    pub exe_dev: u64,
}

/// The start of an executable path the kernel walk could not finish (too deep or too long):
/// what follows is the end of the path, its first components are missing.
pub const TRUNCATED_PATH: &str = "...";

/// A kernel `dev_t` (major << 20 | minor) in the encoding `stat` reports (`new_encode_dev`).
pub fn user_dev(kdev: u32) -> u64 {
    let (major, minor) = (u64::from(kdev >> 20), u64::from(kdev & 0xf_ffff));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub task: Task,
    pub exit_code: i32,
    pub signal: u32,
    pub core_dumped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    pub task: Task,
    pub child_pid: u32,
    pub child_start_boot_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sock {
    pub task: Task,
    /// true: inbound (accept); false: outbound (connect).
    pub inbound: bool,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// connect: 0 or -errno; accept: the new fd.
    pub ret: i32,
}

/// A task's credentials, as events report them (`process.credentials.old`/`new`): the ids as
/// numbers, the capability sets as `0x`-prefixed hex strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Creds {
    pub uid: u32,
    pub euid: u32,
    pub suid: u32,
    pub fsuid: u32,
    pub gid: u32,
    pub egid: u32,
    pub sgid: u32,
    pub fsgid: u32,
    #[serde(serialize_with = "hex")]
    pub cap_effective: u64,
    #[serde(serialize_with = "hex")]
    pub cap_permitted: u64,
    #[serde(serialize_with = "hex")]
    pub cap_inheritable: u64,
}

/// A capability set as `0x`-prefixed lower-case hex (`0x1ffffffffff`).
fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#x}"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredChange {
    pub task: Task,
    pub syscall: &'static str,
    pub old: Creds,
    pub new: Creds,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ptrace {
    pub task: Task,
    pub request: &'static str,
    /// A host pid when `target_host`, else the number the tracer passed in its own pid
    /// namespace (a failed attach from inside a container).
    pub target_pid: u32,
    pub target_host: bool,
    pub ret: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfLoad {
    pub task: Task,
    pub prog_type: u32,
    pub prog_name: String,
    pub insn_cnt: u32,
    pub ret: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memfd {
    pub task: Task,
    pub name: String,
    pub flags: u32,
    pub ret: i32,
}

/// A task's namespaces as inode numbers (0: unknown); `pid` and `time` are where its children
/// go (`pid_for_children`, `time_for_children`), which is what setns/unshare change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct NsInodes {
    pub mnt: u32,
    pub uts: u32,
    pub ipc: u32,
    pub net: u32,
    pub pid: u32,
    pub user: u32,
    pub cgroup: u32,
    pub time: u32,
}

impl NsInodes {
    /// Each namespace's name (as in /proc/PID/ns) and inode.
    pub fn named(&self) -> [(&'static str, u32); 8] {
        [
            ("mnt", self.mnt),
            ("uts", self.uts),
            ("ipc", self.ipc),
            ("net", self.net),
            ("pid", self.pid),
            ("user", self.user),
            ("cgroup", self.cgroup),
            ("time", self.time),
        ]
    }
}

/// The namespace names of a CLONE_NEW* mask (setns's nstype too), in `NsInodes` order.
pub fn clone_new_names(flags: u64) -> Vec<&'static str> {
    use nix::libc as l;
    [
        (l::CLONE_NEWNS, "mnt"),
        (l::CLONE_NEWUTS, "uts"),
        (l::CLONE_NEWIPC, "ipc"),
        (l::CLONE_NEWNET, "net"),
        (l::CLONE_NEWPID, "pid"),
        (l::CLONE_NEWUSER, "user"),
        (l::CLONE_NEWCGROUP, "cgroup"),
        (0x80, "time"), // CLONE_NEWTIME (libc does not export it for every target)
    ]
    .into_iter()
    .filter(|(bit, _)| flags & (*bit as u32 as u64) != 0)
    .map(|(_, name)| name)
    .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceChange {
    pub task: Task,
    /// `setns`, `unshare`, `clone` or `clone3`.
    pub syscall: &'static str,
    /// CLONE_NEW* asked for (setns: its nstype argument, 0 = any).
    pub flags: u64,
    /// 0, the child's pid (clone), or -errno.
    pub ret: i32,
    pub from: NsInodes,
    /// After the call (clone: the child's); all 0 when unknown.
    pub to: NsInodes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub task: Task,
    /// `mount`, `umount`, `move_mount`, `fsmount`, `open_tree` or `pivot_root`.
    pub syscall: &'static str,
    pub flags: u64,
    pub ret: i32,
    pub source: String,
    pub target: String,
    pub fstype: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoad {
    pub task: Task,
    /// `init_module` or `finit_module`.
    pub syscall: &'static str,
    pub ret: i32,
    pub flags: u32,
    /// init_module: bytes of the image.
    pub len: u64,
    /// From `module:module_load` where the kernel has it ("" otherwise).
    pub name: String,
    pub params: String,
    /// finit_module: the file as the kernel resolved it ("" for init_module).
    pub path: String,
    pub path_truncated: bool,
}

/// What a file event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Read,
    Write,
    Create,
    Rename,
    Delete,
    Chmod,
    Mkdir,
    Link,
    Symlink,
    /// A Unix socket connect() to a socket file on the connect list.
    Connect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub task: Task,
    pub op: FileOp,
    /// The fd (opens), 0, or -errno.
    pub ret: i32,
    /// chmod: the mode asked for.
    pub mode: u32,
    /// Absolute: the kernel's (opens, fchmod), or composed from the caller's string.
    pub path: String,
    /// rename: the old name; link: the existing file; symlink: the target as written.
    pub old_path: String,
    /// The path (or part of it) is the caller's string, not the kernel's file.
    pub from_caller: bool,
    pub truncated: bool,
    pub watch_read: bool,
    pub watch_write: bool,
    pub watch_connect: bool,
}

/// A UDP datagram sent to port 53 (its question is parsed when the event is built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    pub task: Task,
    pub src: IpAddr,
    /// 0 when the socket was not bound yet.
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// Bytes the caller sent.
    pub len: u32,
    /// The first bytes of the message (at most `LG_DNS_LEN`).
    pub payload: Vec<u8>,
}

/// A TCP connection's end, with the process that owned it (as at connect/accept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnClose {
    /// The owner; `ts_boot_ns` is the end.
    pub task: Task,
    pub inbound: bool,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// Boot-clock ns at connect()/accept().
    pub start_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// One decoded kernel record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Exec(Exec),
    Exit(Exit),
    Fork(Fork),
    Sock(Sock),
    Creds(CredChange),
    Ptrace(Ptrace),
    BpfLoad(BpfLoad),
    Memfd(Memfd),
    Namespace(NamespaceChange),
    Mount(Mount),
    ModuleLoad(ModuleLoad),
    File(FileChange),
    Dns(DnsQuery),
    ConnectionClose(ConnClose),
}

impl Record {
    pub fn task(&self) -> &Task {
        match self {
            Record::Exec(e) => &e.task,
            Record::Exit(e) => &e.task,
            Record::Fork(e) => &e.task,
            Record::Sock(e) => &e.task,
            Record::Creds(e) => &e.task,
            Record::Ptrace(e) => &e.task,
            Record::BpfLoad(e) => &e.task,
            Record::Memfd(e) => &e.task,
            Record::Namespace(e) => &e.task,
            Record::Mount(e) => &e.task,
            Record::ModuleLoad(e) => &e.task,
            Record::File(e) => &e.task,
            Record::Dns(e) => &e.task,
            Record::ConnectionClose(e) => &e.task,
        }
    }
}

/// Marker for the generated record types: plain old data (integers and arrays only, see
/// bpf/events.h), so any byte pattern of the right size is a valid value.
///
/// # Safety
/// Implement only for generated `types::*` structs that hold nothing but integers and arrays.
unsafe trait Pod: Default {}
// SAFETY: bpf/events.h declares these with fixed-width integers and arrays only.
unsafe impl Pod for types::lg_exec {}
// SAFETY: as above.
unsafe impl Pod for types::lg_exit {}
// SAFETY: as above.
unsafe impl Pod for types::lg_fork {}
// SAFETY: as above.
unsafe impl Pod for types::lg_sock {}
// SAFETY: as above.
unsafe impl Pod for types::lg_creds_event {}
// SAFETY: as above.
unsafe impl Pod for types::lg_ptrace {}
// SAFETY: as above.
unsafe impl Pod for types::lg_bpf_load {}
// SAFETY: as above.
unsafe impl Pod for types::lg_memfd {}
// SAFETY: as above.
unsafe impl Pod for types::lg_namespace {}
// SAFETY: as above.
unsafe impl Pod for types::lg_mount {}
// SAFETY: as above.
unsafe impl Pod for types::lg_module_load {}
// SAFETY: as above.
unsafe impl Pod for types::lg_file {}
// SAFETY: as above.
unsafe impl Pod for types::lg_dns {}
// SAFETY: as above.
unsafe impl Pod for types::lg_connection_close {}

/// `bytes` as a `T` when the length is exactly `size_of::<T>()`: borrowed in place when the
/// bytes are aligned for `T` (ring-buffer records always are: libbpf hands out 8-byte aligned
/// samples), copied otherwise.
fn read<T: Pod + Clone>(ty: u32, bytes: &[u8]) -> Result<Cow<'_, T>, DecodeError> {
    let want = std::mem::size_of::<T>();
    // The ring buffer rounds records up to 8 bytes; libbpf reports the reserved size.
    if bytes.len() != want {
        return Err(DecodeError::WrongSize {
            ty,
            len: bytes.len(),
            want,
        });
    }
    let ptr = bytes.as_ptr().cast::<T>();
    if ptr.is_aligned() {
        // SAFETY: `T: Pod` accepts any bit pattern; `ptr` is aligned for `T` (checked) and
        // points at exactly size_of::<T>() initialized bytes (checked above) that live, unchanged,
        // as long as the borrow of `bytes` the result carries.
        return Ok(Cow::Borrowed(unsafe { &*ptr }));
    }
    let mut out = T::default();
    // SAFETY: `T: Pod` accepts any bit pattern, the destination is a valid, aligned `T`, and
    // exactly size_of::<T>() bytes are copied from a slice of that length (checked above);
    // the regions cannot overlap (`out` is a fresh local).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut out as *mut T).cast::<u8>(), want);
    }
    Ok(Cow::Owned(out))
}

/// A record of variable length (`dns`: its payload is cut to what was captured): at least
/// `min` bytes and at most size_of::<T>(), the rest of the `T` zero.
fn read_prefix<T: Pod + Clone>(ty: u32, bytes: &[u8], min: usize) -> Result<T, DecodeError> {
    let want = std::mem::size_of::<T>();
    if bytes.len() < min || bytes.len() > want {
        return Err(DecodeError::WrongSize {
            ty,
            len: bytes.len(),
            want,
        });
    }
    let mut out = T::default();
    // SAFETY: `T: Pod` accepts any bit pattern, the destination is a valid, aligned `T` of
    // `want` bytes, and at most `want` bytes are copied (checked above) from `bytes`, which
    // has that many; the regions cannot overlap (`out` is a fresh local).
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut out as *mut T).cast::<u8>(),
            bytes.len(),
        );
    }
    Ok(out)
}

/// A NUL-terminated C string in a fixed array, lossily as UTF-8.
fn cstr<const N: usize>(a: &[i8; N]) -> String {
    let bytes = bytes_of(a);
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(N);
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

/// A C `char` array as bytes, in place.
fn bytes_of<const N: usize>(a: &[i8; N]) -> &[u8; N] {
    // SAFETY: i8 and u8 have the same size and alignment and share every bit pattern, so the
    // array may be viewed as bytes for the same lifetime.
    unsafe { &*(a as *const [i8; N]).cast::<[u8; N]>() }
}

fn task(t: &types::lg_task) -> Task {
    Task {
        ts_boot_ns: t.ts_boot_ns,
        start_boot_ns: t.start_boot_ns,
        cgroup_id: t.cgroup_id,
        memcg_v1_id: t.memcg_v1_id,
        pid: t.pid,
        tid: t.tid,
        ppid: t.ppid,
        uid: t.uid,
        gid: t.gid,
        euid: t.euid,
        egid: t.egid,
        auid: t.auid,
        pidns: t.pidns,
        mntns: t.mntns,
        comm: Comm::new(bytes_of(&t.comm)),
    }
}

/// argv: NUL-separated strings in the first `len` bytes. A cut-off last argument is kept.
fn split_args(buf: &[u8], len: usize) -> Vec<String> {
    let len = len.min(buf.len());
    let mut used = &buf[..len];
    if let [rest @ .., 0] = used {
        used = rest;
    }
    if used.is_empty() {
        return Vec::new();
    }
    used.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The kernel writes path components leaf first, NUL-terminated, `depth` of them.
fn join_path(buf: &[u8], depth: usize, truncated: bool) -> String {
    let mut parts: Vec<&[u8]> = buf.split(|&b| b == 0).take(depth).collect();
    parts.reverse();
    let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 3);
    if truncated {
        out.push_str(TRUNCATED_PATH);
    }
    for p in parts {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(p));
    }
    out
}

fn ip(family: u16, a: &[u8; 16]) -> IpAddr {
    if i32::from(family) == nix::libc::AF_INET {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

fn creds(c: &types::lg_creds) -> Creds {
    Creds {
        uid: c.uid,
        euid: c.euid,
        suid: c.suid,
        fsuid: c.fsuid,
        gid: c.gid,
        egid: c.egid,
        sgid: c.sgid,
        fsgid: c.fsgid,
        cap_effective: c.cap_effective,
        cap_permitted: c.cap_permitted,
        cap_inheritable: c.cap_inheritable,
    }
}

fn cred_call(n: u32) -> &'static str {
    use types::lg_cred_call as C;
    match C(n) {
        C::LG_SETUID => "setuid",
        C::LG_SETGID => "setgid",
        C::LG_SETREUID => "setreuid",
        C::LG_SETREGID => "setregid",
        C::LG_SETRESUID => "setresuid",
        C::LG_SETRESGID => "setresgid",
        C::LG_SETFSUID => "setfsuid",
        C::LG_SETFSGID => "setfsgid",
        C::LG_CAPSET => "capset",
        _ => "unknown",
    }
}

fn ns_inodes(n: &types::lg_ns) -> NsInodes {
    NsInodes {
        mnt: n.mnt,
        uts: n.uts,
        ipc: n.ipc,
        net: n.net,
        pid: n.pid,
        user: n.user,
        cgroup: n.cgroup,
        time: n.time,
    }
}

fn ns_call(n: u32) -> &'static str {
    use types::lg_ns_call as C;
    match C(n) {
        C::LG_NS_SETNS => "setns",
        C::LG_NS_UNSHARE => "unshare",
        C::LG_NS_CLONE => "clone",
        C::LG_NS_CLONE3 => "clone3",
        _ => "unknown",
    }
}

fn mount_call(n: u32) -> &'static str {
    use types::lg_mount_call as C;
    match C(n) {
        C::LG_MOUNT_MOUNT => "mount",
        C::LG_MOUNT_UMOUNT => "umount",
        C::LG_MOUNT_MOVE_MOUNT => "move_mount",
        C::LG_MOUNT_FSMOUNT => "fsmount",
        C::LG_MOUNT_OPEN_TREE => "open_tree",
        C::LG_MOUNT_PIVOT_ROOT => "pivot_root",
        _ => "unknown",
    }
}

/// The first `len` bytes of a kernel-composed path buffer (`LG_FPATH_LEN`), lossily as UTF-8.
fn path_of<const N: usize>(a: &[i8; N], len: u32) -> String {
    let bytes = bytes_of(a);
    let len = (len as usize).min(N);
    let used = &bytes[..len];
    let end = used.iter().position(|&b| b == 0).unwrap_or(len);
    String::from_utf8_lossy(&used[..end]).into_owned()
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let Some(head) = bytes.get(..4) else {
        return Err(DecodeError::Short { len: bytes.len() });
    };
    let ty = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]);
    Ok(match ty {
        LG_EXEC => {
            let e = read::<types::lg_exec>(ty, bytes)?;
            let path = bytes_of(&e.path);
            let args = bytes_of(&e.args);
            Record::Exec(Exec {
                task: task(&e.task),
                old_pid: e.old_pid,
                filename: cstr(&e.filename),
                path: join_path(path, e.path_depth as usize, e.path_truncated != 0),
                path_truncated: e.path_truncated != 0,
                args: split_args(args, e.args_len as usize),
                args_truncated: e.args_truncated != 0,
                memfd: e.memfd != 0,
                stdio_sockets: e.stdio_sockets & 7,
                exe_nlink: e.exe_nlink,
                exe_ino: e.exe_ino,
                exe_dev: user_dev(e.exe_dev),
            })
        }
        LG_EXIT => {
            let e = read::<types::lg_exit>(ty, bytes)?;
            Record::Exit(Exit {
                task: task(&e.task),
                exit_code: e.exit_code,
                signal: e.signal,
                core_dumped: e.core_dumped != 0,
            })
        }
        LG_FORK => {
            let e = read::<types::lg_fork>(ty, bytes)?;
            Record::Fork(Fork {
                task: task(&e.task),
                child_pid: e.child_pid,
                child_start_boot_ns: e.child_start_boot_ns,
            })
        }
        LG_CONNECT | LG_ACCEPT => {
            let e = read::<types::lg_sock>(ty, bytes)?;
            Record::Sock(Sock {
                task: task(&e.task),
                inbound: ty == LG_ACCEPT,
                src: ip(e.family, &e.saddr),
                sport: e.sport,
                dst: ip(e.family, &e.daddr),
                dport: e.dport,
                ret: e.ret,
            })
        }
        LG_CREDS => {
            let e = read::<types::lg_creds_event>(ty, bytes)?;
            Record::Creds(CredChange {
                task: task(&e.task),
                syscall: cred_call(e.syscall),
                old: creds(&e.old),
                new: creds(&e.new),
            })
        }
        LG_PTRACE => {
            let e = read::<types::lg_ptrace>(ty, bytes)?;
            Record::Ptrace(Ptrace {
                task: task(&e.task),
                request: if i64::from(e.request) == i64::from(nix::libc::PTRACE_SEIZE) {
                    "seize"
                } else {
                    "attach"
                },
                target_pid: e.target_pid,
                target_host: e.target_host != 0,
                ret: e.ret,
            })
        }
        LG_BPF_LOAD => {
            let e = read::<types::lg_bpf_load>(ty, bytes)?;
            Record::BpfLoad(BpfLoad {
                task: task(&e.task),
                prog_type: e.prog_type,
                prog_name: cstr(&e.prog_name),
                insn_cnt: e.insn_cnt,
                ret: e.ret,
            })
        }
        LG_MEMFD => {
            let e = read::<types::lg_memfd>(ty, bytes)?;
            Record::Memfd(Memfd {
                task: task(&e.task),
                name: cstr(&e.name),
                flags: e.flags,
                ret: e.ret,
            })
        }
        LG_NAMESPACE => {
            let e = read::<types::lg_namespace>(ty, bytes)?;
            Record::Namespace(NamespaceChange {
                task: task(&e.task),
                syscall: ns_call(e.syscall),
                flags: e.flags,
                ret: e.ret,
                from: ns_inodes(&e.from),
                to: ns_inodes(&e.to),
            })
        }
        LG_MOUNT => {
            let e = read::<types::lg_mount>(ty, bytes)?;
            Record::Mount(Mount {
                task: task(&e.task),
                syscall: mount_call(e.syscall),
                flags: e.flags,
                ret: e.ret,
                source: cstr(&e.source),
                target: cstr(&e.target),
                fstype: cstr(&e.fstype),
            })
        }
        LG_MODULE_LOAD => {
            let e = read::<types::lg_module_load>(ty, bytes)?;
            Record::ModuleLoad(ModuleLoad {
                task: task(&e.task),
                syscall: if e.syscall == types::lg_module_call::LG_MODULE_FINIT.0 {
                    "finit_module"
                } else {
                    "init_module"
                },
                ret: e.ret,
                flags: e.flags,
                len: e.len,
                name: cstr(&e.name),
                params: cstr(&e.params),
                path: path_of(&e.path, e.path_len),
                path_truncated: e.path_truncated != 0,
            })
        }
        LG_FILE => {
            let e = read::<types::lg_file>(ty, bytes)?;
            use types::lg_file_op as O;
            let op = match O(e.op) {
                O::LG_FILE_READ => FileOp::Read,
                O::LG_FILE_WRITE => FileOp::Write,
                O::LG_FILE_CREATE => FileOp::Create,
                O::LG_FILE_RENAME => FileOp::Rename,
                O::LG_FILE_DELETE => FileOp::Delete,
                O::LG_FILE_CHMOD => FileOp::Chmod,
                O::LG_FILE_MKDIR => FileOp::Mkdir,
                O::LG_FILE_LINK => FileOp::Link,
                O::LG_FILE_SYMLINK => FileOp::Symlink,
                O::LG_FILE_CONNECT => FileOp::Connect,
                _ => return Err(DecodeError::UnknownType(ty)),
            };
            let has = |bit: usize| e.flags & bit as u32 != 0;
            Record::File(FileChange {
                task: task(&e.task),
                op,
                ret: e.ret,
                mode: e.mode,
                path: path_of(&e.path, e.path_len.into()),
                old_path: path_of(&e.old_path, e.old_path_len.into()),
                from_caller: has(consts::LG_FILE_F_CALLER),
                truncated: has(consts::LG_FILE_F_TRUNCATED),
                watch_read: has(consts::LG_FILE_F_WATCH_READ),
                watch_write: has(consts::LG_FILE_F_WATCH_WRITE),
                watch_connect: has(consts::LG_FILE_F_WATCH_CONNECT),
            })
        }
        LG_DNS => {
            let head = std::mem::offset_of!(types::lg_dns, payload);
            let e = read_prefix::<types::lg_dns>(ty, bytes, head)?;
            let n = (e.captured as usize)
                .min(e.payload.len())
                .min(bytes.len() - head);
            Record::Dns(DnsQuery {
                task: task(&e.task),
                src: ip(e.family, &e.saddr),
                sport: e.sport,
                dst: ip(e.family, &e.daddr),
                dport: e.dport,
                len: e.len,
                payload: e.payload[..n].to_vec(),
            })
        }
        LG_CONNECTION_CLOSE => {
            let e = read::<types::lg_connection_close>(ty, bytes)?;
            Record::ConnectionClose(ConnClose {
                task: task(&e.task),
                inbound: e.inbound != 0,
                src: ip(e.family, &e.saddr),
                sport: e.sport,
                dst: ip(e.family, &e.daddr),
                dport: e.dport,
                start_ns: e.start_ns,
                bytes_sent: e.bytes_sent,
                bytes_received: e.bytes_received,
            })
        }
        other => return Err(DecodeError::UnknownType(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record's bytes exactly as the ring buffer would hand them over.
    fn bytes_of_record<T: Pod>(v: &T) -> Vec<u8> {
        let n = std::mem::size_of::<T>();
        let mut out = vec![0u8; n];
        // SAFETY: `v` is a valid `T` of `n` bytes (POD, see `Pod`); `out` has room for `n` bytes
        // and does not overlap it.
        unsafe { std::ptr::copy_nonoverlapping((v as *const T).cast::<u8>(), out.as_mut_ptr(), n) };
        out
    }

    fn put(dst: &mut [i8], s: &[u8]) {
        for (d, b) in dst.iter_mut().zip(s) {
            *d = *b as i8;
        }
    }

    fn task() -> types::lg_task {
        let mut t = types::lg_task {
            ts_boot_ns: 5_000,
            start_boot_ns: 1_000,
            cgroup_id: 1,
            memcg_v1_id: 9,
            pid: 42,
            tid: 43,
            ppid: 1,
            uid: 1000,
            gid: 1001,
            euid: 0,
            egid: 0,
            auid: 1000,
            pidns: 4026531836,
            mntns: 4026531832,
            ..Default::default()
        };
        put(&mut t.comm, b"sh\0");
        t
    }

    #[test]
    fn an_unfinished_path_walk_is_marked_and_the_file_is_identified() {
        let mut e = types::lg_exec {
            r#type: LG_EXEC,
            task: task(),
            path_depth: 3,
            path_truncated: 1,
            exe_ino: 77,
            exe_dev: (259 << 20) | 0x12345,
            ..Default::default()
        };
        put(&mut e.path, b"python3-aaa\0bin\0usr\0");
        let Record::Exec(x) = decode(&bytes_of_record(&e)).expect("decode") else {
            panic!("not an exec")
        };
        assert_eq!(x.path, ".../usr/bin/python3-aaa");
        assert!(x.path_truncated);
        assert_eq!(x.exe_ino, 77);
        // stat's encoding of major 259, minor 0x12345.
        assert_eq!(x.exe_dev, 0x45 | (259 << 8) | (0x12300 << 12));
    }

    #[test]
    fn exec_record_decodes_path_and_args() {
        let mut e = types::lg_exec {
            r#type: LG_EXEC,
            task: task(),
            path_depth: 3,
            old_pid: 42,
            exe_nlink: 1,
            ..Default::default()
        };
        put(&mut e.filename, b"/bin/sh\0");
        // Leaf first: "dash", "bin", "usr".
        put(&mut e.path, b"dash\0bin\0usr\0");
        let args = b"/bin/sh\0-c\0exit 7\0";
        put(&mut e.args, args);
        e.args_len = args.len() as u32;
        let Record::Exec(x) = decode(&bytes_of_record(&e)).expect("decode") else {
            panic!("not an exec")
        };
        assert_eq!(x.path, "/usr/bin/dash");
        assert_eq!(x.filename, "/bin/sh");
        assert_eq!(x.args, vec!["/bin/sh", "-c", "exit 7"]);
        assert!(!x.args_truncated && !x.memfd && !x.path_truncated);
        assert_eq!(x.task.pid, 42);
        assert_eq!(x.task.memcg_v1_id, 9);
        assert_eq!(x.task.comm, "sh");
        assert_eq!(x.task.auid, 1000);

        // Records are read in place when aligned and copied when not: both decode alike.
        let bytes = bytes_of_record(&e);
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let (aligned, misaligned) = (&bytes[..], &shifted[1..]);
        assert!(
            aligned.as_ptr().cast::<types::lg_exec>().is_aligned()
                && !misaligned.as_ptr().cast::<types::lg_exec>().is_aligned()
        );
        assert!(matches!(
            read::<types::lg_exec>(LG_EXEC, aligned),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            read::<types::lg_exec>(LG_EXEC, misaligned),
            Ok(Cow::Owned(_))
        ));
        assert_eq!(
            decode(misaligned).expect("decode"),
            decode(aligned).expect("decode")
        );
    }

    #[test]
    fn truncated_args_keep_the_cut_argument() {
        let mut e = types::lg_exec {
            r#type: LG_EXEC,
            args_truncated: 1,
            ..Default::default()
        };
        put(&mut e.args, b"a\0bcd");
        e.args_len = 5;
        let Record::Exec(x) = decode(&bytes_of_record(&e)).expect("decode") else {
            panic!("not an exec")
        };
        assert_eq!(x.args, vec!["a", "bcd"]);
        assert!(x.args_truncated);
        assert_eq!(x.path, "");
    }

    #[test]
    fn exit_fork_and_sockets_decode() {
        let e = types::lg_exit {
            r#type: LG_EXIT,
            exit_code: 7,
            task: task(),
            signal: 0,
            core_dumped: 0,
        };
        let Record::Exit(x) = decode(&bytes_of_record(&e)).expect("decode") else {
            panic!("not an exit")
        };
        assert_eq!((x.exit_code, x.signal, x.core_dumped), (7, 0, false));

        let f = types::lg_fork {
            r#type: LG_FORK,
            child_pid: 77,
            task: task(),
            child_start_boot_ns: 9,
        };
        assert!(matches!(
            decode(&bytes_of_record(&f)),
            Ok(Record::Fork(Fork { child_pid: 77, .. }))
        ));

        let mut s = types::lg_sock {
            r#type: LG_CONNECT,
            family: 2,
            task: task(),
            sport: 40000,
            dport: 443,
            ..Default::default()
        };
        s.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        s.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let Record::Sock(x) = decode(&bytes_of_record(&s)).expect("decode") else {
            panic!("not a socket")
        };
        assert!(!x.inbound);
        assert_eq!(x.dst.to_string(), "10.1.2.3");
        assert_eq!((x.sport, x.dport), (40000, 443));

        s.r#type = LG_ACCEPT;
        s.family = 10;
        s.daddr = [0; 16];
        s.daddr[15] = 1;
        let Record::Sock(x) = decode(&bytes_of_record(&s)).expect("decode") else {
            panic!("not a socket")
        };
        assert!(x.inbound);
        assert_eq!(x.dst.to_string(), "::1");
    }

    #[test]
    fn creds_ptrace_bpf_memfd_decode() {
        let c = types::lg_creds_event {
            r#type: LG_CREDS,
            syscall: 5,
            task: task(),
            old: types::lg_creds {
                uid: 0,
                ..Default::default()
            },
            new: types::lg_creds {
                uid: 65534,
                ..Default::default()
            },
        };
        let Record::Creds(x) = decode(&bytes_of_record(&c)).expect("decode") else {
            panic!("not creds")
        };
        assert_eq!(x.syscall, "setresuid");
        assert_eq!(x.new.uid, 65534);

        let p = types::lg_ptrace {
            r#type: LG_PTRACE,
            request: nix::libc::PTRACE_SEIZE as _,
            task: task(),
            target_pid: 9,
            ret: 0,
            target_host: 1,
            ..Default::default()
        };
        assert!(matches!(
            decode(&bytes_of_record(&p)),
            Ok(Record::Ptrace(Ptrace {
                request: "seize",
                target_pid: 9,
                target_host: true,
                ..
            }))
        ));

        let mut b = types::lg_bpf_load {
            r#type: LG_BPF_LOAD,
            prog_type: 26,
            task: task(),
            ret: 5,
            insn_cnt: 12,
            ..Default::default()
        };
        put(&mut b.prog_name, b"evil\0");
        let Record::BpfLoad(x) = decode(&bytes_of_record(&b)).expect("decode") else {
            panic!("not bpf")
        };
        assert_eq!(
            (x.prog_name.as_str(), x.prog_type, x.insn_cnt),
            ("evil", 26, 12)
        );

        let mut m = types::lg_memfd {
            r#type: LG_MEMFD,
            flags: 1,
            task: task(),
            ret: 3,
            ..Default::default()
        };
        put(&mut m.name, b"payload\0");
        let Record::Memfd(x) = decode(&bytes_of_record(&m)).expect("decode") else {
            panic!("not memfd")
        };
        assert_eq!((x.name.as_str(), x.flags, x.ret), ("payload", 1, 3));
    }

    /// dns records are cut after their payload: any length from the payload's start to the
    /// whole struct decodes, the payload bounded by both `captured` and the bytes there are.
    #[test]
    fn dns_records_of_every_length_decode() {
        let mut d = types::lg_dns {
            r#type: LG_DNS,
            family: 2,
            dport: 53,
            task: task(),
            sport: 4000,
            len: 20,
            captured: 20,
            ..Default::default()
        };
        d.daddr[..4].copy_from_slice(&[127, 0, 0, 53]);
        for (i, b) in d.payload.iter_mut().enumerate().take(20) {
            *b = i as u8;
        }
        let full = bytes_of_record(&d);
        let head = std::mem::offset_of!(types::lg_dns, payload);
        let cut = (head + 20 + 7) & !7;
        let Record::Dns(x) = decode(&full[..cut]).expect("decode") else {
            panic!("not dns")
        };
        assert_eq!(x.payload, (0..20).collect::<Vec<u8>>());
        assert_eq!(
            (x.dst.to_string(), x.dport, x.sport),
            ("127.0.0.53".into(), 53, 4000)
        );
        assert_eq!(decode(&full).map(|r| r.task().pid), Ok(42));
        // captured larger than the bytes sent: bounded by the record.
        d.captured = 500;
        let Record::Dns(x) = decode(&bytes_of_record(&d)[..head + 8]).expect("decode") else {
            panic!("not dns")
        };
        assert_eq!(x.payload.len(), 8);
        assert!(matches!(
            decode(&full[..head - 1]),
            Err(DecodeError::WrongSize { .. })
        ));
        let mut longer = full.clone();
        longer.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode(&longer),
            Err(DecodeError::WrongSize { .. })
        ));
    }

    #[test]
    fn comm_stops_at_nul_fills_sixteen_bytes_and_is_lossy() {
        assert_eq!(Comm::new(b"sh\0junk"), "sh");
        assert_eq!(Comm::new(b""), "");
        assert_eq!(Comm::new(b"0123456789abcdefXYZ"), "0123456789abcdef");
        assert_eq!(Comm::new(&[b'a', 0xff, b'b', 0]).as_str(), "a\u{fffd}b");
        assert_eq!(
            serde_json::to_string(&Comm::from("q\"")).expect("serialize"),
            "\"q\\\"\""
        );
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        assert_eq!(decode(&[]), Err(DecodeError::Short { len: 0 }));
        assert_eq!(decode(&[1, 0]), Err(DecodeError::Short { len: 2 }));
        assert_eq!(decode(&[99, 0, 0, 0]), Err(DecodeError::UnknownType(99)));
        let want = std::mem::size_of::<types::lg_exit>();
        assert_eq!(
            decode(&[2, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::WrongSize {
                ty: 2,
                len: 8,
                want
            })
        );
        // Names that are not UTF-8 come out lossily, never as a panic.
        let mut m = types::lg_memfd {
            r#type: LG_MEMFD,
            ..Default::default()
        };
        put(&mut m.name, &[0xff, 0xfe, b'x', 0]);
        let Record::Memfd(x) = decode(&bytes_of_record(&m)).expect("decode") else {
            panic!("not memfd")
        };
        assert!(x.name.ends_with('x'));
    }
}
