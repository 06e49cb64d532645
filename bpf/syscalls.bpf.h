/* SPDX-License-Identifier: GPL-2.0 */
/*
 * syscalls.bpf.h: the events that come from syscalls the agent started watching with issue 17:
 * namespace changes (setns, unshare, clone/clone3 with CLONE_NEW*), mounts (mount, umount,
 * move_mount, fsmount, open_tree, pivot_root) and kernel-module loads (init_module,
 * finit_module). Included at the end of sensor.bpf.c.
 *
 * Two ways in, one code path (op_enter/op_exit):
 *  - the dispatcher: the compat hook's raw sys_enter/sys_exit programs, which already run on
 *    every syscall, call more_enter()/more_exit() first. A syscall number none of these events
 *    wants fails two compares; nothing else is added to any syscall. Native numbers and their
 *    32-bit (int $0x80) numbers lead to the same ops, so 32-bit calls are seen like native ones.
 *    Each event's use of it is a .rodata knob (want_*), set only when user space chose the
 *    dispatcher for that event: the verifier drops the code of the others.
 *  - per-syscall tracepoints (`syscalls:sys_{enter,exit}_*`) where the dispatcher is not
 *    running (--compat-syscalls=false): the same ops, the registers from bpf_task_pt_regs().
 *
 * Strings in these events (mount sources and targets, module parameters) are the caller's
 * memory read at the syscall's exit: another thread of the caller can change them after the
 * kernel copied them (docs/events.md says so). Paths of files are never the caller's: they are
 * composed from the kernel's dentries (bpf/paths.bpf.h).
 */
#ifndef LG_SYSCALLS_BPF_H
#define LG_SYSCALLS_BPF_H

#include "paths.bpf.h"
#include "sysargs.bpf.h"

/* Which events the dispatcher serves (set by user space before load). */
const volatile bool want_ns = false;
const volatile bool want_mount = false;
const volatile bool want_module = false;

/* Dummy instances: make the skeleton emit `types::*` for these records and enums. */
struct lg_namespace _lg_namespace = {};
struct lg_mount _lg_mount = {};
struct lg_module_load _lg_module_load = {};
enum lg_ns_call _lg_ns_call = LG_NS_SETNS;
enum lg_mount_call _lg_mount_call = LG_MOUNT_MOUNT;
enum lg_module_call _lg_module_call = LG_MODULE_INIT;

/* x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl): a fixed ABI. */
#define NR_CLONE 56
#define NR_PIVOT_ROOT 155
#define NR_MOUNT 165
#define NR_UMOUNT2 166
#define NR_INIT_MODULE 175
#define NR_UNSHARE 272
#define NR_SETNS 308
#define NR_FINIT_MODULE 313
/* ...and the numbers both ABIs share (424 and up). */
#define NR_OPEN_TREE 428
#define NR_MOVE_MOUNT 429
#define NR_FSMOUNT 432
#define NR_CLONE3 435
#define NR_ACCEPT 43
#define NR_ACCEPT4 288
#define IA32_ACCEPT4 364
#define NR_SENDTO 44
#define NR_SENDMSG 46
#define NR_SENDMMSG 307
#define IA32_SENDMMSG 345
#define IA32_SENDTO 369
#define IA32_SENDMSG 370
#define NR_OPEN 2
#define NR_RENAME 82
#define NR_MKDIR 83
#define NR_RMDIR 84
#define NR_CREAT 85
#define NR_LINK 86
#define NR_UNLINK 87
#define NR_SYMLINK 88
#define NR_CHMOD 90
#define NR_FCHMOD 91
#define NR_OPENAT 257
#define NR_MKDIRAT 258
#define NR_UNLINKAT 263
#define NR_RENAMEAT 264
#define NR_LINKAT 265
#define NR_SYMLINKAT 266
#define NR_FCHMODAT 268
#define NR_OPEN_BY_HANDLE_AT 304
#define NR_RENAMEAT2 316
#define NR_OPENAT2 437
#define NR_FCHMODAT2 452
#define NR_CONNECT 42
/* i386 numbers (syscall_32.tbl). */
#define IA32_OPEN 5
#define IA32_CREAT 8
#define IA32_LINK 9
#define IA32_UNLINK 10
#define IA32_CHMOD 15
#define IA32_RENAME 38
#define IA32_MKDIR 39
#define IA32_RMDIR 40
#define IA32_SYMLINK 83
#define IA32_FCHMOD 94
#define IA32_OPENAT 295
#define IA32_MKDIRAT 296
#define IA32_UNLINKAT 301
#define IA32_RENAMEAT 302
#define IA32_LINKAT 303
#define IA32_SYMLINKAT 304
#define IA32_FCHMODAT 306
#define IA32_OPEN_BY_HANDLE_AT 342
#define IA32_RENAMEAT2 353
#define IA32_CONNECT 362
#define IA32_MOUNT 21
#define IA32_OLDUMOUNT 22
#define IA32_UMOUNT2 52
#define IA32_CLONE 120
#define IA32_INIT_MODULE 128
#define IA32_PIVOT_ROOT 217
#define IA32_UNSHARE 310
#define IA32_SETNS 346
#define IA32_FINIT_MODULE 350

/*
 * Every number above as a 512-bit set: the dispatcher's first test, one load and one bit test,
 * so that the syscalls none of these events wants (nearly all) leave at once.
 */
