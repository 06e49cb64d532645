/* SPDX-License-Identifier: GPL-2.0 */
/*
 * file.bpf.h: `file` events, filtered in the kernel against the watch lists.
 *
 * The lists are path prefixes in an LPM trie (`watch`, filled by user space before attach):
 * each prefix's value says which lists it is on (LG_FILE_F_WATCH_READ/WRITE), including the
 * lists of every shorter prefix of it, so the longest match alone answers. A path that matches
 * no prefix for the kind of access made is dropped here and never reaches the ring buffer.
 *
 * Opens (open, openat, openat2, creat, open_by_handle_at; native and 32-bit) are judged at the
 * syscall's exit by the FILE the kernel opened, through the returned descriptor: its path is
 * composed from the kernel's dentries (bpf/paths.bpf.h) and its access from f_mode. So relative
 * paths, `..`, symlinks, openat2's RESOLVE_* modes, /proc/self/fd reopens of O_PATH descriptors
 * and a thread rewriting the path buffer during the call all end in the path the kernel
 * actually opened. O_PATH descriptors open nothing and are not reported.
 *
 * Calls that return no descriptor (rename, unlink, rmdir, chmod, mkdir, link, symlink, and
 * opens refused with EACCES/EPERM) have only the caller's string: the directory it is relative
 * to (the working directory or the dirfd) is still the kernel's, composed from its dentries,
 * the string is appended and `.`/`..` are folded lexically; symlinks inside the string are not
 * followed. Those events carry LG_FILE_F_CALLER (docs/events.md: known blind spots).
 *
 * Unix socket connects are judged by the socket file the kernel connected to (the connect list,
 * LG_FILE_F_WATCH_CONNECT: the container runtimes' API sockets by default), see
 * file_connect_end().
 */
#ifndef LG_FILE_BPF_H
#define LG_FILE_BPF_H

#include "paths.bpf.h"
#include "sysargs.bpf.h"

/* The dispatcher serves file events (set by user space before load). */
const volatile bool want_file = false;
/* The read list is not empty: read-only opens need a look at all. */
const volatile bool watch_reads = false;
/* The connect list is not empty: Unix socket connects need a look at all. */
const volatile bool watch_connects = false;

struct lg_file _lg_file = {};
enum lg_file_op _lg_file_op = LG_FILE_READ;

/* The watch lists' LPM trie key: the bits of the path that must match, then the path. */
struct lg_watch_key {
	__u32 prefixlen;
	__u8 path[256];
};

struct lg_watch_key _lg_watch_key = {};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lg_watch_key);
	__type(value, __u32);
} watch SEC(".maps");

/* Which lists the path in s->path (key s->keylen) is on: LG_FILE_F_WATCH_* bits, or 0. */
static __always_inline __u32 watched(struct lg_pscratch *s)
{
	__u32 *v = bpf_map_lookup_elem(&watch, &s->keylen);

	return v ? *v : 0;
}

#define LG_O_ACCMODE 3
#define LG_O_CREAT 0100
#define LG_O_TRUNC 01000
#define LG_AT_FDCWD -100
#define LG_FMODE_WRITE 0x2
#define LG_FMODE_PATH 0x4000
#define LG_FMODE_CREATED 0x100000
#define LG_EPERM 1
#define LG_EACCES 13

/* ---------------------------------------------------------------- the fast path of opens */

/*
 * Every open of every process comes through here, so the common case, a file outside the
 * lists, must cost a few comparisons (the bar: 150 ns per open). Measured on the development
 * VM, one bpf_probe_read_kernel() costs ~45 ns: the fast path makes none where the kernel can
 * cast pointers (bpf_rdonly_cast, 6.2+), and it does not compose the path at all unless the
 * path's first component can start a watched prefix (top_*, from user space): /proc, /sys,
 * /dev, /home (without a .ssh rule), ... are decided by one 16-byte compare per list entry.
 */
#define LG_TOPS 16
const volatile __u32 top_count = 0;	/* entries used; 0: no filter (every path is a candidate) */
const volatile __u64 top_lo[LG_TOPS];	/* the entry's first component, bytes 0-7 and 8-15 */
const volatile __u64 top_hi[LG_TOPS];
const volatile __u64 top_mlo[LG_TOPS]; /* which of those bytes to compare */
const volatile __u64 top_mhi[LG_TOPS];
const volatile __u32 top_len[LG_TOPS];	/* its length */
const volatile __u8 top_exact[LG_TOPS]; /* the prefix goes on after it ('/'): lengths must match */
const volatile __u8 top_lists[LG_TOPS]; /* LG_FILE_F_WATCH_* of the entries with that start */
const volatile __u64 top_first[2][4];	/* read list, write list: the first bytes they start with */


