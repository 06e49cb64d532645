/* SPDX-License-Identifier: GPL-2.0 */
/*
 * events.h: the ONE definition of every record the sensor sends through the ring buffer.
 *
 * Shared by the BPF programs and (through the skeleton's generated `types::*`) by Rust: never
 * mirror these structs by hand on the Rust side. Only fixed-width integers and byte arrays, so
 * every bit pattern is a valid value (the Rust side copies records out of the ring buffer).
 * Every record starts with `u32 type` (enum lg_type).
 */
#ifndef LG_EVENTS_H
#define LG_EVENTS_H

#define LG_COMM_LEN 16
#define LG_FILENAME_LEN 256 /* the path as given to execve(), truncated */
#define LG_PATH_LEN 512	    /* executable path components, see lg_exec.path */
#define LG_PATH_DEPTH 24    /* max path components walked */
#define LG_ARGS_LEN 1024    /* argv bytes (NUL separated); a power of two */
#define LG_NAME_LEN 64	    /* memfd names, bpf program names */

enum lg_type {
	LG_EXEC = 1,
	LG_EXIT = 2,
	LG_FORK = 3,
	LG_CONNECT = 4,
	LG_ACCEPT = 5,
	LG_CREDS = 6,
	LG_PTRACE = 7,
	LG_BPF_LOAD = 8,
	LG_MEMFD = 9,
	LG_NAMESPACE = 10,
	LG_MOUNT = 11,
	LG_MODULE_LOAD = 12,
	LG_FILE = 13,
	LG_DNS = 14,
	LG_CONNECTION_CLOSE = 15,
	LG_TYPE_MAX = 16,
};

/*
 * The in-kernel exclusions (--exclude, rule files' `exclude:`): which one kept a record out of
 * the ring buffer (the index of the `filtered` counters), and the bits of `exclude_kinds`.
 */
enum lg_filter {
	LG_FILTER_EXE = 0,	/* an excluded executable, or a process it started */
	LG_FILTER_UID = 1,	/* an excluded real uid */
	LG_FILTER_CGROUP = 2,	/* an excluded cgroup (v2 id) */
	LG_FILTER_MAX = 3,
};

/* An executable, as the kernel names its file: the superblock's dev_t and the inode number. */
struct lg_exe_key {
	__u64 dev;		/* s_dev (major << 20 | minor) */
	__u64 ino;
};

/* Which syscall changed credentials (lg_creds_event.syscall). */
enum lg_cred_call {
	LG_SETUID = 1,
	LG_SETGID = 2,
	LG_SETREUID = 3,
	LG_SETREGID = 4,
	LG_SETRESUID = 5,
	LG_SETRESGID = 6,
	LG_SETFSUID = 7,
	LG_SETFSGID = 8,
	LG_CAPSET = 9,
};

/* The task an event belongs to (the current task unless the record says otherwise). */
struct lg_task {
	__u64 ts_boot_ns;	 /* bpf_ktime_get_boot_ns() at the event */
	__u64 start_boot_ns;	 /* task->group_leader->start_boottime */
	__u64 cgroup_id;	 /* bpf_get_current_cgroup_id() (cgroup v2) */
	__u64 memcg_v1_id;	 /* the memory controller's cgroup id when it is mounted as cgroup v1
				    (hybrid and legacy hosts), else 0: with cgroup_id it keys the
				    user-space cgroup cache where cgroup v2 alone cannot */
	__u32 pid;		 /* tgid as seen from the initial pid namespace */
	__u32 tid;		 /* thread id */
	__u32 ppid;		 /* real_parent's tgid */
	__u32 uid, gid, euid, egid;
	__u32 auid;		 /* login uid (loginuid; 4294967295 = unset) */
	__u32 pidns, mntns;	 /* namespace inode numbers */
	char comm[LG_COMM_LEN];
};

struct lg_creds {
	__u32 uid, euid, suid, fsuid;
	__u32 gid, egid, sgid, fsgid;
	__u64 cap_effective, cap_permitted, cap_inheritable;
};