#define NRBIT(n, w) ((((n) >> 6) == (w)) ? (1ULL << ((n) & 63)) : 0)
#define NRWORD(w) ( \
	NRBIT(NR_CLONE, w) | \
	NRBIT(NR_PIVOT_ROOT, w) | \
	NRBIT(NR_MOUNT, w) | \
	NRBIT(NR_UMOUNT2, w) | \
	NRBIT(NR_INIT_MODULE, w) | \
	NRBIT(NR_UNSHARE, w) | \
	NRBIT(NR_SETNS, w) | \
	NRBIT(NR_FINIT_MODULE, w) | \
	NRBIT(NR_OPEN_TREE, w) | \
	NRBIT(NR_MOVE_MOUNT, w) | \
	NRBIT(NR_FSMOUNT, w) | \
	NRBIT(NR_CLONE3, w) | \
	NRBIT(NR_ACCEPT, w) | \
	NRBIT(NR_ACCEPT4, w) | \
	NRBIT(IA32_ACCEPT4, w) | \
	NRBIT(NR_SENDTO, w) | \
	NRBIT(NR_SENDMSG, w) | \
	NRBIT(NR_SENDMMSG, w) | \
	NRBIT(IA32_SENDMMSG, w) | \
	NRBIT(IA32_SENDTO, w) | \
	NRBIT(IA32_SENDMSG, w) | \
	NRBIT(NR_OPEN, w) | \
	NRBIT(NR_RENAME, w) | \
	NRBIT(NR_MKDIR, w) | \
	NRBIT(NR_RMDIR, w) | \
	NRBIT(NR_CREAT, w) | \
	NRBIT(NR_LINK, w) | \
	NRBIT(NR_UNLINK, w) | \
	NRBIT(NR_SYMLINK, w) | \
	NRBIT(NR_CHMOD, w) | \
	NRBIT(NR_FCHMOD, w) | \
	NRBIT(NR_OPENAT, w) | \
	NRBIT(NR_MKDIRAT, w) | \
	NRBIT(NR_UNLINKAT, w) | \
	NRBIT(NR_RENAMEAT, w) | \
	NRBIT(NR_LINKAT, w) | \
	NRBIT(NR_SYMLINKAT, w) | \
	NRBIT(NR_FCHMODAT, w) | \
	NRBIT(NR_OPEN_BY_HANDLE_AT, w) | \
	NRBIT(NR_RENAMEAT2, w) | \
	NRBIT(NR_OPENAT2, w) | \
	NRBIT(NR_FCHMODAT2, w) | \
	NRBIT(NR_CONNECT, w) | \
	NRBIT(IA32_CONNECT, w) | \
	NRBIT(IA32_OPEN, w) | \
	NRBIT(IA32_CREAT, w) | \
	NRBIT(IA32_LINK, w) | \
	NRBIT(IA32_UNLINK, w) | \
	NRBIT(IA32_CHMOD, w) | \
	NRBIT(IA32_RENAME, w) | \
	NRBIT(IA32_MKDIR, w) | \
	NRBIT(IA32_RMDIR, w) | \
	NRBIT(IA32_SYMLINK, w) | \
	NRBIT(IA32_FCHMOD, w) | \
	NRBIT(IA32_OPENAT, w) | \
	NRBIT(IA32_MKDIRAT, w) | \
	NRBIT(IA32_UNLINKAT, w) | \
	NRBIT(IA32_RENAMEAT, w) | \
	NRBIT(IA32_LINKAT, w) | \
	NRBIT(IA32_SYMLINKAT, w) | \
	NRBIT(IA32_FCHMODAT, w) | \
	NRBIT(IA32_OPEN_BY_HANDLE_AT, w) | \
	NRBIT(IA32_RENAMEAT2, w) | \
	NRBIT(IA32_MOUNT, w) | \
	NRBIT(IA32_OLDUMOUNT, w) | \
	NRBIT(IA32_UMOUNT2, w) | \
	NRBIT(IA32_CLONE, w) | \
	NRBIT(IA32_INIT_MODULE, w) | \
	NRBIT(IA32_PIVOT_ROOT, w) | \
	NRBIT(IA32_UNSHARE, w) | \
	NRBIT(IA32_SETNS, w) | \
	NRBIT(IA32_FINIT_MODULE, w) | 0)
static const volatile __u64 nr_wanted[8] = {
	NRWORD(0), NRWORD(1), NRWORD(2), NRWORD(3), NRWORD(4), NRWORD(5), NRWORD(6), NRWORD(7),
};

/* What a syscall is to these events. */
enum lg_op {
	LGOP_NONE,
	LGOP_SETNS,
	LGOP_UNSHARE,
	LGOP_CLONE,
	LGOP_CLONE3,
	LGOP_MOUNT,
	LGOP_UMOUNT2,
	LGOP_OLDUMOUNT,
	LGOP_MOVE_MOUNT,
	LGOP_FSMOUNT,
	LGOP_OPEN_TREE,
	LGOP_PIVOT_ROOT,
	LGOP_INIT_MODULE,
	LGOP_FINIT_MODULE,
	/* connection_close (bpf/conn.bpf.h), at the exit */
	LGOP_ACCEPT,
	/* dns (bpf/dns.bpf.h), at the entry */
	LGOP_SENDTO,
	LGOP_SENDMSG,
	LGOP_SENDMMSG,
	/* file events (bpf/file.bpf.h) from here on */
	LGOP_OPEN,
	LGOP_CREAT,
	LGOP_OPENAT,
	LGOP_OPENAT2,
	LGOP_OPEN_BY_HANDLE_AT,
	LGOP_RENAME,
	LGOP_RENAMEAT,
	LGOP_UNLINK,
	LGOP_RMDIR,
	LGOP_UNLINKAT,
	LGOP_CHMOD,
	LGOP_FCHMOD,
	LGOP_FCHMODAT,
	LGOP_MKDIR,
	LGOP_MKDIRAT,
	LGOP_LINK,
	LGOP_LINKAT,
	LGOP_SYMLINK,
	LGOP_SYMLINKAT,
	LGOP_CONNECT,
};

