// SPDX-License-Identifier: GPL-2.0
/*
 * sensor.bpf.c: the linuxguard sensor's kernel side. Every program turns one kernel event into
 * one record (bpf/events.h) in the `events` ring buffer. Hooks come in pairs where the kernel
 * offers two: a BTF-enabled raw tracepoint (`tp_btf/`, typed arguments, cheapest) and the
 * classic tracepoint (`tracepoint/`, or the untyped raw one, `raw_tp/`) as fallback; user space
 * (src/sensor/mod.rs) decides which one of each pair is loaded. Stable hooks, plus one fentry
 * (exit before 6.16, where the kernel has trampolines); no kprobes, no LSM. The last section watches 32-bit syscalls, which the `syscalls:*` tracepoints
 * never see, and feeds them to the same code as the native hooks.
 *
 * Every record describes the current task, which every program reads through its BTF pointer
 * (bpf_get_current_task_btf(), Linux 5.11+) with plain CO-RE loads: one probe read per field
 * made a fork or exit record cost twice as much. Other kernel memory (sockets, dentries, the
 * compat registers) is read with BPF_CORE_READ, so one helper serves both flavours of a hook.
 *
 * One object for every kernel from 5.10 to the newest (docs/kernels.md). What differs between
 * kernels is decided when the object is loaded, never on the hot path: CO-RE tests
 * (bpf_core_field_exists, bpf_core_enum_value_exists, bpf_ksym_exists) become constants at load
 * and the verifier drops the branch not taken; where a program cannot be written for both (the
 * bpf_loop() path walk), there are two and user space loads the one the kernel has helpers for.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

/* Knobs, set by user space through .rodata before load. */
const volatile __u32 agent_tgid = 0; /* the agent's own process: never reported */
/*
 * Wake the reader only when this many bytes are waiting (0: on every record). Under load this
 * turns one wakeup per record into one per batch; user space polls with a short timeout
 * (100 ms) so a quiet trickle of events is still delivered promptly.
 */
const volatile __u64 wakeup_bytes = 0;
/*
 * ...and look at the ring's fill only after a CPU has written this many bytes since its last
 * look (user space sets wakeup_bytes / possible CPUs). The look reads the consumer position,
 * a cache line the reader writes on another CPU: doing it on every record cost 0.15-0.35 us
 * per record. At most wakeup_bytes more can go unnoticed across all CPUs, so the reader is
 * still woken before a quarter of the ring is full.
 */
const volatile __u64 wakeup_check_bytes = 0;
/*
 * In-kernel exclusions (--exclude, rule files' `exclude:`): 0 when none can be configured, and
 * the verifier drops the checks entirely. Which kinds are in use right now is exclude_kinds
 * (.bss, written by user space at start and at every SIGHUP, so a kind costs nothing until it
 * has an entry).
 */
const volatile bool have_exclusions = false;
__u32 exclude_kinds = 0; /* bit LG_FILTER_* set: that kind's map has entries */

/* Dummy instances: make the skeleton emit `types::*` for every record. */
struct lg_exec _lg_exec = {};
struct lg_exit _lg_exit = {};
struct lg_fork _lg_fork = {};
struct lg_sock _lg_sock = {};
struct lg_creds_event _lg_creds_event = {};
struct lg_ptrace _lg_ptrace = {};
struct lg_bpf_load _lg_bpf_load = {};
struct lg_memfd _lg_memfd = {};
/* ...and for the record-type and syscall numbers, so Rust does not restate them. */
enum lg_type _lg_type = LG_EXEC;
enum lg_cred_call _lg_cred_call = LG_SETUID;
enum lg_filter _lg_filter = LG_FILTER_EXE;
struct lg_exe_key _lg_exe_key = {};

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_SYN_SENT 2
#define PTRACE_ATTACH 16
#define PTRACE_SEIZE 0x4206
#define BPF_PROG_LOAD_CMD 5

/* The ring buffer; its size is replaced by --ring-buffer-mb before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/*
 * Failed ring-buffer reservations, per record type, per CPU (no atomics on the hot path).
 * User space sums the CPUs: kernel-side loss is counted, never silent.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LG_TYPE_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* Syscall arguments and credentials saved at sys_enter for the matching sys_exit (by thread). */
struct pending {
	__u64 args[2];
	struct lg_creds creds;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct pending);
} pending SEC(".maps");

static __always_inline int is_agent(void)
{
	return agent_tgid && (bpf_get_current_pid_tgid() >> 32) == agent_tgid;
}

/* ---------------------------------------------------------------- exclusions */

/* Excluded executables, uids and cgroups (filled by user space; the value is unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct lg_exe_key);
	__type(value, __u8);
} exclude_exe SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} exclude_uid SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} exclude_cgroup SEC(".maps");

/*
 * Processes (by tgid) that run an excluded executable or descend from one: marked at exec,
 * inherited at fork, forgotten at exit (and by LRU, which can only make a process visible again).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, __u8);
} excluded_procs SEC(".maps");

/* Records kept out of the ring on purpose, per LG_FILTER_*, per CPU: filtered, not dropped. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LG_FILTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} filtered SEC(".maps");

static __always_inline void count_filtered(__u32 filter)
{
	__u64 *n = bpf_map_lookup_elem(&filtered, &filter);

	if (n)
		*n += 1;
}

/* Which exclusion covers the current task: LG_FILTER_* + 1, or 0 for none. */
static __always_inline __u32 exclusion(void)
{
	__u32 kinds = exclude_kinds;
	__u32 tgid, uid;
	__u64 cg;

	if (kinds & (1 << LG_FILTER_EXE)) {
		tgid = bpf_get_current_pid_tgid() >> 32;
		if (bpf_map_lookup_elem(&excluded_procs, &tgid))
			return LG_FILTER_EXE + 1;
	}
	if (kinds & (1 << LG_FILTER_UID)) {
		uid = (__u32)bpf_get_current_uid_gid();
		if (bpf_map_lookup_elem(&exclude_uid, &uid))
			return LG_FILTER_UID + 1;
	}
	if (kinds & (1 << LG_FILTER_CGROUP)) {
		cg = bpf_get_current_cgroup_id();
		if (bpf_map_lookup_elem(&exclude_cgroup, &cg))
			return LG_FILTER_CGROUP + 1;
	}
	return 0;
}

/* Whether the current task's records stay out of the ring (counted as filtered). */
static __always_inline int excluded(void)
{
	__u32 f;

	if (!have_exclusions)
		return 0;
	f = exclusion();
	if (!f)
		return 0;
	count_filtered(f - 1);
	return 1;
}

/* Marks process `tgid` excluded (LG_FILTER_EXE). */
static __always_inline void mark_excluded(__u32 tgid)
{
	__u8 one = 1;

	bpf_map_update_elem(&excluded_procs, &tgid, &one, BPF_ANY);
}

/* A fork: the child of a marked process is marked too. */
static __always_inline void inherit_exclusion(__u32 child_tgid)
{
	__u32 tgid;

	if (!have_exclusions || !(exclude_kinds & (1 << LG_FILTER_EXE)))
		return;
	tgid = bpf_get_current_pid_tgid() >> 32;
	if (bpf_map_lookup_elem(&excluded_procs, &tgid))
		mark_excluded(child_tgid);
}

static __always_inline void count_drop(__u32 type)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &type);

	if (n)
		*n += 1;
}

/*
 * Reserve a record of `size` bytes, counting the failure; for a record about some other task
 * than the current one (connection_close: the owner's exclusion was decided at connect).
 */
static __always_inline void *reserve_unchecked(__u64 size, __u32 type)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);

	if (!e)
		count_drop(type);
	return e;
}

/*
 * Reserve a record of `size` bytes about the current task, counting the failure: every record
 * passes here (or dns.bpf.h's output()), so an excluded task's never reach the ring (NULL,
 * counted as filtered).
 */
static __always_inline void *reserve(__u64 size, __u32 type)
{
	if (excluded())
		return NULL;
	return reserve_unchecked(size, type);
}