/* The first 16 bytes of a name (beyond its end: whatever follows, masked off by the caller). */
static __always_inline void name16(const unsigned char *name, __u64 *lo, __u64 *hi)
{
	__u64 w[2] = {};

	if (bpf_ksym_exists(bpf_rdonly_cast)) {
		/*
		 * Any kernel type whose first 16 bytes are two 8-byte numbers will do (numbers:
		 * a pointer member would load as a pointer, which cannot be compared bitwise).
		 */
		struct timespec64 *t = bpf_core_cast((void *)name, struct timespec64);

		*lo = t->tv_sec;
		*hi = t->tv_nsec;
		return;
	}
	bpf_probe_read_kernel(w, sizeof(w), name);
	*lo = w[0];
	*hi = w[1];
}

/*
 * The fast walk: up to the root like fwalk_step, keeping only the last name seen (the path's
 * first component) in its context: no map access per step.
 */
struct ftop_ctx {
	struct dentry *d;
	struct mount *mnt;
	const unsigned char *name;
	__u32 len;
	__u32 state;
};

static __always_inline long ftop_one(struct ftop_ctx *w)
{
	struct dentry *d = w->d, *parent = NULL;
	struct mount *mnt = w->mnt;
	__u32 st;

	if (!d || !mnt)
		return 1;
	st = walk_up(&d, &mnt, &parent);
	if (st == LG_WALK_CROSSED) {
		w->d = d;
		w->mnt = mnt;
		return 0;
	}
	if (st != LG_WALK_RUNNING) {
		w->state = st;
		return 1;
	}
	w->name = KREAD(struct dentry, d, d_name.name);
	w->len = KREAD(struct dentry, d, d_name.len);
	w->d = parent;
	return 0;
}

/* The same step for bpf_loop() (kernels without bpf_rdonly_cast). */
static long ftop_step(__u64 index, void *arg)
{
	return ftop_one(arg);
}

/* Steps of the fast walk: deeper paths (rare) are candidates without a look at their start. */
#define LG_FAST_STEPS 40

/*
 * Whether the path of (d, vm) can be on one of the `need` lists, from its first component:
 * 0 no (an anonymous file, or no list entry starts so), 1 maybe (compose it and look it up).
 * The walk is an open-coded loop (a bpf_loop() step costs a call per component, measured
 * ~30 ns each here); it runs in a global subprogram, verified once, so the loop's states stay
 * few.
 */
static __always_inline int top_candidate(struct dentry *d, struct vfsmount *vm, __u32 need)
{
	struct ftop_ctx w = {
		.d = d,
		.mnt = container_of(vm, struct mount, mnt),
	};
	__u32 i, len, byte;
	__u64 lo, hi;

	if (bpf_ksym_exists(bpf_rdonly_cast)) {
		for (i = 0; i < LG_FAST_STEPS; i++) {
			if (ftop_one(&w))
				break;
		}
	} else {
		bpf_loop(LG_FWALK_MAX, ftop_step, &w, 0);
	}
	if (w.state == LG_WALK_ANON)
		return 0;
	if (!top_count || !w.name || w.state != LG_WALK_ROOT)
		return 1;
	len = w.len;
	name16(w.name, &lo, &hi);
	/* First, the first byte alone: most paths' first letters start no watched prefix. */
	byte = lo & 0xff;
	if (!(top_first[need == LG_FILE_F_WATCH_READ ? 0 : 1][(byte >> 6) & 3] & (1ULL << (byte & 63))))
		return 0;
	for (i = 0; i < LG_TOPS; i++) {
		if (i >= top_count)
			break;
		if (!(top_lists[i] & need))
			continue;
		if (((lo ^ top_lo[i]) & top_mlo[i]) || ((hi ^ top_hi[i]) & top_mhi[i]))
			continue;
		if (top_exact[i] ? len == top_len[i] : len >= top_len[i])
			return 1;
	}
	return 0;
}

/* ---------------------------------------------------------------- caller paths */

/*
 * Folding `.`, `..` and repeated slashes of the absolute path in s->path, in place (the write
 * index never passes the read index). s->stack holds where each kept component starts, so
 * `..` goes back to the previous one (and stays at the root, as the kernel does).
 */