static __always_inline __u32 native_op(long nr)
{
	switch (nr) {
	case NR_SETNS:
		return LGOP_SETNS;
	case NR_UNSHARE:
		return LGOP_UNSHARE;
	case NR_CLONE:
		return LGOP_CLONE;
	case NR_CLONE3:
		return LGOP_CLONE3;
	case NR_MOUNT:
		return LGOP_MOUNT;
	case NR_UMOUNT2:
		return LGOP_UMOUNT2;
	case NR_MOVE_MOUNT:
		return LGOP_MOVE_MOUNT;
	case NR_FSMOUNT:
		return LGOP_FSMOUNT;
	case NR_OPEN_TREE:
		return LGOP_OPEN_TREE;
	case NR_PIVOT_ROOT:
		return LGOP_PIVOT_ROOT;
	case NR_INIT_MODULE:
		return LGOP_INIT_MODULE;
	case NR_FINIT_MODULE:
		return LGOP_FINIT_MODULE;
	case NR_ACCEPT:
	case NR_ACCEPT4:
		return LGOP_ACCEPT;
	case NR_SENDTO:
		return LGOP_SENDTO;
	case NR_SENDMSG:
		return LGOP_SENDMSG;
	case NR_SENDMMSG:
		return LGOP_SENDMMSG;
	case NR_OPEN:
		return LGOP_OPEN;
	case NR_CREAT:
		return LGOP_CREAT;
	case NR_OPENAT:
		return LGOP_OPENAT;
	case NR_OPENAT2:
		return LGOP_OPENAT2;
	case NR_OPEN_BY_HANDLE_AT:
		return LGOP_OPEN_BY_HANDLE_AT;
	case NR_RENAME:
		return LGOP_RENAME;
	case NR_RENAMEAT:
	case NR_RENAMEAT2:
		return LGOP_RENAMEAT;
	case NR_UNLINK:
		return LGOP_UNLINK;
	case NR_RMDIR:
		return LGOP_RMDIR;
	case NR_UNLINKAT:
		return LGOP_UNLINKAT;
	case NR_CHMOD:
		return LGOP_CHMOD;
	case NR_FCHMOD:
		return LGOP_FCHMOD;
	case NR_FCHMODAT:
	case NR_FCHMODAT2:
		return LGOP_FCHMODAT;
	case NR_MKDIR:
		return LGOP_MKDIR;
	case NR_MKDIRAT:
		return LGOP_MKDIRAT;
	case NR_LINK:
		return LGOP_LINK;
	case NR_LINKAT:
		return LGOP_LINKAT;
	case NR_SYMLINK:
		return LGOP_SYMLINK;
	case NR_SYMLINKAT:
		return LGOP_SYMLINKAT;
	case NR_CONNECT:
		return LGOP_CONNECT;
	}
	return LGOP_NONE;
}

static __always_inline __u32 ia32_op(long nr)
{
	switch (nr) {
	case IA32_SETNS:
		return LGOP_SETNS;
	case IA32_UNSHARE:
		return LGOP_UNSHARE;
	case IA32_CLONE:
		return LGOP_CLONE;
	case NR_CLONE3:
		return LGOP_CLONE3;
	case IA32_MOUNT:
		return LGOP_MOUNT;
	case IA32_UMOUNT2:
		return LGOP_UMOUNT2;
	case IA32_OLDUMOUNT:
		return LGOP_OLDUMOUNT;
	case NR_MOVE_MOUNT:
		return LGOP_MOVE_MOUNT;
	case NR_FSMOUNT:
		return LGOP_FSMOUNT;
	case NR_OPEN_TREE:
		return LGOP_OPEN_TREE;
	case IA32_PIVOT_ROOT:
		return LGOP_PIVOT_ROOT;
	case IA32_INIT_MODULE:
		return LGOP_INIT_MODULE;
	case IA32_FINIT_MODULE:
		return LGOP_FINIT_MODULE;
	case IA32_ACCEPT4:
		return LGOP_ACCEPT;
	case IA32_SENDTO:
		return LGOP_SENDTO;
	case IA32_SENDMSG:
		return LGOP_SENDMSG;
	case IA32_SENDMMSG:
		return LGOP_SENDMMSG;
	case IA32_OPEN:
		return LGOP_OPEN;
	case IA32_CREAT:
		return LGOP_CREAT;
	case IA32_OPENAT:
		return LGOP_OPENAT;
	case NR_OPENAT2:
		return LGOP_OPENAT2;
	case IA32_OPEN_BY_HANDLE_AT:
		return LGOP_OPEN_BY_HANDLE_AT;
	case IA32_RENAME:
		return LGOP_RENAME;
	case IA32_RENAMEAT:
	case IA32_RENAMEAT2:
		return LGOP_RENAMEAT;
	case IA32_UNLINK:
		return LGOP_UNLINK;
	case IA32_RMDIR:
		return LGOP_RMDIR;
	case IA32_UNLINKAT:
		return LGOP_UNLINKAT;
	case IA32_CHMOD:
		return LGOP_CHMOD;
	case IA32_FCHMOD:
		return LGOP_FCHMOD;
	case IA32_FCHMODAT:
	case NR_FCHMODAT2:
		return LGOP_FCHMODAT;
	case IA32_MKDIR:
		return LGOP_MKDIR;
	case IA32_MKDIRAT:
		return LGOP_MKDIRAT;
	case IA32_LINK:
		return LGOP_LINK;
	case IA32_LINKAT:
		return LGOP_LINKAT;
	case IA32_SYMLINK:
		return LGOP_SYMLINK;
	case IA32_SYMLINKAT:
		return LGOP_SYMLINKAT;
	case IA32_CONNECT:
		return LGOP_CONNECT;
	}
	return LGOP_NONE;
}


/* A NUL-terminated string from the caller's memory, "" when it cannot be read. */
static __always_inline void read_ustr(char *dst, __u32 size, __u64 uptr)
{
	if (!uptr || bpf_probe_read_user_str(dst, size, (const void *)uptr) < 0)
		dst[0] = 0;
}

/* ---------------------------------------------------------------- namespaces */

#define LG_CLONE_NEWTIME 0x00000080
#define LG_CLONE_NEWNS 0x00020000
#define LG_CLONE_NEWCGROUP 0x02000000
#define LG_CLONE_NEWUTS 0x04000000
#define LG_CLONE_NEWIPC 0x08000000
#define LG_CLONE_NEWUSER 0x10000000
#define LG_CLONE_NEWPID 0x20000000
#define LG_CLONE_NEWNET 0x40000000
#define LG_CLONE_NEW_ANY                                                                       \
	(LG_CLONE_NEWTIME | LG_CLONE_NEWNS | LG_CLONE_NEWCGROUP | LG_CLONE_NEWUTS |           \
	 LG_CLONE_NEWIPC | LG_CLONE_NEWUSER | LG_CLONE_NEWPID | LG_CLONE_NEWNET)