/* Bytes this CPU has submitted since it last looked at the ring's fill. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unchecked SEC(".maps");

/* Submit a reserved record of `size` bytes, waking the reader as described at wakeup_bytes. */
static __always_inline void submit(void *e, __u64 size)
{
	__u64 flags = 0;
	__u32 zero = 0;
	__u64 *n;

	if (wakeup_bytes) {
		flags = BPF_RB_NO_WAKEUP;
		n = bpf_map_lookup_elem(&unchecked, &zero);
		if (n && (*n += size) >= wakeup_check_bytes) {
			*n = 0;
			if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
				flags = BPF_RB_FORCE_WAKEUP;
		}
	}
	bpf_ringbuf_submit(e, flags);
}

/*
 * 1 where the kernel hands out the current task as a BTF pointer (bpf_get_current_task_btf(),
 * Linux 5.11+), so fields reached from it are plain loads; 0 before (5.10), where each is a CO-RE
 * probe read. Resolved from the kernel's BTF when the object is loaded.
 */
#define HAVE_TASK_BTF bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf)

/*
 * A field reached from the current task (src->a->b..., as BPF_CORE_READ names it): a plain load
 * where `btf`, else a probe read. `btf` is a constant in each inlined copy of the functions
 * taking it, which are called as `if (HAVE_TASK_BTF) f(..., 1); else f(..., 0);`: each flavour
 * is compiled straight, and the verifier drops the one the kernel cannot run, so the hot path
 * carries no test (tests inside one body made clang keep both flavours' values on the stack).
 */
#define TREAD(btf, src, a, ...)                                                    \
	((btf) ? ___arrow(src, a, ##__VA_ARGS__) : BPF_CORE_READ(src, a, ##__VA_ARGS__))

/* Runs `call(args..., btf)` in the flavour the kernel has (see TREAD). */
#define BY_TASK_FLAVOUR(call, ...)                                               \
	do {                                                                     \
		if (HAVE_TASK_BTF)                                               \
			call(__VA_ARGS__, 1);                                    \
		else                                                             \
			call(__VA_ARGS__, 0);                                    \
	} while (0)

/*
 * The id of the task's memory cgroup when the memory controller sits on a cgroup v1 hierarchy
 * (hierarchy 0 is cgroup v2), else 0. Container runtimes give every container its own cgroup in
 * each v1 hierarchy, so on hybrid hosts, where containers may share a cgroup v2 cgroup, this id
 * tells them apart. Compiled out (0) on kernels without the memory controller.
 */
static __always_inline __u64 memcg_v1_id(struct task_struct *task, const int btf)
{
	struct cgroup_subsys_state *css = NULL;
	struct css_set *cs;
	struct cgroup *cg;
	int i;

	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return 0;
	i = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (i < 0 || i >= CGROUP_SUBSYS_COUNT)
		return 0;
	cs = TREAD(btf, task, cgroups);
	if (btf)
		css = cs->subsys[i];
	else
		bpf_core_read(&css, sizeof(css), &cs->subsys[i]);
	if (!css)
		return 0;
	cg = TREAD(btf, css, cgroup);
	if (!cg || TREAD(btf, cg, root, hierarchy_id) == 0)
		return 0;
	return TREAD(btf, cg, kn, id);
}

/*
 * The current task as a BTF pointer: fields are then read with plain loads (the JIT guards them
 * like probe reads) instead of one bpf_probe_read_kernel() call per field, which was most of
 * the cost of a fork or exit record. Every record describes the current task, so this serves
 * every program, whatever its hook flavour.
 *
 * The pointer is made untrusted (bpf_rdonly_cast, Linux 6.2+) where the kernel has it: for each
 * pointer loaded through a trusted one (what bpf_get_current_task_btf() returns) the verifier
 * looks up whether the field keeps the trust, by name, in the kernel's whole BTF. That made
 * loading the sensor take 330-400 ms instead of 95 ms here; through the untrusted pointer the
 * loads are the same at run time and the lookups are skipped. Older kernels take the trusted
 * pointer and the slower load; before 5.11 it is a plain address, read through TREAD's probe
 * reads.
 */
static __always_inline struct task_struct *current_btf(void)
{
	if (bpf_ksym_exists(bpf_rdonly_cast))
		return bpf_core_cast((void *)bpf_get_current_task(), struct task_struct);
	if (HAVE_TASK_BTF)
		return bpf_get_current_task_btf();
	return (struct task_struct *)bpf_get_current_task();
}

/*
 * A field of a kernel object the sensor reached through a plain pointer: a plain load through
 * an untrusted BTF pointer where the kernel can cast (bpf_rdonly_cast, 6.2+), else a probe read.
 * The path walk makes about four such reads per component.
 */
#define KREAD(type, p, field)                                                    \
	(bpf_ksym_exists(bpf_rdonly_cast) ? bpf_core_cast((p), type)->field :   \
					    BPF_CORE_READ((type *)(p), field))

static __always_inline void fill_task_as(struct lg_task *t, const int btf)
{
	struct task_struct *task = current_btf();
	const struct cred *c = TREAD(btf, task, real_cred);
	struct pid *tp = TREAD(btf, task, thread_pid);
	unsigned int level = TREAD(btf, tp, level);
	struct upid up = {};

	t->ts_boot_ns = bpf_ktime_get_boot_ns();
	t->start_boot_ns = TREAD(btf, task, group_leader, start_boottime);
	t->cgroup_id = bpf_get_current_cgroup_id();
	t->memcg_v1_id = memcg_v1_id(task, btf);
	t->pid = TREAD(btf, task, tgid);
	t->tid = TREAD(btf, task, pid);
	t->ppid = TREAD(btf, task, real_parent, tgid);
	t->uid = TREAD(btf, c, uid.val);
	t->gid = TREAD(btf, c, gid.val);
	t->euid = TREAD(btf, c, euid.val);
	t->egid = TREAD(btf, c, egid.val);
	/* loginuid only exists with CONFIG_AUDIT: CO-RE drops the read where it is missing. */
	if (bpf_core_field_exists(task->loginuid))
		t->auid = TREAD(btf, task, loginuid.val);
	else
		t->auid = 0xffffffff;
	/*
	 * The pid namespace the task lives in is the one at its pid's deepest level
	 * (nsproxy->pid_ns_for_children is where its children go, which differs after unshare).
	 * `level` is a plain value read from the kernel: reading numbers[level] through
	 * bpf_probe_read_kernel keeps the verifier out of the unbounded index.
	 */
	bpf_probe_read_kernel(&up, sizeof(up), &tp->numbers[level]);
	t->pidns = KREAD(struct pid_namespace, up.ns, ns.inum);
	t->mntns = TREAD(btf, task, nsproxy, mnt_ns, ns.inum);
	bpf_get_current_comm(t->comm, sizeof(t->comm));
}

static __always_inline void fill_task(struct lg_task *t)
{
	BY_TASK_FLAVOUR(fill_task_as, t);
}

static __always_inline struct task_struct *current_task(void)
{
	return (struct task_struct *)bpf_get_current_task();
}

/*
 * kernel_cap_t was `struct kernel_cap_struct { u32 cap[2]; }` before Linux 6.3 and is
 * `struct { u64 val; }` since. The old shape, for CO-RE to match against the running kernel
 * (the `___` suffix is dropped when matching: this is `struct cred` with the old members).
 */
struct kernel_cap_struct___lg_u32 {
	__u32 cap[2];
};

struct cred___lg_u32 {
	struct kernel_cap_struct___lg_u32 cap_effective, cap_permitted, cap_inheritable;
} __attribute__((preserve_access_index));

/* One capability set of credentials `c` (`old`: the same, in the old shape) as 64 bits. */
#define CAPS(btf, c, old, set)                                                  \
	(bpf_core_field_exists((c)->set.val) ?                                  \
		 (__u64)TREAD(btf, c, set.val) :                                \
		 ((__u64)TREAD(btf, old, set.cap[0]) |                          \
		  (__u64)TREAD(btf, old, set.cap[1]) << 32))

static __always_inline void read_creds_as(struct lg_creds *o, const int btf)
{
	const struct cred *c = TREAD(btf, current_btf(), real_cred);
	const struct cred___lg_u32 *old = (const void *)c;

	o->uid = TREAD(btf, c, uid.val);
	o->euid = TREAD(btf, c, euid.val);
	o->suid = TREAD(btf, c, suid.val);
	o->fsuid = TREAD(btf, c, fsuid.val);
	o->gid = TREAD(btf, c, gid.val);
	o->egid = TREAD(btf, c, egid.val);
	o->sgid = TREAD(btf, c, sgid.val);
	o->fsgid = TREAD(btf, c, fsgid.val);
	o->cap_effective = CAPS(btf, c, old, cap_effective);
	o->cap_permitted = CAPS(btf, c, old, cap_permitted);
	o->cap_inheritable = CAPS(btf, c, old, cap_inheritable);
}

static __always_inline void read_creds(struct lg_creds *o)
{
	BY_TASK_FLAVOUR(read_creds_as, o);
}

/* ---------------------------------------------------------------- exec */

/*
 * Executable path: walk the exe file's dentries up to the root, crossing mounts, writing each
 * name (NUL-terminated) leaf first. bpf_d_path() is not allowed in tracepoints, so we walk.
 *
 * Verifier workaround: an open-coded `for` loop over 24 components made the verifier explore
 * every combination of "crossed a mount" / "read a name" with a precise write offset (over a
 * million instructions, -E2BIG). bpf_loop() verifies the step callback once. The callback
 * writes into a per-CPU scratch buffer (it cannot safely hold the ring-buffer pointer), with
 * offsets masked to half the buffer and reads of at most half the buffer so every write is
 * provably in bounds; the result is copied into the record afterwards.
 *
 * Kernels before 5.17 have no bpf_loop() (and before 5.13 refuse a program that so much as
 * names a callback): exec_*_unrolled run the same steps in an unrolled loop, as deep. There the
 * walk's state lives in a per-CPU map value instead of the stack: loaded from a map, the offset
 * is an unknown number masked into bounds at each step, so the verifier checks each step once
 * instead of once per combination of earlier steps.
 */
struct path_walk {
	struct dentry *d;
	struct mount *mnt;
	__u32 off;
	__u32 depth;
	__u32 complete;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[LG_PATH_LEN]);
} path_scratch SEC(".maps");

static long walk_step(__u64 index, void *arg)
{
	struct path_walk *w = arg;
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&path_scratch, &zero);
	struct dentry *d = w->d;
	struct mount *mnt = w->mnt;
	struct dentry *parent, *root;
	const unsigned char *name;
	__u32 off = w->off;
	long n;

	if (!buf)
		return 1;
	parent = KREAD(struct dentry, d, d_parent);
	root = KREAD(struct mount, mnt, mnt.mnt_root);
	if (d == root) {
		struct mount *up = KREAD(struct mount, mnt, mnt_parent);

		/* The root of the mount tree: done. */
		if (up == mnt) {
			w->complete = 1;
			return 1;
		}
		w->d = KREAD(struct mount, mnt, mnt_mountpoint);
		w->mnt = up;
		return 0;
	}
	if (off >= LG_PATH_LEN / 2)
		return 1;
	name = KREAD(struct dentry, d, d_name.name);
	n = bpf_probe_read_kernel_str(&buf[off & (LG_PATH_LEN / 2 - 1)], LG_PATH_LEN / 2, name);
	if (n <= 0)
		return 1;
	w->off = off + n;
	w->depth++;
	/* A dentry that is its own parent is an anonymous file (memfd, deleted...): its name alone. */
	if (parent == d) {
		w->complete = 1;
		return 1;
	}
	w->d = parent;
	return 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_walk);
} walk_state SEC(".maps");