struct fnorm_ctx {
	__u32 len;	  /* bytes to read */
	__u32 w;	  /* bytes written */
	__u32 start;	  /* where the current component starts in the output */
	__u32 kind;	  /* the current component so far: 0 empty, 1 ".", 2 "..", 3 a name */
	__u32 sp;	  /* entries on s->stack */
	/*
	 * Keeps the context a multiple of 8 bytes: with a 20-byte context, `sp` was found
	 * overwritten between steps (the inlined bpf_loop keeps its registers in stack slots
	 * right after the caller's last 8-byte slot).
	 */
	__u32 _pad;
};

static long fnorm_step(__u64 index, void *arg)
{
	struct fnorm_ctx *c = arg;
	struct lg_pscratch *s = pscratch_get();
	__u32 r = index;
	char ch;

	if (!s || r > c->len || r >= LG_FPATH_LEN)
		return 1;
	ch = r < c->len ? s->path[PIDX(r)] : '/';
	if (r == 0) {
		/* Composed paths start at the root. */
		s->path[0] = '/';
		c->w = 1;
		c->start = 1;
		c->kind = 0;
		return 0;
	}
	if (ch != '/') {
		s->path[PIDX(c->w)] = ch;
		c->w++;
		if (ch == '.' && c->kind < 2)
			c->kind++;
		else
			c->kind = 3;
		return 0;
	}
	switch (c->kind) {
	case 3:
		/* A name: keep it, and the slash after it unless this is the end. */
		s->stack[c->sp & 63] = c->start;
		c->sp++;
		if (r < c->len) {
			s->path[PIDX(c->w)] = '/';
			c->w++;
			c->start = c->w;
		}
		break;
	case 2:
		/* "..": drop it and the component before it. */
		c->w = c->start;
		if (c->sp > 0) {
			c->sp--;
			c->w = s->stack[c->sp & 63];
		}
		c->start = c->w;
		break;
	default:
		/* "." or an empty component: drop it. */
		c->w = c->start;
		break;
	}
	c->kind = 0;
	return 0;
}

static __always_inline __u32 normalize(struct lg_pscratch *s, __u32 len)
{
	struct fnorm_ctx c = { .len = len };
	__u32 w;

	bpf_loop(LG_FPATH_LEN, fnorm_step, &c, 0);
	w = c.w;
	/* A dropped last component leaves a slash behind: not for the root itself. */
	if (w > 1 && s->path[PIDX((w - 1))] == '/')
		w--;
	if (w == 0) {
		s->path[0] = '/';
		w = 1;
	}
	s->path[PIDX(w)] = 0;
	s->keylen = (w > 256 ? 256 : w) * 8;
	return w;
}

/*
 * The path a *at() call names: `dfd` and the caller's string at `uptr`. Relative strings are
 * appended to the kernel's path of the directory (the working directory for AT_FDCWD, else
 * the descriptor's file); an empty string names that file itself (AT_EMPTY_PATH).
 */
static __always_inline struct lg_composed compose_caller(struct lg_pscratch *s, int dfd, __u64 uptr)
{
	struct lg_composed r = { .state = LG_WALK_ROOT };
	struct file *f;
	char first = 0;
	__u32 off = 0;
	long n;

	bpf_probe_read_user(&first, 1, (const void *)uptr);
	if (first != '/') {
		if (dfd == LG_AT_FDCWD) {
			struct fs_struct *fs = BPF_CORE_READ(current_task(), fs);

			r = compose_dentry(s, BPF_CORE_READ(fs, pwd.dentry), BPF_CORE_READ(fs, pwd.mnt));
		} else {
			f = fd_file(dfd);
			if (!f) {
				r.len = 0;
				return r;
			}
			r = compose_file(s, f);
		}
		off = r.len;
		if (!first)
			return r;
		/* "/" + "x" is "/x", not "//x" (normalize would fold it too). */
		if (off >= LG_FPATH_LEN - 1) {
			r.truncated = 1;
			return r;
		}
		s->path[PIDX(off)] = '/';
		off++;
	}
	n = bpf_probe_read_user_str(&s->path[PIDX(off)], LG_STR_LEN,
				    (const void *)uptr);
	if (n > 0)
		off += n - 1;
	if (off >= LG_FPATH_LEN) {
		off = LG_FPATH_LEN - 1;
		r.truncated = 1;
	}
	r.len = normalize(s, off);
	return r;
}

/* ---------------------------------------------------------------- reporting */