struct lg_exec {
	__u32 type;
	__u32 args_len;		/* bytes used in args */
	struct lg_task task;
	__u8 args_truncated;	/* argv was longer than LG_ARGS_LEN */
	__u8 path_truncated;	/* deeper than LG_PATH_DEPTH or longer than LG_PATH_LEN */
	__u8 memfd;		/* the executable is a memfd (fileless execution) */
	__u8 path_depth;	/* components in path */
	__u8 stdio_sockets;	/* bit i: descriptor i (0 stdin, 1 stdout, 2 stderr) is a socket */
	__u32 exe_nlink;	/* link count of the executable's inode (0: deleted/anonymous) */
	__u32 old_pid;		/* pid before exec (differs when a thread exec'd) */
	__u32 exe_dev;		/* the executable's device (kernel dev_t: major << 20 | minor) */
	__u64 exe_ino;		/* the executable's inode number (with exe_dev: which file it is) */
	char filename[LG_FILENAME_LEN];
	/* The executable's path as NUL-terminated components, LEAF FIRST (reversed) up to the root. */
	char path[LG_PATH_LEN];
	char args[LG_ARGS_LEN];
};

struct lg_exit {
	__u32 type;
	__s32 exit_code;	/* status >> 8 */
	struct lg_task task;
	__u32 signal;		/* terminating signal, 0 if it exited */
	__u32 core_dumped;
};

struct lg_fork {
	__u32 type;
	__u32 child_pid;
	struct lg_task task;	/* the parent */
	__u64 child_start_boot_ns;
};

/* connect (outbound, LG_CONNECT) and accept (inbound, LG_ACCEPT) of TCP sockets. */
struct lg_sock {
	__u32 type;
	__u16 family;		/* AF_INET / AF_INET6 */
	__u16 _pad;
	struct lg_task task;
	__u16 sport, dport;	/* host byte order; s = local, d = remote */
	__u8 saddr[16];		/* IPv4 uses the first 4 bytes */
	__u8 daddr[16];
	__s32 ret;		/* connect(): 0, or -errno (-EINPROGRESS for non-blocking); accept: the fd */
};

struct lg_creds_event {
	__u32 type;
	__u32 syscall;		/* enum lg_cred_call */
	struct lg_task task;
	struct lg_creds old;
	struct lg_creds new;
};

struct lg_ptrace {
	__u32 type;
	__u32 request;		/* PTRACE_ATTACH (16) or PTRACE_SEIZE (0x4206) */
	struct lg_task task;
	__u32 target_pid;	/* a host pid when target_host, else as the tracer numbered it */
	__s32 ret;		/* syscall result: 0 or -errno */
	__u32 target_host;
	__u32 _pad;
};

struct lg_bpf_load {
	__u32 type;
	__u32 prog_type;	/* enum bpf_prog_type */
	struct lg_task task;
	__s32 ret;		/* the program fd, or -errno */
	__u32 insn_cnt;
	char prog_name[16];	/* BPF_OBJ_NAME_LEN */
};

struct lg_memfd {
	__u32 type;
	__u32 flags;
	struct lg_task task;
	__s32 ret;		/* the fd, or -errno */
	__u32 _pad;
	char name[LG_NAME_LEN];
};

/* ---------------------------------------------------------------- namespace, mount, modules, files */

#define LG_STR_LEN 256	    /* strings from the caller's memory (mount source/target, module params) */
#define LG_FSTYPE_LEN 32    /* file-system type names */
#define LG_FPATH_LEN 512    /* kernel-composed absolute paths (file events, module files); a power of two */

/* Which syscall (lg_namespace.syscall). */
enum lg_ns_call {
	LG_NS_SETNS = 1,
	LG_NS_UNSHARE = 2,
	LG_NS_CLONE = 3,
	LG_NS_CLONE3 = 4,
};

/* A task's namespaces, as inode numbers (0: unknown). pid and time: where its children go. */
struct lg_ns {
	__u32 mnt, uts, ipc, net, pid, user, cgroup, time;
};

struct lg_namespace {
	__u32 type;
	__u32 syscall;		/* enum lg_ns_call */
	struct lg_task task;
	__u64 flags;		/* CLONE_NEW* asked for (setns: its nstype argument) */
	__s32 ret;		/* 0, the child's pid (clone), or -errno */
	__u32 _pad;
	struct lg_ns from;	/* before the call */
	struct lg_ns to;	/* after it (clone: the child's); all 0 when unknown */
};

enum lg_mount_call {
	LG_MOUNT_MOUNT = 1,
	LG_MOUNT_UMOUNT = 2,
	LG_MOUNT_MOVE_MOUNT = 3,
	LG_MOUNT_FSMOUNT = 4,
	LG_MOUNT_OPEN_TREE = 5,
	LG_MOUNT_PIVOT_ROOT = 6,
};