/* The namespaces before a setns/unshare/clone, by thread, for its exit. */
struct ns_before {
	__u64 flags;
	__u32 call;
	__u32 _pad;
	struct lg_ns from;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct ns_before);
} ns_pending SEC(".maps");

/* Task t's namespaces (all 0 when it is exiting and has none left). */
static __always_inline void read_ns(struct task_struct *t, struct lg_ns *o)
{
	struct nsproxy *ns = BPF_CORE_READ(t, nsproxy);

	__builtin_memset(o, 0, sizeof(*o));
	/* Gone (an exiting task): unknown, all 0. */
	if (!ns)
		return;
	o->user = BPF_CORE_READ(t, real_cred, user_ns, ns.inum);
	o->mnt = BPF_CORE_READ(ns, mnt_ns, ns.inum);
	o->uts = BPF_CORE_READ(ns, uts_ns, ns.inum);
	o->ipc = BPF_CORE_READ(ns, ipc_ns, ns.inum);
	o->net = BPF_CORE_READ(ns, net_ns, ns.inum);
	o->pid = BPF_CORE_READ(ns, pid_ns_for_children, ns.inum);
	if (bpf_core_field_exists(ns->cgroup_ns))
		o->cgroup = BPF_CORE_READ(ns, cgroup_ns, ns.inum);
	/* Time namespaces: Linux 5.6+, CONFIG_TIME_NS. */
	if (bpf_core_field_exists(ns->time_ns_for_children))
		o->time = BPF_CORE_READ(ns, time_ns_for_children, ns.inum);
}

static __noinline int ns_begin(__u32 call, __u64 flags)
{
	struct ns_before b = {
		.flags = flags,
		.call = call,
	};
	__u32 key = tid();

	if (is_agent())
		return 0;
	read_ns(current_btf(), &b.from);
	bpf_map_update_elem(&ns_pending, &key, &b, BPF_ANY);
	return 0;
}

/*
 * The child a clone() just made, from the parent at the syscall's exit: copy_process() added it
 * at the tail of the parent thread's `children` list (CLONE_PARENT puts it on the grandparent's
 * instead: not found). It counts only if its number in our pid namespace is the one clone()
 * returned (it may have exited and been reaped already).
 */
static __always_inline struct task_struct *new_child(long pid)
{
	struct task_struct *me = current_task();
	struct list_head *head = &me->children;
	struct list_head *last = BPF_CORE_READ(me, children.prev);
	struct pid *mine = BPF_CORE_READ(me, thread_pid), *cp;
	unsigned int level = BPF_CORE_READ(mine, level);
	struct task_struct *c;
	struct upid up = {};

	if (!last || last == head)
		return NULL;
	c = container_of(last, struct task_struct, sibling);
	cp = BPF_CORE_READ(c, thread_pid);
	if (!cp || BPF_CORE_READ(cp, level) < level ||
	    bpf_probe_read_kernel(&up, sizeof(up), &cp->numbers[level]) < 0 || up.nr != (int)pid)
		return NULL;
	return c;
}

static __noinline int ns_end(__u32 call, long ret)
{
	struct lg_namespace *e;
	struct ns_before *b;
	struct task_struct *child;
	__u32 key;

	/* The new child returns from clone() too, with 0: the parent reports. */
	if ((call == LG_NS_CLONE || call == LG_NS_CLONE3) && ret == 0)
		return 0;
	key = tid();
	b = bpf_map_lookup_elem(&ns_pending, &key);
	if (!b)
		return 0;
	if (b->call == call) {
		e = reserve(sizeof(*e), LG_NAMESPACE);
		if (e) {
			e->type = LG_NAMESPACE;
			e->syscall = call;
			e->flags = b->flags;
			e->ret = ret;
			e->_pad = 0;
			e->from = b->from;
			__builtin_memset(&e->to, 0, sizeof(e->to));
			if (call == LG_NS_SETNS || call == LG_NS_UNSHARE) {
				read_ns(current_btf(), &e->to);
			} else if (ret > 0) {
				child = new_child(ret);
				if (child)
					read_ns(child, &e->to);
			}
			fill_task(&e->task);
			submit(e, sizeof(*e));
		}
	}
	bpf_map_delete_elem(&ns_pending, &key);
	return 0;
}

/* ---------------------------------------------------------------- mounts */

/* The file-system type of an open file's mount. */
static __always_inline void file_fstype(char dst[LG_FSTYPE_LEN], struct file *f)
{
	const char *n = BPF_CORE_READ(f, f_path.mnt, mnt_sb, s_type, name);

	if (!n || bpf_probe_read_kernel_str(dst, LG_FSTYPE_LEN, n) < 0)
		dst[0] = 0;
}

/*
 * fsmount(fs_fd): the type and source of the file-system context behind fs_fd (an anonymous
 * "[fscontext]" file whose private_data is the struct fs_context), from the kernel's copy.
 */
static __always_inline void fscontext_info(struct lg_mount *e, long fd)
{
	struct file *f = fd_file(fd);
	struct fs_context *fc;
	const char *n;
	char name[16];

	if (!f)
		return;
	file_name16(f, name);
	if (name[0] != '[' || name[1] != 'f' || name[2] != 's' || name[3] != 'c' || name[4] != 'o' ||
	    name[5] != 'n' || name[6] != 't' || name[7] != 'e' || name[8] != 'x' || name[9] != 't' ||
	    name[10] != ']')
		return;
	fc = BPF_CORE_READ(f, private_data);
	if (!fc)
		return;
	n = BPF_CORE_READ(fc, fs_type, name);
	if (!n || bpf_probe_read_kernel_str(e->fstype, sizeof(e->fstype), n) < 0)
		e->fstype[0] = 0;
	n = BPF_CORE_READ(fc, source);
	if (!n || bpf_probe_read_kernel_str(e->source, sizeof(e->source), n) < 0)
		e->source[0] = 0;
}

/* The source a mount was made from (its devname), as the kernel keeps it. */
static __always_inline void file_mount_source(char dst[LG_STR_LEN], struct file *f)
{
	struct vfsmount *vm = BPF_CORE_READ(f, f_path.mnt);
	struct mount *m = container_of(vm, struct mount, mnt);
	const char *n = BPF_CORE_READ(m, mnt_devname);

	if (!vm || !n || bpf_probe_read_kernel_str(dst, LG_STR_LEN, n) < 0)
		dst[0] = 0;
}