/*
 * One file record: the path in s->path (len bytes), the second path in s->path2 (old_len
 * bytes, 0 for none).
 */
static __always_inline void file_report(struct lg_pscratch *s, __u32 op, long ret, __u32 flags,
					__u32 mode, __u32 len, __u32 old_len)
{
	struct lg_file *e = reserve(sizeof(*e), LG_FILE);

	if (!e)
		return;
	e->type = LG_FILE;
	e->op = op;
	e->ret = ret;
	e->mode = mode;
	e->flags = flags;
	e->path_len = len;
	e->old_path_len = old_len;
	copy_path(e->path, s->path);
	if (old_len)
		copy_path(e->old_path, s->path2);
	else
		e->old_path[0] = 0;
	fill_task(&e->task);
	submit(e, sizeof(*e));
}

/* Keeps the composed path as the second one (s->path2) while the next is composed. */
static __always_inline void keep_as_second(struct lg_pscratch *s)
{
	bpf_probe_read_kernel(s->path2, LG_FPATH_LEN, s->path);
}

/* ---------------------------------------------------------------- opens */

/*
 * At an open's exit. `dfd_arg`/`path_arg`/`flags_arg` say where the caller's arguments are
 * (-1: not there), for the opens the kernel refused (no file to read the truth from).
 */
static __always_inline int file_open_end(struct pt_regs *regs, long ret, int compat, int dfd_arg,
					 int path_arg, int flags_arg, int openat2)
{
	struct lg_pscratch *s;
	struct lg_composed c;
	__u32 need, op, got;
	__u64 uflags = 0;
	int dfd = LG_AT_FDCWD;

	if (is_agent())
		return 0;
	/* Opened: file_open_fast() (called by the dispatcher first) did the work. */
	if (ret >= 0)
		return 0;
	/* Refused: only a permission refusal is an attempt worth a look (not ENOENT probing). */
	if ((ret != -LG_EACCES && ret != -LG_EPERM) || path_arg < 0)
		return 0;
	if (flags_arg >= 0) {
		if (openat2)
			bpf_probe_read_user(&uflags, sizeof(uflags),
					    (const void *)sys_arg(regs, flags_arg, compat));
		else
			uflags = (__u32)sys_arg(regs, flags_arg, compat);
	} else {
		/* creat() */
		uflags = LG_O_CREAT | 1;
	}
	if ((uflags & LG_O_ACCMODE) || (uflags & (LG_O_CREAT | LG_O_TRUNC))) {
		need = LG_FILE_F_WATCH_WRITE;
		op = (uflags & LG_O_ACCMODE) ? LG_FILE_WRITE : LG_FILE_CREATE;
	} else {
		if (!watch_reads)
			return 0;
		need = LG_FILE_F_WATCH_READ;
		op = LG_FILE_READ;
	}
	s = pscratch_get();
	if (!s)
		return 0;
	if (dfd_arg >= 0)
		dfd = (int)sys_arg(regs, dfd_arg, compat);
	c = compose_caller(s, dfd, sys_arg(regs, path_arg, compat));
	if (!c.len)
		return 0;
	got = watched(s);
	if (!(got & need))
		return 0;
	file_report(s, op, ret,
		    (got & need) | LG_FILE_F_CALLER | (c.truncated ? LG_FILE_F_TRUNCATED : 0), 0,
		    c.len, 0);
	return 0;
}

/*
 * A candidate open (see lg_file_open_fast): the whole path, composed and looked up; reported
 * when it is on the `need` list. Global subprograms (verified once, on their own, with plain
 * numbers as arguments): static ones are verified again in every caller's state, and inside
 * the compat programs that pushed the verifier past its million instructions.
 */
__noinline int lg_file_open_slow(long ret, __u32 need, __u32 op)
{
	struct lg_pscratch *s = pscratch_get();
	struct file *f = fd_file(ret);
	struct lg_composed c;
	struct fwalk_ctx w;
	__u32 got;

	if (!s || !f)
		return 0;
	w = walk_dentry(BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt));
	c = compose_walked(s, &w);
	got = watched(s);
	/* A walk that did not reach the root cannot be judged: report it, flagged. */
	if (!(got & need) && !c.truncated)
		return 0;
	file_report(s, op, ret, (got & need) | (c.truncated ? LG_FILE_F_TRUNCATED : 0), 0, c.len,
		    0);
	return 0;
}

/*
 * At the exit of every successful open, called by the dispatcher directly: the file the kernel
 * opened (through the returned descriptor), what it was opened for (f_mode), and the fast
 * walk's first-component test. Most opens end here, after a few loads and compares.
 */