struct lg_mount {
	__u32 type;
	__u32 syscall;		/* enum lg_mount_call */
	struct lg_task task;
	__u64 flags;		/* the call's flags argument (mount: MS_*, umount2: MNT_*, ...) */
	__s32 ret;		/* 0, a file descriptor (fsmount, open_tree), or -errno */
	__u32 _pad;
	char source[LG_STR_LEN];
	char target[LG_STR_LEN];
	char fstype[LG_FSTYPE_LEN];
};

enum lg_module_call {
	LG_MODULE_INIT = 1,	/* init_module(image, len, params) */
	LG_MODULE_FINIT = 2,	/* finit_module(fd, params, flags) */
};

struct lg_module_load {
	__u32 type;
	__u32 syscall;		/* enum lg_module_call */
	struct lg_task task;
	__s32 ret;		/* 0 or -errno */
	__u32 flags;		/* finit_module flags */
	__u64 len;		/* init_module: bytes of the image */
	__u32 path_len;		/* bytes used in path (finit_module) */
	__u32 path_truncated;
	char name[LG_NAME_LEN];	/* the module's name (from module:module_load, when the kernel has it) */
	char params[LG_STR_LEN];
	char path[LG_FPATH_LEN];	/* finit_module: the file, as the kernel resolved it */
};

/* What a file event did (lg_file.op). */
enum lg_file_op {
	LG_FILE_READ = 1,	/* opened for reading (a read-watched path) */
	LG_FILE_WRITE = 2,	/* opened for writing */
	LG_FILE_CREATE = 3,	/* created by an open (O_CREAT) */
	LG_FILE_RENAME = 4,	/* path: the new name, old_path: the old one */
	LG_FILE_DELETE = 5,	/* unlink, rmdir */
	LG_FILE_CHMOD = 6,	/* mode: the mode asked for */
	LG_FILE_MKDIR = 7,
	LG_FILE_LINK = 8,	/* a hard link: path the new name, old_path the existing file */
	LG_FILE_SYMLINK = 9,	/* path the new link, old_path its target as written */
	LG_FILE_CONNECT = 10,	/* a Unix socket connect(): path the socket file (connect list) */
};

/* lg_file.flags */
#define LG_FILE_F_CALLER 1	/* the path was composed from the caller's string (not a file) */
#define LG_FILE_F_TRUNCATED 2	/* a path was cut */
#define LG_FILE_F_WATCH_READ 4	/* matched the read list */
#define LG_FILE_F_WATCH_WRITE 8	/* matched the write list */
#define LG_FILE_F_WATCH_CONNECT 16 /* matched the connect list */

struct lg_file {
	__u32 type;
	__u32 op;		/* enum lg_file_op */
	struct lg_task task;
	__s32 ret;		/* the fd (opens), 0, or -errno */
	__u32 mode;		/* chmod: the mode asked for */
	__u32 flags;		/* LG_FILE_F_* */
	__u16 path_len;
	__u16 old_path_len;
	char path[LG_FPATH_LEN];
	char old_path[LG_FPATH_LEN];
};

/* ---------------------------------------------------------------- dns */

#define LG_DNS_LEN 288	/* bytes of a DNS message copied: the header and a longest question */

/* A UDP datagram sent to port 53: the question is parsed in user space (src/sensor/dns.rs). */
struct lg_dns {
	__u32 type;
	__u16 family;		/* AF_INET / AF_INET6 */
	__u16 dport;		/* host byte order */
	struct lg_task task;
	__u16 sport;		/* 0 when the socket is not bound yet */
	__u16 _pad;
	__u32 len;		/* bytes the caller sent */
	__u32 captured;		/* bytes in payload */
	__u32 _pad2;
	__u8 daddr[16];		/* IPv4 uses the first 4 bytes */
	__u8 saddr[16];
	__u8 payload[LG_DNS_LEN];
};

/* ---------------------------------------------------------------- connection_close */

/* A TCP connection this host opened or accepted, at its end. */
struct lg_connection_close {
	__u32 type;
	__u16 family;		/* AF_INET / AF_INET6 */
	__u8 inbound;		/* 1: accepted, 0: connected */
	__u8 _pad;
	struct lg_task task;	/* the owner, as it was at connect()/accept(); ts_boot_ns: the end */
	__u64 start_ns;		/* boot clock at connect()/accept() */
	__u64 bytes_sent;	/* tcp_sock.bytes_acked: sent and acknowledged by the peer */
	__u64 bytes_received;	/* tcp_sock.bytes_received */
	__u16 sport, dport;	/* host byte order; s = local, d = remote */
	__u32 _pad2;
	__u8 saddr[16];		/* IPv4 uses the first 4 bytes */
	__u8 daddr[16];
};

#endif /* LG_EVENTS_H */