static __noinline int mount_end(struct pt_regs *regs, __u32 op, long ret, int compat)
{
	struct lg_mount *e;
	struct file *f;

	if (is_agent())
		return 0;
	e = reserve(sizeof(*e), LG_MOUNT);
	if (!e)
		return 0;
	e->type = LG_MOUNT;
	e->ret = ret;
	e->_pad = 0;
	e->flags = 0;
	e->source[0] = 0;
	e->target[0] = 0;
	e->fstype[0] = 0;
	switch (op) {
	case LGOP_MOUNT:
		e->syscall = LG_MOUNT_MOUNT;
		read_ustr(e->source, sizeof(e->source), sys_arg(regs, 0, compat));
		read_ustr(e->target, sizeof(e->target), sys_arg(regs, 1, compat));
		read_ustr(e->fstype, sizeof(e->fstype), sys_arg(regs, 2, compat));
		e->flags = (__u32)sys_arg(regs, 3, compat);
		break;
	case LGOP_UMOUNT2:
		e->syscall = LG_MOUNT_UMOUNT;
		read_ustr(e->target, sizeof(e->target), sys_arg(regs, 0, compat));
		e->flags = (__u32)sys_arg(regs, 1, compat);
		break;
	case LGOP_OLDUMOUNT:
		e->syscall = LG_MOUNT_UMOUNT;
		read_ustr(e->target, sizeof(e->target), sys_arg(regs, 0, compat));
		break;
	case LGOP_MOVE_MOUNT:
		e->syscall = LG_MOUNT_MOVE_MOUNT;
		read_ustr(e->source, sizeof(e->source), sys_arg(regs, 1, compat));
		read_ustr(e->target, sizeof(e->target), sys_arg(regs, 3, compat));
		e->flags = (__u32)sys_arg(regs, 4, compat);
		/*
		 * The mount being moved: its type from the kernel, through from_dfd, and its
		 * source too when it is given by that descriptor alone (an fsmount or
		 * open_tree result, MOVE_MOUNT_F_EMPTY_PATH).
		 */
		f = fd_file((int)sys_arg(regs, 0, compat));
		if (f) {
			file_fstype(e->fstype, f);
			if (!e->source[0])
				file_mount_source(e->source, f);
		}
		break;
	case LGOP_FSMOUNT:
		e->syscall = LG_MOUNT_FSMOUNT;
		e->flags = (__u32)sys_arg(regs, 1, compat);
		/*
		 * The new mount, through the returned descriptor (the context's source moves to
		 * the mount when it is made); a failed fsmount still has its context.
		 */
		f = ret >= 0 ? fd_file(ret) : NULL;
		if (f) {
			file_fstype(e->fstype, f);
			file_mount_source(e->source, f);
		} else {
			fscontext_info(e, (int)sys_arg(regs, 0, compat));
		}
		break;
	case LGOP_OPEN_TREE:
		e->syscall = LG_MOUNT_OPEN_TREE;
		read_ustr(e->source, sizeof(e->source), sys_arg(regs, 1, compat));
		e->flags = (__u32)sys_arg(regs, 2, compat);
		/* The tree it returned: its type from the kernel. */
		f = ret >= 0 ? fd_file(ret) : NULL;
		if (f)
			file_fstype(e->fstype, f);
		break;
	default:
		e->syscall = LG_MOUNT_PIVOT_ROOT;
		read_ustr(e->source, sizeof(e->source), sys_arg(regs, 0, compat));
		read_ustr(e->target, sizeof(e->target), sys_arg(regs, 1, compat));
		break;
	}
	fill_task(&e->task);
	submit(e, sizeof(*e));
	return 0;
}

/* ---------------------------------------------------------------- kernel modules */

/* The name of the module a thread is loading, from module:module_load, for the syscall's exit. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, char[LG_NAME_LEN]);
} module_names SEC(".maps");

/*
 * The classic tracepoint's record (include/trace/events/module.h; kernels without modules,
 * like the development machine's, have no such type in their BTF, so it is spelled out here):
 * the common header, then `unsigned int taints` and `__data_loc char[] name`.
 */
struct lg_tp_module_load {
	__u64 common;
	__u32 taints;
	__u32 name_loc;
};

SEC("tracepoint/module/module_load")
int module_load_tp(struct lg_tp_module_load *ctx)
{
	char name[LG_NAME_LEN] = {};
	__u32 key = tid();

	if (is_agent())
		return 0;
	bpf_probe_read_kernel_str(name, sizeof(name), (void *)ctx + (ctx->name_loc & 0xFFFF));
	bpf_map_update_elem(&module_names, &key, name, BPF_ANY);
	return 0;
}

static __noinline int module_end(struct pt_regs *regs, __u32 op, long ret, int compat)
{
	struct lg_module_load *e;
	struct lg_pscratch *s;
	struct lg_composed r;
	struct file *f;
	char *name;
	__u32 key = tid();

	if (is_agent())
		return 0;
	e = reserve(sizeof(*e), LG_MODULE_LOAD);
	if (e) {
		e->type = LG_MODULE_LOAD;
		e->ret = ret;
		e->flags = 0;
		e->len = 0;
		e->path_len = 0;
		e->path_truncated = 0;
		e->name[0] = 0;
		e->path[0] = 0;
		if (op == LGOP_INIT_MODULE) {
			e->syscall = LG_MODULE_INIT;
			e->len = sys_arg(regs, 1, compat);
			read_ustr(e->params, sizeof(e->params), sys_arg(regs, 2, compat));
		} else {
			e->syscall = LG_MODULE_FINIT;
			read_ustr(e->params, sizeof(e->params), sys_arg(regs, 1, compat));
			e->flags = sys_arg(regs, 2, compat);
			/* The file, as the kernel resolved it, through the fd (still open here). */
			f = fd_file((int)sys_arg(regs, 0, compat));
			s = pscratch_get();
			if (f && s) {
				r = compose_file(s, f);
				copy_path(e->path, s->path);
				e->path_len = r.len;
				e->path_truncated = r.truncated;
			}
		}
		name = bpf_map_lookup_elem(&module_names, &key);
		if (name)
			bpf_probe_read_kernel_str(e->name, sizeof(e->name), name);
		fill_task(&e->task);
		submit(e, sizeof(*e));
	}
	bpf_map_delete_elem(&module_names, &key);
	return 0;
}