__noinline int lg_file_open_fast(long ret)
{
	struct file *f;
	__u32 fmode, need, op;

	if (is_agent())
		return 0;
	f = fd_file_fast(ret);
	if (!f)
		return 0;
	fmode = KREAD(struct file, f, f_mode);
	if (fmode & LG_FMODE_PATH)
		return 0;
	if (fmode & LG_FMODE_CREATED) {
		need = LG_FILE_F_WATCH_WRITE;
		op = LG_FILE_CREATE;
	} else if (fmode & LG_FMODE_WRITE) {
		need = LG_FILE_F_WATCH_WRITE;
		op = LG_FILE_WRITE;
	} else {
		if (!watch_reads)
			return 0;
		need = LG_FILE_F_WATCH_READ;
		op = LG_FILE_READ;
	}
	if (!top_candidate(KREAD(struct file, f, f_path.dentry), KREAD(struct file, f, f_path.mnt),
			   need))
		return 0;
	return lg_file_open_slow(ret, need, op);
}

/* ---------------------------------------------------------------- renames, unlinks, ... */

/*
 * At the exit of a call that names its file by a string: `op` (enum lg_file_op), the path at
 * (dfd_arg, path_arg), for rename and link the other one at (dfd2_arg, path2_arg) (-1: none;
 * dfd -1: relative to the working directory), for symlink its target string at target_arg.
 * Reported when either path is on the write list, successful or not.
 */
static __always_inline int file_path_end(struct pt_regs *regs, long ret, int compat, __u32 op,
					 int dfd_arg, int path_arg, int dfd2_arg, int path2_arg,
					 int target_arg, __u32 mode)
{
	struct lg_pscratch *s;
	struct lg_composed c, c2 = {};
	__u32 got = 0, got2 = 0, flags;
	int dfd;

	if (is_agent())
		return 0;
	s = pscratch_get();
	if (!s)
		return 0;
	if (path2_arg >= 0) {
		/* The other path first (rename's old name, link's existing file), kept aside. */
		dfd = dfd2_arg >= 0 ? (int)sys_arg(regs, dfd2_arg, compat) : LG_AT_FDCWD;
		c2 = compose_caller(s, dfd, sys_arg(regs, path2_arg, compat));
		got2 = c2.len ? watched(s) : 0;
		keep_as_second(s);
	} else if (target_arg >= 0) {
		/* A symlink's target is text, not a path the kernel resolves now. */
		long n = bpf_probe_read_user_str(s->path2, LG_STR_LEN,
						 (const void *)sys_arg(regs, target_arg, compat));

		c2.len = n > 0 ? n - 1 : 0;
	}
	dfd = dfd_arg >= 0 ? (int)sys_arg(regs, dfd_arg, compat) : LG_AT_FDCWD;
	c = compose_caller(s, dfd, sys_arg(regs, path_arg, compat));
	if (!c.len)
		return 0;
	got = watched(s);
	if (!((got | got2) & LG_FILE_F_WATCH_WRITE))
		return 0;
	flags = ((got | got2) & LG_FILE_F_WATCH_WRITE) | LG_FILE_F_CALLER;
	if (c.truncated || c2.truncated)
		flags |= LG_FILE_F_TRUNCATED;
	file_report(s, op, ret, flags, mode, c.len, c2.len);
	return 0;
}

/*
 * The two above as global subprograms, which the verifier checks once, on their own, with the
 * argument positions unknown: inlined, each syscall's copy (five opens, twelve path calls) was
 * verified again inside the dispatcher's exit program, which then took ~850 ms to load at
 * every start. Positions are packed 4 bits each (LG_FARGS; 0xf: none), since a BPF function
 * takes five arguments; the registers are passed as a plain number (see regs_number()).
 */
#define LG_FARGS(a, b, c, d, e)                                                         \
	(((__u32)(a) & 0xf) | (((__u32)(b) & 0xf) << 4) | (((__u32)(c) & 0xf) << 8) |  \
	 (((__u32)(d) & 0xf) << 12) | (((__u32)(e) & 0xf) << 16))

static __always_inline int farg(__u32 packed, int k)
{
	__u32 v = (packed >> (4 * k)) & 0xf;

	return v == 0xf ? -1 : (int)v;
}