static __always_inline void read_exe_path(struct lg_exec *e, struct file *f)
{
	struct vfsmount *vmnt = BPF_CORE_READ(f, f_path.mnt);
	struct path_walk w = {
		.d = BPF_CORE_READ(f, f_path.dentry),
		.mnt = container_of(vmnt, struct mount, mnt),
	};
	__u32 zero = 0;
	char *buf;

	bpf_loop(LG_PATH_DEPTH, walk_step, &w, 0);
	buf = bpf_map_lookup_elem(&path_scratch, &zero);
	if (buf)
		bpf_probe_read_kernel(e->path, sizeof(e->path), buf);
	e->path_depth = w.depth;
	e->path_truncated = !w.complete;
}

static __always_inline void read_exe_path_unrolled(struct lg_exec *e, struct file *f)
{
	struct vfsmount *vmnt = BPF_CORE_READ(f, f_path.mnt);
	__u32 zero = 0;
	struct path_walk *w = bpf_map_lookup_elem(&walk_state, &zero);
	char *buf;
	int i;

	if (!w)
		return;
	w->d = BPF_CORE_READ(f, f_path.dentry);
	w->mnt = container_of(vmnt, struct mount, mnt);
	w->off = 0;
	w->depth = 0;
	w->complete = 0;
#pragma unroll
	for (i = 0; i < LG_PATH_DEPTH; i++)
		if (walk_step(i, w))
			break;
	buf = bpf_map_lookup_elem(&path_scratch, &zero);
	if (buf)
		bpf_probe_read_kernel(e->path, sizeof(e->path), buf);
	e->path_depth = w->depth;
	e->path_truncated = !w->complete;
}

/* A memfd's file is named "memfd:<name>" (the kernel's prefix; hugetlb memfds too). */
static __always_inline int is_memfd_prefix(const char p[6])
{
	return p[0] == 'm' && p[1] == 'e' && p[2] == 'm' && p[3] == 'f' && p[4] == 'd' &&
	       p[5] == ':';
}

/*
 * What exec reads from the new image (its mm and executable): the executable's link count and
 * whether it is a memfd into `e`, its file (or NULL) and argv's bounds out.
 */
static __always_inline void exec_image_as(struct lg_exec *e, struct file **exe,
					  unsigned long *start, unsigned long *end, const int btf)
{
	struct mm_struct *mm = TREAD(btf, current_btf(), mm);
	struct file *f = TREAD(btf, mm, exe_file);
	struct dentry *dentry;
	char prefix[6] = {};

	*exe = f;
	*start = TREAD(btf, mm, arg_start);
	*end = TREAD(btf, mm, arg_end);
	if (!f)
		return;
	e->exe_nlink = TREAD(btf, f, f_inode, __i_nlink);
	/* Which file: the agent recognizes its own executable (and redacts its secret flags). */
	e->exe_ino = TREAD(btf, f, f_inode, i_ino);
	e->exe_dev = TREAD(btf, f, f_inode, i_sb, s_dev);
	/*
	 * memfd files are named "memfd:<name>" on an internal shmem mount, where the dentry has no
	 * directory: it is its own parent. A file on disk named "memfd:x" has a parent, and is not
	 * fileless.
	 */
	dentry = TREAD(btf, f, f_path.dentry);
	bpf_probe_read_kernel(prefix, sizeof(prefix), TREAD(btf, dentry, d_name.name));
	if (is_memfd_prefix(prefix) && TREAD(btf, dentry, d_parent) == dentry)
		e->memfd = 1;
}

#define LG_S_IFMT 0170000
#define LG_S_IFSOCK 0140000

/*
 * Which of descriptors 0-2 of the current task are sockets, into e->stdio_sockets (bit i for
 * descriptor i): a shell whose stdin/stdout is a network connection is a reverse shell.
 * files->fdt (plain loads where the task is a BTF pointer, see TREAD), the three slots of
 * fdt->fd in one read (an fd table has at least BITS_PER_LONG slots), then each open file's
 * f_inode->i_mode (CO-RE probe reads): 1 + 2 x 3 reads per exec.
 */