/*
 * The address of the syscall's registers as a plain number, for a global subprogram: only for
 * the rare ops (not opens), it costs one helper call.
 */
static __always_inline unsigned long regs_number(struct pt_regs *regs)
{
	return ptr_number(regs);
}

#include "file.bpf.h"
#include "dns.bpf.h"
#include "conn.bpf.h"

/*
 * The file ops at their exit; -1: no such argument. `shared`: through the global subprograms
 * (the dispatcher, where op is unknown: one copy verified once); else inlined (a per-syscall
 * tracepoint, where op is a constant and only its own call's code is kept).
 */
#define FILE_OPEN_END(args)                                                            \
	(shared ? lg_file_open_end(regs_number(regs), ret, compat, args)               \
		: file_open_end(regs, ret, compat, farg(args, 0), farg(args, 1),       \
				farg(args, 2), farg(args, 3) == 1))
#define FILE_PATH_END(fop, args, mode)                                                  \
	(shared ? lg_file_path_end(regs_number(regs), ret, ((fop) << 8) | compat, args, mode) \
		: file_path_end(regs, ret, compat, fop, farg(args, 0), farg(args, 1),  \
				farg(args, 2), farg(args, 3), farg(args, 4), mode))
static __always_inline int file_end(struct pt_regs *regs, __u32 op, long ret, int compat,
				    int shared)
{
	switch (op) {
	case LGOP_OPEN:
		return FILE_OPEN_END(LG_FARGS(-1, 0, 1, 0, -1));
	case LGOP_CREAT:
		return FILE_OPEN_END(LG_FARGS(-1, 0, -1, 0, -1));
	case LGOP_OPENAT:
		return FILE_OPEN_END(LG_FARGS(0, 1, 2, 0, -1));
	case LGOP_OPENAT2:
		return FILE_OPEN_END(LG_FARGS(0, 1, 2, 1, -1));
	case LGOP_OPEN_BY_HANDLE_AT:
		return FILE_OPEN_END(LG_FARGS(-1, -1, -1, 0, -1));
	case LGOP_RENAME:
		return FILE_PATH_END(LG_FILE_RENAME, LG_FARGS(-1, 1, -1, 0, -1), 0);
	case LGOP_RENAMEAT:
		return FILE_PATH_END(LG_FILE_RENAME, LG_FARGS(2, 3, 0, 1, -1), 0);
	case LGOP_UNLINK:
	case LGOP_RMDIR:
		return FILE_PATH_END(LG_FILE_DELETE, LG_FARGS(-1, 0, -1, -1, -1), 0);
	case LGOP_UNLINKAT:
		return FILE_PATH_END(LG_FILE_DELETE, LG_FARGS(0, 1, -1, -1, -1), 0);
	case LGOP_CHMOD:
		return FILE_PATH_END(LG_FILE_CHMOD, LG_FARGS(-1, 0, -1, -1, -1), sys_arg(regs, 1, compat) & 07777);
	case LGOP_FCHMOD:
		return file_fchmod_end(regs, ret, compat);
	case LGOP_FCHMODAT:
		return FILE_PATH_END(LG_FILE_CHMOD, LG_FARGS(0, 1, -1, -1, -1), sys_arg(regs, 2, compat) & 07777);
	case LGOP_MKDIR:
		return FILE_PATH_END(LG_FILE_MKDIR, LG_FARGS(-1, 0, -1, -1, -1), 0);
	case LGOP_MKDIRAT:
		return FILE_PATH_END(LG_FILE_MKDIR, LG_FARGS(0, 1, -1, -1, -1), 0);
	case LGOP_LINK:
		return FILE_PATH_END(LG_FILE_LINK, LG_FARGS(-1, 1, -1, 0, -1), 0);
	case LGOP_LINKAT:
		return FILE_PATH_END(LG_FILE_LINK, LG_FARGS(2, 3, 0, 1, -1), 0);
	case LGOP_SYMLINK:
		return FILE_PATH_END(LG_FILE_SYMLINK, LG_FARGS(-1, 1, -1, -1, 0), 0);
	case LGOP_SYMLINKAT:
		return FILE_PATH_END(LG_FILE_SYMLINK, LG_FARGS(1, 2, -1, -1, 0), 0);
	case LGOP_CONNECT:
		return file_connect_end(regs, ret, compat);
	}
	return 0;
}

/* ---------------------------------------------------------------- entry and exit of the ops */

/*
 * The ops are BPF subprograms (not inlined): inlined into the compat programs their locals
 * would add to those programs' one 512-byte stack frame.
 */
static __noinline int op_enter(struct pt_regs *regs, __u32 op, int compat)
{
	__u64 flags;

	switch (op) {
	case LGOP_SETNS:
		ns_begin(LG_NS_SETNS, (__u32)sys_arg(regs, 1, compat));
		return 0;
	case LGOP_UNSHARE:
		flags = (__u32)sys_arg(regs, 0, compat);
		if (flags & LG_CLONE_NEW_ANY)
			ns_begin(LG_NS_UNSHARE, flags);
		return 0;
	case LGOP_CLONE:
		flags = sys_arg(regs, 0, compat);
		if (flags & LG_CLONE_NEW_ANY)
			ns_begin(LG_NS_CLONE, flags);
		return 0;
	case LGOP_CLONE3:
		/* clone_args.flags, the first field; the kernel copies it right after. */
		flags = 0;
		bpf_probe_read_user(&flags, sizeof(flags), (const void *)sys_arg(regs, 0, compat));
		if (flags & LG_CLONE_NEW_ANY)
			ns_begin(LG_NS_CLONE3, flags);
		return 0;
	}
	return 0;
}