/* file_path_end(); op_compat: the op (enum lg_file_op) << 8 | compat. */
__noinline int lg_file_path_end(unsigned long regs_addr, long ret, __u32 op_compat, __u32 args,
				__u32 mode)
{
	return file_path_end((struct pt_regs *)regs_addr, ret, op_compat & 0xff, op_compat >> 8,
			     farg(args, 0), farg(args, 1), farg(args, 2), farg(args, 3),
			     farg(args, 4), mode);
}

/* file_open_end(); args: dfd, path, flags positions, then openat2 (0 or 1). */
__noinline int lg_file_open_end(unsigned long regs_addr, long ret, int compat, __u32 args)
{
	return file_open_end((struct pt_regs *)regs_addr, ret, compat, farg(args, 0),
			     farg(args, 1), farg(args, 2), farg(args, 3) == 1);
}

/* fchmod(fd, mode): the file is the kernel's, through the descriptor. */
static __always_inline int file_fchmod_end(struct pt_regs *regs, long ret, int compat)
{
	struct lg_pscratch *s;
	struct lg_composed c;
	struct file *f;
	__u32 got;

	if (is_agent())
		return 0;
	f = fd_file((int)sys_arg(regs, 0, compat));
	s = pscratch_get();
	if (!f || !s)
		return 0;
	c = compose_file(s, f);
	if (c.state == LG_WALK_ANON)
		return 0;
	got = watched(s);
	if (!(got & LG_FILE_F_WATCH_WRITE))
		return 0;
	file_report(s, LG_FILE_CHMOD, ret,
		    LG_FILE_F_WATCH_WRITE | (c.truncated ? LG_FILE_F_TRUNCATED : 0),
		    sys_arg(regs, 1, compat) & 07777, c.len, 0);
	return 0;
}

/* ---------------------------------------------------------------- Unix socket connects */

/*
 * At connect(fd, addr, len)'s exit: a Unix socket connected to a socket file on the connect list.
 * A connected socket is judged by the kernel's objects: its peer (for a stream socket the
 * server's end of this connection, which the kernel gives the listener's path; for a datagram
 * socket the bound socket itself) holds the path the server bound, as a dentry and a mount,
 * composed like an opened file's. So a symlink, a relative name, or the socket bind-mounted into
 * a container (`-v /run/docker.sock:/var/run/docker.sock`) all end in the socket's own path as
 * the server's mount namespace sees it. A connect refused for the socket file's permissions
 * (EACCES, EPERM) has no peer: the caller's sun_path is used, like a refused open's string.
 * Abstract sockets have no file and are not reported.
 */
static __always_inline int file_connect_end(struct pt_regs *regs, long ret, int compat)
{
	struct lg_pscratch *s;
	struct lg_composed c;
	struct unix_sock *peer;
	struct sock *sk;
	struct dentry *d;
	__u32 got, flags = 0;
	__u16 family = 0;
	char first = 0;
	__u64 uaddr;

	if (!watch_connects || is_agent())
		return 0;
	s = pscratch_get();
	if (!s)
		return 0;
	if (ret == 0) {
		sk = fd_sock((int)sys_arg(regs, 0, compat));
		if (!sk || BPF_CORE_READ(sk, __sk_common.skc_family) != AF_UNIX)
			return 0;
		peer = (struct unix_sock *)BPF_CORE_READ((struct unix_sock *)sk, peer);
		d = peer ? BPF_CORE_READ(peer, path.dentry) : NULL;
		if (!d)
			return 0;
		c = compose_dentry(s, d, BPF_CORE_READ(peer, path.mnt));
	} else if (ret == -LG_EACCES || ret == -LG_EPERM) {
		uaddr = sys_arg(regs, 1, compat);
		bpf_probe_read_user(&family, sizeof(family), (const void *)uaddr);
		bpf_probe_read_user(&first, 1, (const void *)(uaddr + sizeof(family)));
		if (family != AF_UNIX || !first)
			return 0;
		c = compose_caller(s, LG_AT_FDCWD, uaddr + sizeof(family));
		flags = LG_FILE_F_CALLER;
	} else {
		return 0;
	}
	if (!c.len || c.state == LG_WALK_ANON)
		return 0;
	got = watched(s);
	if (!(got & LG_FILE_F_WATCH_CONNECT))
		return 0;
	file_report(s, LG_FILE_CONNECT, ret,
		    LG_FILE_F_WATCH_CONNECT | flags | (c.truncated ? LG_FILE_F_TRUNCATED : 0), 0,
		    c.len, 0);
	return 0;
}

#endif /* LG_FILE_BPF_H */