static __always_inline void stdio_sockets_as(struct lg_exec *e, const int btf)
{
	struct files_struct *files = TREAD(btf, current_btf(), files);
	struct fdtable *fdt;
	struct file *f[3] = {};
	umode_t mode;
	__u8 out = 0;
	int i;

	if (!files)
		return;
	fdt = TREAD(btf, files, fdt);
	if (!fdt || TREAD(btf, fdt, max_fds) < 3)
		return;
	if (bpf_probe_read_kernel(f, sizeof(f), TREAD(btf, fdt, fd)) < 0)
		return;
	for (i = 0; i < 3; i++) {
		if (!f[i])
			continue;
		mode = BPF_CORE_READ(f[i], f_inode, i_mode);
		if ((mode & LG_S_IFMT) == LG_S_IFSOCK)
			out |= 1 << i;
	}
	e->stdio_sockets = out;
}

/* The new image's executable as exclude_exe keys it (zero where there is none). */
static __always_inline void exe_key_as(struct lg_exe_key *k, const int btf)
{
	struct mm_struct *mm = TREAD(btf, current_btf(), mm);
	struct file *f = TREAD(btf, mm, exe_file);

	if (!f)
		return;
	k->ino = TREAD(btf, f, f_inode, i_ino);
	k->dev = TREAD(btf, f, f_inode, i_sb, s_dev);
}

/*
 * An exec of an excluded executable marks the process (its later records, and its children's,
 * stay out of the ring: see exclusion()); counted as filtered.
 */
static __always_inline int exec_excluded(void)
{
	struct lg_exe_key k = {};

	if (!have_exclusions || !(exclude_kinds & (1 << LG_FILTER_EXE)))
		return 0;
	BY_TASK_FLAVOUR(exe_key_as, &k);
	if (!bpf_map_lookup_elem(&exclude_exe, &k))
		return 0;
	mark_excluded(bpf_get_current_pid_tgid() >> 32);
	count_filtered(LG_FILTER_EXE);
	return 1;
}

static __always_inline int do_exec(__u32 old_pid, const char *filename, int loop)
{
	struct lg_exec *e;
	struct file *exe;
	unsigned long start, end, len;

	if (is_agent() || exec_excluded())
		return 0;
	e = reserve(sizeof(*e), LG_EXEC);
	if (!e)
		return 0;
	e->type = LG_EXEC;
	e->old_pid = old_pid;
	e->args_truncated = 0;
	e->memfd = 0;
	e->stdio_sockets = 0;
	BY_TASK_FLAVOUR(stdio_sockets_as, e);
	fill_task(&e->task);
	if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), filename) < 0)
		e->filename[0] = 0;

	/* The new image is in place at this tracepoint: mm and exe_file are the new program's. */
	e->path[0] = 0;
	e->path_depth = 0;
	e->path_truncated = 0;
	e->exe_nlink = 0;
	e->exe_ino = 0;
	e->exe_dev = 0;
	BY_TASK_FLAVOUR(exec_image_as, e, &exe, &start, &end);
	if (exe) {
		if (loop)
			read_exe_path(e, exe);
		else
			read_exe_path_unrolled(e, exe);
	}

	/* argv: one user read of [arg_start, arg_end), cut at LG_ARGS_LEN. */
	len = end > start ? end - start : 0;
	if (len > LG_ARGS_LEN) {
		len = LG_ARGS_LEN;
		e->args_truncated = 1;
	}
	/*
	 * Clang may reload `len` from a spilled register and lose the bound: the mask restates it
	 * for the verifier (LG_ARGS_LEN is a power of two, and len <= LG_ARGS_LEN here, so masking
	 * with 2*LG_ARGS_LEN-1 would not be enough; test the bound again instead).
	 */
	if (len > LG_ARGS_LEN)
		len = 0;
	if (len && bpf_probe_read_user(e->args, len, (void *)start) < 0)
		len = 0;
	e->args_len = len;
	submit(e, sizeof(*e));
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return do_exec(old_pid, bprm->filename, 1);
}

/* __data_loc: the low 16 bits are the string's offset from the record start. */
#define EXEC_TP_FILENAME(ctx) ((const char *)(ctx) + ((ctx)->__data_loc_filename & 0xFFFF))

SEC("tracepoint/sched/sched_process_exec")
int exec_tp(struct trace_event_raw_sched_process_exec *ctx)
{
	return do_exec(ctx->old_pid, EXEC_TP_FILENAME(ctx), 1);
}

/* Kernels without bpf_loop() (before 5.17): the unrolled path walk. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_btf_unrolled, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return do_exec(old_pid, bprm->filename, 0);
}

SEC("tracepoint/sched/sched_process_exec")
int exec_tp_unrolled(struct trace_event_raw_sched_process_exec *ctx)
{
	return do_exec(ctx->old_pid, EXEC_TP_FILENAME(ctx), 0);
}

/* ---------------------------------------------------------------- exit */

static __always_inline int do_exit(void)
{
	struct task_struct *task = current_btf();
	struct lg_exit *e;
	__u32 tgid;
	int code, skip;

	/*
	 * Decided before reserving, and the mark forgotten before too: a helper call while the
	 * reservation is held left it "unreleased" for the verifiers of 5.10 and 6.1.
	 */
	skip = have_exclusions ? exclusion() : 0;
	/* Only a marked process has a mark to forget (a delete costs a bucket lock). */
	if (skip == LG_FILTER_EXE + 1) {
		tgid = bpf_get_current_pid_tgid() >> 32;
		bpf_map_delete_elem(&excluded_procs, &tgid);
	}
	if (skip) {
		count_filtered(skip - 1);
		return 0;
	}
	e = reserve_unchecked(sizeof(*e), LG_EXIT);
	if (!e)
		return 0;
	e->type = LG_EXIT;
	fill_task(&e->task);
	code = TREAD(HAVE_TASK_BTF, task, exit_code);
	e->exit_code = (code >> 8) & 0xff;
	e->signal = code & 0x7f;
	e->core_dumped = (code & 0x80) ? 1 : 0;
	submit(e, sizeof(*e));
	return 0;
}

/*
 * One record per process, when its last thread leaves: the tracepoint passes `group_dead`
 * (kernel 6.16+). Reading signal->live here instead would race: two threads exiting together
 * can both see 0 after their decrements and report the process twice.
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(exit_btf, struct task_struct *p, bool group_dead)
{
	if (!group_dead || is_agent())
		return 0;
	return do_exit();
}

/*
 * Kernels before 6.16 where BPF trampolines work (fentry: Debian's, not every kernel): every
 * exiting thread calls taskstats_exit(tsk, group_dead) from do_exit(), after setting its exit
 * code, with the same group_dead the 6.16 tracepoint passes. Nothing is lost against exit_btf.
 */
SEC("fentry/taskstats_exit")
int BPF_PROG(exit_fentry, struct task_struct *tsk, int group_dead)
{
	if (!group_dead || is_agent())
		return 0;
	return do_exit();
}

/*
 * Fallback (kernels whose tracepoint has no group_dead): the thread-group leader's exit
 * stands for the process, as exitsnoop does. A leader that exits before its other threads is
 * reported early; its exit code is then the leader's own.
 */
SEC("tracepoint/sched/sched_process_exit")
int exit_tp(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();

	if ((__u32)id != (id >> 32) || is_agent())
		return 0;
	return do_exit();
}

/* ---------------------------------------------------------------- fork */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(fork_btf, struct task_struct *parent, struct task_struct *child)
{
	struct lg_fork *e;
	__u32 child_tgid = child->tgid;

	if (is_agent())
		return 0;
	/* New threads share the parent's tgid: only new processes are reported. */
	if (child_tgid == parent->tgid)
		return 0;
	inherit_exclusion(child_tgid);
	e = reserve(sizeof(*e), LG_FORK);
	if (!e)
		return 0;
	e->type = LG_FORK;
	fill_task(&e->task);
	e->child_pid = child_tgid;
	e->child_start_boot_ns = child->start_boottime;
	submit(e, sizeof(*e));
	return 0;
}

/*
 * Fallback: the classic tracepoint only carries the child's thread id, so it cannot tell a new
 * thread from a new process: new threads are reported as forks too (docs/events.md says so).
 */