/* The exit half of every op; `op` a constant in the per-syscall tracepoints (see below). */
static __always_inline int op_exit_body(struct pt_regs *regs, __u32 op, long ret, int compat,
					int shared)
{

	switch (op) {
	case LGOP_SETNS:
		ns_end(LG_NS_SETNS, ret);
		return 0;
	case LGOP_UNSHARE:
		ns_end(LG_NS_UNSHARE, ret);
		return 0;
	case LGOP_CLONE:
		/* Most clones create no namespace: their flags, still in the registers, say so. */
		if (ret != 0 && (sys_arg(regs, 0, compat) & LG_CLONE_NEW_ANY))
			ns_end(LG_NS_CLONE, ret);
		return 0;
	case LGOP_CLONE3:
		ns_end(LG_NS_CLONE3, ret);
		return 0;
	case LGOP_MOUNT:
	case LGOP_UMOUNT2:
	case LGOP_OLDUMOUNT:
	case LGOP_MOVE_MOUNT:
	case LGOP_FSMOUNT:
	case LGOP_OPEN_TREE:
	case LGOP_PIVOT_ROOT:
		mount_end(regs, op, ret, compat);
		return 0;
	case LGOP_INIT_MODULE:
	case LGOP_FINIT_MODULE:
		module_end(regs, op, ret, compat);
		return 0;
	}
	if (op >= LGOP_OPEN && op <= LGOP_OPEN_BY_HANDLE_AT && ret >= 0)
		lg_file_open_fast(ret);
	else if (op >= LGOP_OPEN)
		file_end(regs, op, ret, compat, shared);
	return 0;
}

/*
 * The dispatcher's exit half. A global subprogram, verified once on its own with `op` unknown:
 * a static one is verified again for every op value its callers can pass (the dispatcher's
 * switch makes each a known constant), which took the compat programs past the verifier's
 * million instructions. Its arguments must be numbers: see regs_number().
 */
__noinline int lg_op_exit(unsigned long regs_addr, __u32 op, long ret, int compat)
{
	return op_exit_body((struct pt_regs *)regs_addr, op, ret, compat, 1);
}


/* Whether user space turned the dispatcher on for op's event. */
static __always_inline int op_wanted(__u32 op)
{
	switch (op) {
	case LGOP_SETNS:
	case LGOP_UNSHARE:
	case LGOP_CLONE:
	case LGOP_CLONE3:
		return want_ns;
	case LGOP_INIT_MODULE:
	case LGOP_FINIT_MODULE:
		return want_module;
	case LGOP_SENDTO:
	case LGOP_SENDMSG:
	case LGOP_SENDMMSG:
		return want_dns;
	case LGOP_ACCEPT:
		return want_close;
	case LGOP_NONE:
		return 0;
	}
	if (op >= LGOP_OPEN)
		return want_file;
	return want_mount;
}

/* The op of the current syscall for the dispatcher, or LGOP_NONE; *compat says which ABI. */
static __always_inline __u32 dispatch_op(struct pt_regs *regs, long nr, int btf, int *compat)
{
	__u32 native, ia32;

	if (!want_ns && !want_mount && !want_module && !want_file && !want_dns && !want_close)
		return LGOP_NONE;
	if (nr < 0 || nr >= 512 || !(nr_wanted[(nr >> 6) & 7] & (1ULL << (nr & 63))))
		return LGOP_NONE;
	native = native_op(nr);
	ia32 = ia32_op(nr);
	if (native == LGOP_NONE && ia32 == LGOP_NONE)
		return LGOP_NONE;
	*compat = in_compat_syscall(regs, btf) ? 1 : 0;
	native = *compat ? ia32 : native;
	return op_wanted(native) ? native : LGOP_NONE;
}

/*
 * Argument i of the current syscall, with plain loads where the registers are a BTF pointer
 * (tp_btf): for the sends, which are frequent.
 */
static __always_inline __u64 sys_arg_fast(struct pt_regs *regs, int i, int compat, int btf)
{
#if defined(__TARGET_ARCH_arm64)
	return sys_arg(regs, i, compat);
#else
	if (!btf)
		return sys_arg(regs, i, compat);
	if (compat) {
		switch (i) {
		case 0:
			return (__u32)regs->bx;
		case 1:
			return (__u32)regs->cx;
		case 2:
			return (__u32)regs->dx;
		default:
			return (__u32)regs->di;
		}
	}
	switch (i) {
	case 0:
		return regs->di;
	case 1:
		return regs->si;
	case 2:
		return regs->dx;
	default:
		return regs->r8;
	}
#endif
}

/* Called first by the compat hook's sys_enter programs (sensor.bpf.c). */
static __always_inline void more_enter(struct pt_regs *regs, long nr, int btf)
{
#if defined(__TARGET_ARCH_x86)
	int compat = 0;
	__u32 op = dispatch_op(regs, nr, btf, &compat);

	if (op == LGOP_NONE)
		return;
	/* Only the namespace calls and the sends have work at the entry. */
	if (op > LGOP_CLONE3 && op < LGOP_SENDTO)
		return;
	if (op > LGOP_SENDMMSG)
		return;
	if (op >= LGOP_SENDTO) {
		lg_dns_send((int)sys_arg_fast(regs, 0, compat, btf), sys_arg_fast(regs, 1, compat, btf),
			    sys_arg_fast(regs, 2, compat, btf), sys_arg_fast(regs, 4, compat, btf),
			    (op - LGOP_SENDTO + 1) | (compat << 4));
		return;
	}
	op_enter(regs, op, compat);
#endif
}

/* Called first by the compat hook's sys_exit programs. */
static __always_inline void more_exit(struct pt_regs *regs, long ret, int btf)
{
#if defined(__TARGET_ARCH_x86)
	int compat = 0;
	__u32 op = dispatch_op(regs, syscall_nr(regs, btf), btf, &compat);

	if (op == LGOP_NONE)
		return;
	if (op == LGOP_ACCEPT) {
		lg_conn_accept(ret);
		return;
	}
	/* Successful opens, the one hot case, without a subprogram call in between. */
	if (op >= LGOP_OPEN && op <= LGOP_OPEN_BY_HANDLE_AT && ret >= 0) {
		lg_file_open_fast(ret);
		return;
	}
	lg_op_exit(regs_number(regs), op, ret, compat);
#endif
}