SEC("tracepoint/sched/sched_process_fork")
int fork_tp(struct trace_event_raw_sched_process_fork *ctx)
{
	struct lg_fork *e;

	if (is_agent())
		return 0;
	/* A new thread's id may be marked too: harmless (never a tgid while the thread lives). */
	inherit_exclusion(ctx->child_pid);
	e = reserve(sizeof(*e), LG_FORK);
	if (!e)
		return 0;
	e->type = LG_FORK;
	fill_task(&e->task);
	e->child_pid = ctx->child_pid;
	e->child_start_boot_ns = 0;
	submit(e, sizeof(*e));
	return 0;
}

/* ---------------------------------------------------------------- connect / accept */

static __always_inline void fill_sock(struct lg_sock *e, const struct sock *sk, __u16 family)
{
	e->family = family;
	e->_pad = 0;
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	/* Sized reads: BPF_CORE_READ_INTO on an array would copy sizeof(element), one byte. */
	if (family == AF_INET) {
		bpf_core_read(e->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(e->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(e->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(e->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

/*
 * Outbound connects take two hooks. CLOSE -> SYN_SENT (inet_sock_set_state) runs in the
 * connecting task inside connect(), but before the kernel picks the local port: we only note
 * the socket there (by thread), and report at the connect() return, when the source port is
 * known and the result too (0, or -EINPROGRESS for a non-blocking connect, or an error).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} connecting SEC(".maps");

static __always_inline void note_connect(const void *sk)
{
	__u32 key = (__u32)bpf_get_current_pid_tgid();
	__u64 v = (__u64)sk;

	bpf_map_update_elem(&connecting, &key, &v, BPF_ANY);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(connect_btf, const struct sock *sk, const int oldstate, const int newstate)
{
	__u16 family;

	if (newstate != TCP_SYN_SENT || is_agent())
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	note_connect(sk);
	return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int connect_tp(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->newstate != TCP_SYN_SENT || ctx->protocol != IPPROTO_TCP || is_agent())
		return 0;
	if (ctx->family != AF_INET && ctx->family != AF_INET6)
		return 0;
	note_connect(ctx->skaddr);
	return 0;
}

/*
 * A socket noted by a thread that never returns through connect() (TCP Fast Open via
 * sendto(MSG_FASTOPEN), io_uring IORING_OP_CONNECT, a kernel-internal connect made on the
 * thread's behalf) would otherwise stay in `connecting` and be reported, with a stale and
 * possibly freed socket, at the thread's next connect() that does not reach SYN_SENT (a UDP
 * connect() in every DNS lookup). Every connect() starts from a clean slate.
 */
static __always_inline int connect_begin(void)
{
	__u32 key = (__u32)bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&connecting, &key);
	return 0;
}

static __always_inline int connect_end(long ret)
{
	__u32 key = (__u32)bpf_get_current_pid_tgid();
	__u64 *v = bpf_map_lookup_elem(&connecting, &key);
	const struct sock *sk;
	struct lg_sock *e;

	if (!v)
		return 0;
	/* The socket stays alive here: the caller's fd holds it until connect() returns. */
	sk = (const struct sock *)*v;
	bpf_map_delete_elem(&connecting, &key);
	e = reserve(sizeof(*e), LG_CONNECT);
	if (!e)
		return 0;
	e->type = LG_CONNECT;
	fill_task(&e->task);
	fill_sock(e, sk, BPF_CORE_READ(sk, __sk_common.skc_family));
	e->ret = ret;
	submit(e, sizeof(*e));
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int connect_enter(struct trace_event_raw_sys_enter *ctx)
{
	return connect_begin();
}

SEC("tracepoint/syscalls/sys_exit_connect")
int connect_exit(struct trace_event_raw_sys_exit *ctx)
{
	return connect_end(ctx->ret);
}

/*
 * Inbound: the handshake completes in softirq context (no owning process), so accept is seen at
 * the accept()/accept4() return instead, in the accepting task: the returned fd is looked up in
 * its file table (files->fdt->fd[ret]->private_data is the struct socket).
 */
/*
 * The file behind the current task's descriptor `fd` (one a syscall just returned), or NULL.
 * Another thread may close the descriptor and reuse the number at any time: callers check
 * that the file is of the kind they expect.
 */
static __always_inline struct file *fd_file(long fd)
{
	struct task_struct *task = current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = NULL;

	if (fd < 0 || !fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) < 0)
		return NULL;
	return f;
}

/*
 * The socket behind the current task's descriptor `fd`, or NULL. Another thread may have closed
 * the descriptor and reused the slot for a file that is not a socket: private_data is then
 * something else, so the struct socket must point back at the file.
 */
static __always_inline struct sock *fd_sock(long fd)
{
	struct file *f = fd_file(fd);
	struct socket *sock;

	if (!f)
		return NULL;
	sock = BPF_CORE_READ(f, private_data);
	if (!sock || BPF_CORE_READ(sock, file) != f)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

static __always_inline int do_accept(long ret)
{
	const struct sock *sk;
	struct lg_sock *e;
	__u16 family;

	if (ret < 0 || is_agent())
		return 0;
	sk = fd_sock(ret);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	e = reserve(sizeof(*e), LG_ACCEPT);
	if (!e)
		return 0;
	e->type = LG_ACCEPT;
	fill_task(&e->task);
	fill_sock(e, sk, family);
	e->ret = ret;
	submit(e, sizeof(*e));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int accept4_exit(struct trace_event_raw_sys_exit *ctx)
{
	return do_accept(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	return do_accept(ctx->ret);
}

/* ---------------------------------------------------------------- credentials */

static __always_inline __u32 tid(void)
{
	return (__u32)bpf_get_current_pid_tgid();
}

static __always_inline int stash(__u64 a0, __u64 a1, int with_creds)
{
	struct pending p = {};
	__u32 key = tid();

	if (is_agent())
		return 0;
	p.args[0] = a0;
	p.args[1] = a1;
	if (with_creds)
		read_creds(&p.creds);
	bpf_map_update_elem(&pending, &key, &p, BPF_ANY);
	return 0;
}

/* Field by field: __builtin_memcmp is not inlined for BPF and there is no memcmp to call. */
/* Before a credential syscall: the credentials as they were. */
static __always_inline int creds_begin(void)
{
	return stash(0, 0, 1);
}

static __always_inline int creds_equal(const struct lg_creds *a, const struct lg_creds *b)
{
	return a->uid == b->uid && a->euid == b->euid && a->suid == b->suid &&
	       a->fsuid == b->fsuid && a->gid == b->gid && a->egid == b->egid &&
	       a->sgid == b->sgid && a->fsgid == b->fsgid && a->cap_effective == b->cap_effective &&
	       a->cap_permitted == b->cap_permitted && a->cap_inheritable == b->cap_inheritable;
}

/* Report a credential syscall only when it succeeded AND changed something. */
static __always_inline int creds_end(long ret, __u32 call)
{
	__u32 key = tid();
	struct pending *p = bpf_map_lookup_elem(&pending, &key);
	struct lg_creds now = {};
	struct lg_creds_event *e;

	if (!p)
		return 0;
	if (ret < 0 && call != LG_SETFSUID && call != LG_SETFSGID)
		goto out;
	read_creds(&now);
	if (creds_equal(&now, &p->creds))
		goto out;
	e = reserve(sizeof(*e), LG_CREDS);
	if (!e)
		goto out;
	e->type = LG_CREDS;
	e->syscall = call;
	fill_task(&e->task);
	e->old = p->creds;
	e->new = now;
	submit(e, sizeof(*e));
out:
	bpf_map_delete_elem(&pending, &key);
	return 0;
}

#define CRED_HOOKS(name, call)                                                   \
	SEC("tracepoint/syscalls/sys_enter_" #name)                              \
	int name##_enter(struct trace_event_raw_sys_enter *ctx)                  \
	{                                                                        \
		return creds_begin();                                            \
	}                                                                        \
	SEC("tracepoint/syscalls/sys_exit_" #name)                               \
	int name##_exit(struct trace_event_raw_sys_exit *ctx)                    \
	{                                                                        \
		return creds_end(ctx->ret, call);                                \
	}

CRED_HOOKS(setuid, LG_SETUID)
CRED_HOOKS(setgid, LG_SETGID)
CRED_HOOKS(setreuid, LG_SETREUID)
CRED_HOOKS(setregid, LG_SETREGID)
CRED_HOOKS(setresuid, LG_SETRESUID)
CRED_HOOKS(setresgid, LG_SETRESGID)
CRED_HOOKS(setfsuid, LG_SETFSUID)
CRED_HOOKS(setfsgid, LG_SETFSGID)
CRED_HOOKS(capset, LG_CAPSET)

/*
 * The native tracepoint pair of a syscall whose event code is <name>_begin(arg0, arg1) at entry
 * and <name>_end(ret) at exit; the compat hook below calls the same two.
 */
#define SYSCALL_HOOKS(name, sys)                                         \
	SEC("tracepoint/syscalls/sys_enter_" #sys)                       \
	int name##_enter(struct trace_event_raw_sys_enter *ctx)          \
	{                                                                \
		return name##_begin(ctx->args[0], ctx->args[1]);         \
	}                                                                \
	SEC("tracepoint/syscalls/sys_exit_" #sys)                        \
	int name##_exit(struct trace_event_raw_sys_exit *ctx)            \
	{                                                                \
		return name##_end(ctx->ret);                             \
	}

/* ---------------------------------------------------------------- ptrace */

static __always_inline int ptrace_begin(__u64 req, __u64 pid)
{
	if (req != PTRACE_ATTACH && req != PTRACE_SEIZE)
		return 0;
	return stash(req, pid, 0);
}

/*
 * The tracee as the host sees it. The pid the caller passed is a number in ITS pid namespace
 * (inside a container, 1 is the container's init, not the host's).
 * - A tracer in the initial pid namespace passed a host pid: kept as it is.
 * - Otherwise, after a successful attach, __ptrace_link() has put the tracee at the head of the
 *   tracer thread's `ptraced` list. Other tracees can be added there too (their CLONE_PTRACE
 *   or traced forks), so the head is taken only when its number in the tracer's namespace is
 *   the one the tracer passed; its thread-group id is then the host pid.
 * - Else the number stays the tracer's own (target_host = 0).
 */
static __always_inline void tracee_host_pid(struct lg_ptrace *e)
{
	struct task_struct *task = current_task();
	struct list_head *head = &task->ptraced;
	struct list_head *first;
	struct task_struct *t;
	struct pid *tp, *mine = BPF_CORE_READ(task, thread_pid);
	struct upid up = {}, me = {};
	unsigned int level = BPF_CORE_READ(mine, level);

	if (level == 0) {
		e->target_host = 1;
		return;
	}
	if (e->ret != 0)
		return;
	first = BPF_CORE_READ(task, ptraced.next);
	if (!first || first == head)
		return;
	t = container_of(first, struct task_struct, ptrace_entry);
	tp = BPF_CORE_READ(t, thread_pid);
	/*
	 * Its number in the tracer's pid namespace (a plain value as the index, as in
	 * fill_task()): same namespace, same number.
	 */
	if (!tp || BPF_CORE_READ(tp, level) < level ||
	    bpf_probe_read_kernel(&up, sizeof(up), &tp->numbers[level]) < 0 ||
	    bpf_probe_read_kernel(&me, sizeof(me), &mine->numbers[level]) < 0 ||
	    up.ns != me.ns || up.nr != (int)e->target_pid)
		return;
	e->target_pid = BPF_CORE_READ(t, tgid);
	e->target_host = 1;
}

static __always_inline int ptrace_end(long ret)
{
	__u32 key = tid();
	struct pending *p = bpf_map_lookup_elem(&pending, &key);
	struct lg_ptrace *e;

	if (!p)
		return 0;
	e = reserve(sizeof(*e), LG_PTRACE);
	if (e) {
		e->type = LG_PTRACE;
		e->request = p->args[0];
		e->target_pid = p->args[1];
		e->target_host = 0;
		e->_pad = 0;
		e->ret = ret;
		tracee_host_pid(e);
		fill_task(&e->task);
		submit(e, sizeof(*e));
	}
	bpf_map_delete_elem(&pending, &key);
	return 0;
}

SYSCALL_HOOKS(ptrace, ptrace)

/* ---------------------------------------------------------------- bpf program loads */

static __always_inline int bpf_begin(__u64 cmd, __u64 attr)
{
	if (cmd != BPF_PROG_LOAD_CMD)
		return 0;
	return stash(attr, 0, 0);
}

/* The start of a file's dentry name: at most 15 bytes of it, NUL-terminated and padded. */
static __always_inline void file_name16(struct file *f, char name[16])
{
	const unsigned char *n = BPF_CORE_READ(f, f_path.dentry, d_name.name);

	__builtin_memset(name, 0, 16);
	bpf_probe_read_kernel_str(name, 16, n);
}

/*
 * The loaded program, read from the kernel through the returned fd: the caller's attr is its
 * own memory, which another thread may rewrite while the verifier runs, so after a successful
 * load only the kernel's copy is believed. Program fds are anonymous-inode files named
 * "bpf-prog" whose private_data is the struct bpf_prog. Returns 0 when it could not.
 */
static __always_inline int loaded_prog(struct lg_bpf_load *e, long fd)
{
	struct file *f = fd_file(fd);
	struct bpf_prog *prog;
	char name[16];

	if (!f)
		return 0;
	file_name16(f, name);
	if (name[0] != 'b' || name[1] != 'p' || name[2] != 'f' || name[3] != '-' ||
	    name[4] != 'p' || name[5] != 'r' || name[6] != 'o' || name[7] != 'g' || name[8] != 0)
		return 0;
	prog = BPF_CORE_READ(f, private_data);
	if (!prog)
		return 0;
	e->prog_type = BPF_CORE_READ(prog, type);
	e->insn_cnt = BPF_CORE_READ(prog, len);
	BPF_CORE_READ_STR_INTO(&e->prog_name, prog, aux, name);
	return 1;
}

static __always_inline int bpf_end(long ret)
{
	__u32 key = tid();
	struct pending *p = bpf_map_lookup_elem(&pending, &key);
	struct lg_bpf_load *e;
	void *attr;

	if (!p)
		return 0;
	attr = (void *)p->args[0];
	e = reserve(sizeof(*e), LG_BPF_LOAD);
	if (e) {
		e->type = LG_BPF_LOAD;
		e->ret = ret;
		e->prog_type = 0;
		e->insn_cnt = 0;
		__builtin_memset(e->prog_name, 0, sizeof(e->prog_name));
		/* A failed load has no kernel copy: what the caller asked for, from its memory. */
		if (ret < 0 || !loaded_prog(e, ret)) {
			bpf_probe_read_user(&e->prog_type, sizeof(e->prog_type),
					    attr + __builtin_offsetof(union bpf_attr, prog_type));
			bpf_probe_read_user(&e->insn_cnt, sizeof(e->insn_cnt),
					    attr + __builtin_offsetof(union bpf_attr, insn_cnt));
			bpf_probe_read_user(e->prog_name, sizeof(e->prog_name),
					    attr + __builtin_offsetof(union bpf_attr, prog_name));
		}
		fill_task(&e->task);
		submit(e, sizeof(*e));
	}
	bpf_map_delete_elem(&pending, &key);
	return 0;
}

SYSCALL_HOOKS(bpf, bpf)

/* ---------------------------------------------------------------- memfd_create */

static __always_inline int memfd_begin(__u64 name, __u64 flags)
{
	return stash(name, flags, 0);
}

/*
 * The memfd's name as the kernel keeps it, through the returned fd: the caller's string is its
 * own memory, which another thread may rewrite before the exit, so after a successful call
 * only the kernel's copy is believed. The file is "memfd:<name>", with no directory (its
 * dentry is its own parent). Returns 0 when it could not.
 */
static __always_inline int memfd_name(struct lg_memfd *e, long fd)
{
	struct file *f = fd_file(fd);
	struct dentry *d;
	const unsigned char *n;
	char prefix[6];

	if (!f)
		return 0;
	d = BPF_CORE_READ(f, f_path.dentry);
	if (!d || BPF_CORE_READ(d, d_parent) != d)
		return 0;
	n = BPF_CORE_READ(d, d_name.name);
	if (bpf_probe_read_kernel(prefix, sizeof(prefix), n) < 0 || !is_memfd_prefix(prefix))
		return 0;
	return bpf_probe_read_kernel_str(e->name, sizeof(e->name), n + sizeof(prefix)) > 0;
}

static __always_inline int memfd_end(long ret)
{
	__u32 key = tid();
	struct pending *p = bpf_map_lookup_elem(&pending, &key);
	struct lg_memfd *e;

	if (!p)
		return 0;
	e = reserve(sizeof(*e), LG_MEMFD);
	if (e) {
		e->type = LG_MEMFD;
		e->flags = p->args[1];
		e->ret = ret;
		e->_pad = 0;
		/* A failed call has no file: the name the caller asked for, from its memory. */
		if ((ret < 0 || !memfd_name(e, ret)) &&
		    bpf_probe_read_user_str(e->name, sizeof(e->name), (void *)p->args[0]) < 0)
			e->name[0] = 0;
		fill_task(&e->task);
		submit(e, sizeof(*e));
	}
	bpf_map_delete_elem(&pending, &key);
	return 0;
}

SYSCALL_HOOKS(memfd, memfd_create)

/* ---------------------------------------------------------------- 32-bit (compat) syscalls */

/*
 * On x86_64 a syscall made through the 32-bit entries (`int $0x80`, sysenter, or syscall from
 * a 32-bit code segment; from a 32-bit process or from a 64-bit one) does not fire the
 * per-syscall `syscalls:sys_enter_*`/`sys_exit_*` tracepoints: the kernel's syscall tracing
 * skips every compat syscall (arch_trace_is_compat_syscall). Without this section an attacker
 * could setuid, capset, ptrace, load BPF, memfd_create, accept and connect unseen through
 * `int $0x80`. arm64 does the same to AArch32 processes' syscalls (`svc #0` from AArch32 EL0,
 * on kernels with CONFIG_COMPAT and CPUs that run AArch32). The raw `sys_enter`/`sys_exit`
 * tracepoints fire for every syscall; the programs below leave at once unless the current
 * syscall is a compat one the sensor reports, and then hand it to the SAME helpers the native
 * tracepoints use (creds_begin/creds_end, ptrace_begin/ptrace_end, ...): one code path per
 * event type.
 *
 * They run on EVERY syscall of every task, so the order of the tests is the cost:
 *  1. the syscall number, from the context (sys_enter) or the saved registers (sys_exit): a few
 *     compares, no helper call; almost every native syscall number fails it;
 *  2. whether the syscall is a compat one (per arch, below).
 */
#if defined(__TARGET_ARCH_x86)
/*
 * x86_64: the 32-bit entry sets TS_COMPAT in current->thread_info.status before the syscall is
 * traced and the kernel clears it on every return to user space, after the sys_exit tracepoint
 * (arch/x86: syscall_32_enter(), arch_exit_to_user_mode_prepare()). Its value, 0x0002, is a
 * #define (not in BTF), unchanged since it was introduced. The field is read through CO-RE and
 * the test compiles to "not compat" where it does not exist.
 */
#define LG_TS_COMPAT 0x0002

/* i386 syscall numbers (arch/x86/entry/syscalls/syscall_32.tbl): a fixed ABI. */
#define COMPAT_NR_SETUID16 23
#define COMPAT_NR_PTRACE 26
#define COMPAT_NR_SETGID16 46
#define COMPAT_NR_SETREUID16 70
#define COMPAT_NR_SETREGID16 71
#define COMPAT_NR_SOCKETCALL 102
#define COMPAT_NR_SETFSUID16 138
#define COMPAT_NR_SETFSGID16 139
#define COMPAT_NR_SETRESUID16 164
#define COMPAT_NR_SETRESGID16 170
#define COMPAT_NR_CAPSET 185
#define COMPAT_NR_SETREUID 203
#define COMPAT_NR_SETREGID 204
#define COMPAT_NR_SETRESUID 208
#define COMPAT_NR_SETRESGID 210
#define COMPAT_NR_SETUID 213
#define COMPAT_NR_SETGID 214
#define COMPAT_NR_SETFSUID 215
#define COMPAT_NR_SETFSGID 216
#define COMPAT_NR_MEMFD_CREATE 356
#define COMPAT_NR_BPF 357
#define COMPAT_NR_CONNECT 362
#define COMPAT_NR_ACCEPT4 364
#elif defined(__TARGET_ARCH_arm64)
/*
 * arm64: a syscall is an AArch32 one exactly when it was made from AArch32 EL0, which the
 * saved PSTATE says: SPSR_EL1.M[4] (PSR_MODE32_BIT, 0x10), an architectural bit. This is the
 * kernel's own compat_user_mode(regs) and what in_compat_syscall() (TIF_32BIT) amounts to: an
 * arm64 task cannot switch between the two ABIs, so no thread flag is needed.
 */
#define LG_PSR_MODE32_BIT 0x10

/* AArch32 (EABI) syscall numbers (arch/arm64/include/asm/unistd32.h): a fixed ABI. No socketcall. */
#define COMPAT_NR_SETUID16 23
#define COMPAT_NR_PTRACE 26
#define COMPAT_NR_SETGID16 46
#define COMPAT_NR_SETREUID16 70
#define COMPAT_NR_SETREGID16 71
#define COMPAT_NR_SETFSUID16 138
#define COMPAT_NR_SETFSGID16 139
#define COMPAT_NR_SETRESUID16 164
#define COMPAT_NR_SETRESGID16 170
#define COMPAT_NR_CAPSET 185
#define COMPAT_NR_SETREUID 203
#define COMPAT_NR_SETREGID 204
#define COMPAT_NR_SETRESUID 208
#define COMPAT_NR_SETRESGID 210
#define COMPAT_NR_SETUID 213
#define COMPAT_NR_SETGID 214
#define COMPAT_NR_SETFSUID 215
#define COMPAT_NR_SETFSGID 216
#define COMPAT_NR_CONNECT 283
#define COMPAT_NR_ACCEPT 285
#define COMPAT_NR_ACCEPT4 366
#define COMPAT_NR_MEMFD_CREATE 385
#define COMPAT_NR_BPF 386
#else
#error "the compat syscall hook knows x86 and arm64: add this arch's compat ABI (or none) here"
#endif
/* socketcall(call, args) multiplexer calls (include/uapi/linux/net.h). */
#define SYS_CONNECT 3
#define SYS_ACCEPT 5
#define SYS_ACCEPT4 18

/*
 * What a compat syscall number stands for: a credential call (enum lg_cred_call, 1..LG_CAPSET;
 * the 16-bit uid/gid variants and the 32-bit ones report alike), one of the kinds below, or 0.
 */
enum compat_kind {
	COMPAT_K_PTRACE = 16,
	COMPAT_K_BPF,
	COMPAT_K_MEMFD,
	COMPAT_K_CONNECT,
	COMPAT_K_ACCEPT4,
	COMPAT_K_SOCKETCALL,
};

static __always_inline __u32 compat_kind(long nr)
{
	switch (nr) {
	case COMPAT_NR_SETUID16:
	case COMPAT_NR_SETUID:
		return LG_SETUID;
	case COMPAT_NR_SETGID16:
	case COMPAT_NR_SETGID:
		return LG_SETGID;
	case COMPAT_NR_SETREUID16:
	case COMPAT_NR_SETREUID:
		return LG_SETREUID;
	case COMPAT_NR_SETREGID16:
	case COMPAT_NR_SETREGID:
		return LG_SETREGID;
	case COMPAT_NR_SETRESUID16:
	case COMPAT_NR_SETRESUID:
		return LG_SETRESUID;
	case COMPAT_NR_SETRESGID16:
	case COMPAT_NR_SETRESGID:
		return LG_SETRESGID;
	case COMPAT_NR_SETFSUID16:
	case COMPAT_NR_SETFSUID:
		return LG_SETFSUID;
	case COMPAT_NR_SETFSGID16:
	case COMPAT_NR_SETFSGID:
		return LG_SETFSGID;
	case COMPAT_NR_CAPSET:
		return LG_CAPSET;
	case COMPAT_NR_PTRACE:
		return COMPAT_K_PTRACE;
	case COMPAT_NR_BPF:
		return COMPAT_K_BPF;
	case COMPAT_NR_MEMFD_CREATE:
		return COMPAT_K_MEMFD;
	case COMPAT_NR_CONNECT:
		return COMPAT_K_CONNECT;
#ifdef COMPAT_NR_ACCEPT
	case COMPAT_NR_ACCEPT:
#endif
	case COMPAT_NR_ACCEPT4:
		return COMPAT_K_ACCEPT4;
#ifdef COMPAT_NR_SOCKETCALL
	case COMPAT_NR_SOCKETCALL:
		return COMPAT_K_SOCKETCALL;
#endif
	}
	return 0;
}

/*
 * The hook flavours differ only in how they read the kernel: tp_btf through BTF pointers
 * (direct loads, the current task without a probe read), raw_tp through probe reads. `btf` is
 * a constant in each program, so only one branch is compiled into it.
 */
#if defined(__TARGET_ARCH_x86)
static __always_inline int in_compat_syscall(struct pt_regs *regs, int btf)
{
	struct task_struct *t;

	if (btf) {
		t = current_btf();
		if (!bpf_core_field_exists(t->thread_info.status))
			return 0;
		return TREAD(HAVE_TASK_BTF, t, thread_info.status) & LG_TS_COMPAT;
	}
	t = current_task();
	if (!bpf_core_field_exists(t->thread_info.status))
		return 0;
	return BPF_CORE_READ(t, thread_info.status) & LG_TS_COMPAT;
}

static __always_inline long syscall_nr(struct pt_regs *regs, int btf)
{
	return btf ? regs->orig_ax : BPF_CORE_READ(regs, orig_ax);
}

/*
 * Compat syscall arguments are the low 32 bits of ebx, ecx, ... (the kernel's ia32 wrappers
 * truncate them too): a 64-bit caller's garbage in the upper halves must not reach us either.
 * Read only after both tests passed, so always through CO-RE probe reads.
 */
static __always_inline __u64 compat_arg0(struct pt_regs *regs)
{
	return (__u32)BPF_CORE_READ(regs, bx);
}

static __always_inline __u64 compat_arg1(struct pt_regs *regs)
{
	return (__u32)BPF_CORE_READ(regs, cx);
}
#elif defined(__TARGET_ARCH_arm64)
static __always_inline int in_compat_syscall(struct pt_regs *regs, int btf)
{
	return (btf ? regs->pstate : BPF_CORE_READ(regs, pstate)) & LG_PSR_MODE32_BIT;
}

static __always_inline long syscall_nr(struct pt_regs *regs, int btf)
{
	return btf ? regs->syscallno : BPF_CORE_READ(regs, syscallno);
}

/*
 * AArch32 syscall arguments are the low 32 bits of x0, x1, ... At sys_exit x0 holds the return
 * value: the first argument is read from orig_x0, which the syscall entry copies it to.
 */
static __always_inline __u64 compat_arg0(struct pt_regs *regs)
{
	return (__u32)BPF_CORE_READ(regs, orig_x0);
}

static __always_inline __u64 compat_arg1(struct pt_regs *regs)
{
	return (__u32)BPF_CORE_READ(regs, regs[1]);
}
#endif

/*
 * The events of bpf/syscalls.bpf.h (namespace, mount, module_load, ...) see their syscalls,
 * native and 32-bit, through these same two programs, first thing (defined there).
 */
static __always_inline void more_enter(struct pt_regs *regs, long nr, int btf);
static __always_inline void more_exit(struct pt_regs *regs, long ret, int btf);

/* At a compat sys_enter: the native programs' enter halves. */
static __always_inline int compat_enter(struct pt_regs *regs, long nr, int btf, int dispatch)
{
	__u32 kind;

	if (dispatch)
		more_enter(regs, nr, btf);
	kind = compat_kind(nr);
	if (!kind || !in_compat_syscall(regs, btf))
		return 0;
	if (kind <= LG_CAPSET)
		return creds_begin();
	switch (kind) {
	case COMPAT_K_PTRACE:
		/* compat_long_t request and pid: sign-extend as the kernel does. */
		return ptrace_begin((__u64)(__s64)(__s32)compat_arg0(regs),
				    (__u64)(__s64)(__s32)compat_arg1(regs));
	case COMPAT_K_BPF:
		return bpf_begin(compat_arg0(regs), compat_arg1(regs));
	case COMPAT_K_MEMFD:
		return memfd_begin(compat_arg0(regs), compat_arg1(regs));
	case COMPAT_K_CONNECT:
		return connect_begin();
	case COMPAT_K_SOCKETCALL:
		if (compat_arg0(regs) == SYS_CONNECT)
			return connect_begin();
		return 0;
	}
	return 0;
}

/*
 * At a compat sys_exit: the exit halves. The user registers holding the arguments are intact
 * (a syscall returns in eax / x0 only), so socketcall's call number is read again from ebx.
 */
static __always_inline int compat_exit(struct pt_regs *regs, long ret, int btf, int dispatch)
{
	__u32 kind;

	if (dispatch)
		more_exit(regs, ret, btf);
	kind = compat_kind(syscall_nr(regs, btf));
	if (!kind || !in_compat_syscall(regs, btf))
		return 0;
	if (kind <= LG_CAPSET)
		return creds_end(ret, kind);
	switch (kind) {
	case COMPAT_K_PTRACE:
		return ptrace_end(ret);
	case COMPAT_K_BPF:
		return bpf_end(ret);
	case COMPAT_K_MEMFD:
		return memfd_end(ret);
	case COMPAT_K_CONNECT:
		return connect_end(ret);
	case COMPAT_K_ACCEPT4:
		return do_accept(ret);
	case COMPAT_K_SOCKETCALL:
		switch (compat_arg0(regs)) {
		case SYS_CONNECT:
			return connect_end(ret);
		case SYS_ACCEPT:
		case SYS_ACCEPT4:
			return do_accept(ret);
		}
		return 0;
	}
	return 0;
}

/*
 * The compat hook's programs come in two sets. The dispatching set (disp_*) also serves the
 * events of bpf/syscalls.bpf.h, whose code needs bpf_loop() (Linux 5.17+) and x86_64's syscall
 * numbers; the plain set (compat_*) is the compat hook alone, for the kernels and architectures
 * the dispatcher cannot run on. `dispatch` is a constant: the plain set carries none of it.
 */
SEC("tp_btf/sys_enter")
int BPF_PROG(disp_enter_btf, struct pt_regs *regs, long id)
{
	return compat_enter(regs, id, 1, 1);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(disp_exit_btf, struct pt_regs *regs, long ret)
{
	return compat_exit(regs, ret, 1, 1);
}

SEC("raw_tp/sys_enter")
int disp_enter_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return compat_enter((struct pt_regs *)ctx->args[0], ctx->args[1], 0, 1);
}

SEC("raw_tp/sys_exit")
int disp_exit_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return compat_exit((struct pt_regs *)ctx->args[0], ctx->args[1], 0, 1);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(compat_enter_btf, struct pt_regs *regs, long id)
{
	return compat_enter(regs, id, 1, 0);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(compat_exit_btf, struct pt_regs *regs, long ret)
{
	return compat_exit(regs, ret, 1, 0);
}

/* Fallback: raw tracepoints (untyped arguments, probe reads). */
SEC("raw_tp/sys_enter")
int compat_enter_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return compat_enter((struct pt_regs *)ctx->args[0], ctx->args[1], 0, 0);
}

SEC("raw_tp/sys_exit")
int compat_exit_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return compat_exit((struct pt_regs *)ctx->args[0], ctx->args[1], 0, 0);
}

/* ---------------------------------------------------------------- issue 17: more events */

#include "syscalls.bpf.h"