/* ---------------------------------------------------------------- per-syscall tracepoints */

/*
 * Where the dispatcher is not running: the syscall's own tracepoints (never called for 32-bit
 * syscalls, see sensor.bpf.c). The arguments come from the task's saved user registers
 * (bpf_task_pt_regs, Linux 5.15+; older kernels have no way to them here, and these programs
 * then report nothing: docs/events.md says so).
 */
static __always_inline struct pt_regs *tp_regs(void)
{
	if (!bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs))
		return NULL;
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

#define LGOP_TP_ENTER(prog, sys, op)                                                 \
	SEC("tracepoint/syscalls/sys_enter_" #sys)                                 \
	int prog(struct trace_event_raw_sys_enter *ctx)                            \
	{                                                                          \
		struct pt_regs *regs = tp_regs();                                  \
		if (regs)                                                          \
			op_enter(regs, op, 0);                                     \
		return 0;                                                          \
	}

#define LGOP_TP_EXIT(prog, sys, op)                                                  \
	SEC("tracepoint/syscalls/sys_exit_" #sys)                                  \
	int prog(struct trace_event_raw_sys_exit *ctx)                             \
	{                                                                          \
		struct pt_regs *regs = tp_regs();                                  \
		if (regs)                                                          \
			op_exit_body(regs, op, ctx->ret, 0, 0);                    \
		return 0;                                                          \
	}

LGOP_TP_ENTER(ns_setns_enter, setns, LGOP_SETNS)
LGOP_TP_EXIT(ns_setns_exit, setns, LGOP_SETNS)
LGOP_TP_ENTER(ns_unshare_enter, unshare, LGOP_UNSHARE)
LGOP_TP_EXIT(ns_unshare_exit, unshare, LGOP_UNSHARE)
LGOP_TP_ENTER(ns_clone_enter, clone, LGOP_CLONE)
LGOP_TP_EXIT(ns_clone_exit, clone, LGOP_CLONE)
LGOP_TP_ENTER(ns_clone3_enter, clone3, LGOP_CLONE3)
LGOP_TP_EXIT(ns_clone3_exit, clone3, LGOP_CLONE3)
LGOP_TP_EXIT(mount_mount_exit, mount, LGOP_MOUNT)
LGOP_TP_EXIT(mount_umount_exit, umount, LGOP_UMOUNT2)
LGOP_TP_EXIT(mount_move_exit, move_mount, LGOP_MOVE_MOUNT)
LGOP_TP_EXIT(mount_fsmount_exit, fsmount, LGOP_FSMOUNT)
LGOP_TP_EXIT(mount_open_tree_exit, open_tree, LGOP_OPEN_TREE)
LGOP_TP_EXIT(mount_pivot_root_exit, pivot_root, LGOP_PIVOT_ROOT)
/*
 * The sends' tracepoints carry their arguments: no saved registers needed. A program may read
 * only the arguments its syscall has (the kernel refuses to attach one that reads past the
 * tracepoint's record: sendmsg and sendmmsg have no fifth), hence `addr`.
 */
#define DNS_TP_ENTER(prog, sys, kind, addr)                                        \
	SEC("tracepoint/syscalls/sys_enter_" #sys)                                 \
	int prog(struct trace_event_raw_sys_enter *ctx)                            \
	{                                                                          \
		return lg_dns_send((int)ctx->args[0], ctx->args[1], ctx->args[2],  \
				   addr, kind);                                    \
	}

DNS_TP_ENTER(dns_sendto_enter, sendto, 1, ctx->args[4])
DNS_TP_ENTER(dns_sendmsg_enter, sendmsg, 2, 0)
DNS_TP_ENTER(dns_sendmmsg_enter, sendmmsg, 3, 0)
LGOP_TP_EXIT(file_open_exit, open, LGOP_OPEN)
LGOP_TP_EXIT(file_creat_exit, creat, LGOP_CREAT)
LGOP_TP_EXIT(file_openat_exit, openat, LGOP_OPENAT)
LGOP_TP_EXIT(file_openat2_exit, openat2, LGOP_OPENAT2)
LGOP_TP_EXIT(file_open_by_handle_exit, open_by_handle_at, LGOP_OPEN_BY_HANDLE_AT)
LGOP_TP_EXIT(file_rename_exit, rename, LGOP_RENAME)
LGOP_TP_EXIT(file_renameat_exit, renameat, LGOP_RENAMEAT)
LGOP_TP_EXIT(file_renameat2_exit, renameat2, LGOP_RENAMEAT)
LGOP_TP_EXIT(file_unlink_exit, unlink, LGOP_UNLINK)
LGOP_TP_EXIT(file_rmdir_exit, rmdir, LGOP_RMDIR)
LGOP_TP_EXIT(file_unlinkat_exit, unlinkat, LGOP_UNLINKAT)
LGOP_TP_EXIT(file_chmod_exit, chmod, LGOP_CHMOD)
LGOP_TP_EXIT(file_fchmod_exit, fchmod, LGOP_FCHMOD)
LGOP_TP_EXIT(file_fchmodat_exit, fchmodat, LGOP_FCHMODAT)
LGOP_TP_EXIT(file_fchmodat2_exit, fchmodat2, LGOP_FCHMODAT)
LGOP_TP_EXIT(file_mkdir_exit, mkdir, LGOP_MKDIR)
LGOP_TP_EXIT(file_mkdirat_exit, mkdirat, LGOP_MKDIRAT)
LGOP_TP_EXIT(file_link_exit, link, LGOP_LINK)
LGOP_TP_EXIT(file_linkat_exit, linkat, LGOP_LINKAT)
LGOP_TP_EXIT(file_symlink_exit, symlink, LGOP_SYMLINK)
LGOP_TP_EXIT(file_symlinkat_exit, symlinkat, LGOP_SYMLINKAT)
LGOP_TP_EXIT(file_connect_exit, connect, LGOP_CONNECT)
LGOP_TP_EXIT(module_init_exit, init_module, LGOP_INIT_MODULE)
LGOP_TP_EXIT(module_finit_exit, finit_module, LGOP_FINIT_MODULE)

#endif /* LG_SYSCALLS_BPF_H */
