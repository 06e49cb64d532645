/* SPDX-License-Identifier: GPL-2.0 */
/*
 * paths.bpf.h: absolute paths as the KERNEL resolved them, composed root first from a dentry
 * and its mount (the file an open returned, the file behind a descriptor, a working
 * directory), for file events and module files. Included by sensor.bpf.c after its helpers.
 *
 * Two passes, each a bpf_loop (verified once, whatever the depth):
 *  1. walk: from the dentry up to the root of its mount tree, crossing mounts, noting each
 *     component's name pointer and length, leaf first, into a ring of LG_FDEPTH slots (a path
 *     deeper than that keeps its top LG_FDEPTH components: the prefix the watch lists need);
 *  2. compose: those components root first, "/a/b/c", into a per-CPU buffer whose first 256
 *     bytes are also the key of the watch lists' LPM trie (bpf/file.bpf.h).
 * Offsets are masked to LG_FPATH_LEN and each read is at most 255 bytes (NAME_MAX), into a
 * buffer of twice LG_FPATH_LEN, so every write is provably in bounds.
 */
#ifndef LG_PATHS_BPF_H
#define LG_PATHS_BPF_H

#define LG_FDEPTH 32	  /* components kept (a power of two) */
#define LG_FWALK_MAX 128  /* dentries and mount crossings walked at most */
#define LG_NAME_MAX 255

/*
 * An index into a path buffer, masked where the verifier sees it: the barrier keeps the
 * compiler from dropping the mask after a bounds check it already knows, which a verifier
 * that does not carry that check through a stack spill (Linux 6.1) refuses as unbounded.
 */
#define PIDX(i)                                                                 \
	({                                                                      \
		__u32 __pidx = (i);                                             \
		barrier_var(__pidx);                                            \
		__pidx & (LG_FPATH_LEN - 1);                                    \
	})

/* Per-CPU scratch of the path code (too large for the 512-byte stack). */
struct lg_pscratch {
	const unsigned char *names[LG_FDEPTH];
	__u32 lens[LG_FDEPTH];
	/* keylen + path form the LPM key {prefixlen in bits, data}: keep them adjacent. */
	__u32 keylen;
	char path[2 * LG_FPATH_LEN];
	/* A second path (rename's old name) and the normalizer's output. */
	__u32 keylen2;
	char path2[2 * LG_FPATH_LEN];
	/* Offsets of the '/' before each kept component while normalizing. */
	__u16 stack[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lg_pscratch);
} pscratch SEC(".maps");

/*
 * The file behind descriptor fd of the current task, with plain loads through untrusted BTF
 * pointers. The slot fdt->fd[fd] is reached by casting its address (a plain number: fdt->fd
 * is a pointer to pointers, which the verifier treats as a number) to a kernel type whose
 * first member is a pointer (struct callback_head, in every kernel): that member IS the slot.
 */
static __always_inline struct file *fd_file_fast(long fd)
{
	struct fdtable *fdt;
	unsigned long slot;

	if (!bpf_ksym_exists(bpf_rdonly_cast))
		return fd_file(fd);
	fdt = current_btf()->files->fdt;
	if (fd < 0 || !fdt || fd >= fdt->max_fds)
		return NULL;
	slot = (unsigned long)fdt->fd + fd * sizeof(void *);
	return bpf_core_cast(bpf_core_cast((void *)slot, struct callback_head)->next, struct file);
}

static __always_inline struct lg_pscratch *pscratch_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&pscratch, &zero);
}

/* How a walk ended. */
#define LG_WALK_RUNNING 0
#define LG_WALK_ROOT 1	  /* reached the root of the mount tree: an absolute path */
#define LG_WALK_ANON 2	  /* a dentry without a directory (pipe, socket, memfd, anon inode) */

struct fwalk_ctx {
	struct dentry *d;
	struct mount *mnt;
	__u32 depth;
	__u32 state;
};

/* walk_up()'s answer when it crossed from a mount's root to its mountpoint (no name there). */
#define LG_WALK_CROSSED 0xff

/*
 * One step of a walk up from dentry *d in mount *mnt, for both walks (fwalk_step here, ftop_one
 * in file.bpf.h): LG_WALK_RUNNING with *parent set when d is a name to note, LG_WALK_CROSSED
 * after moving *d and *mnt to the mount's mountpoint, or the stop state LG_WALK_ROOT (the root)
 * or LG_WALK_ANON (a dentry that is its own parent: not in the tree).
 */
static __always_inline __u32 walk_up(struct dentry **d, struct mount **mnt, struct dentry **parent)
{
	struct mount *up;

	if (*d == KREAD(struct mount, *mnt, mnt.mnt_root)) {
		up = KREAD(struct mount, *mnt, mnt_parent);
		if (up == *mnt)
			return LG_WALK_ROOT;
		*d = KREAD(struct mount, *mnt, mnt_mountpoint);
		*mnt = up;
		return LG_WALK_CROSSED;
	}
	*parent = KREAD(struct dentry, *d, d_parent);
	return *parent == *d ? LG_WALK_ANON : LG_WALK_RUNNING;
}

static long fwalk_step(__u64 index, void *arg)
{
	struct fwalk_ctx *w = arg;
	struct lg_pscratch *s = pscratch_get();
	struct dentry *d = w->d, *parent = NULL;
	struct mount *mnt = w->mnt;
	__u32 i, st;

	if (!s || !d || !mnt)
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
	i = w->depth & (LG_FDEPTH - 1);
	s->names[i] = KREAD(struct dentry, d, d_name.name);
	s->lens[i] = KREAD(struct dentry, d, d_name.len);
	w->depth++;
	w->d = parent;
	return 0;
}

struct fcompose_ctx {
	__u32 depth;	/* components noted by the walk */
	__u32 off;	/* bytes written */
	__u32 truncated;
	__u32 _pad;	/* a multiple of 8 bytes, see fnorm_ctx in file.bpf.h */
};

static long fcompose_step(__u64 index, void *arg)
{
	struct fcompose_ctx *c = arg;
	struct lg_pscratch *s = pscratch_get();
	__u32 j, len, off = c->off;

	if (!s || index >= c->depth || index >= LG_FDEPTH)
		return 1;
	j = (c->depth - 1 - (__u32)index) & (LG_FDEPTH - 1);
	len = s->lens[j];
	if (len > LG_NAME_MAX)
		len = LG_NAME_MAX;
	/* Room for '/', the name and the final NUL. */
	if (off + 1 + len >= LG_FPATH_LEN) {
		c->truncated = 1;
		return 1;
	}
	s->path[PIDX(off)] = '/';
	off++;
	if (bpf_probe_read_kernel(&s->path[PIDX(off)], len & LG_NAME_MAX,
				  s->names[j]) < 0) {
		c->truncated = 1;
		return 1;
	}
	c->off = off + len;
	return 0;
}

/* The result of composing a path into pscratch.path. */
struct lg_composed {
	__u32 len;	 /* bytes of the path (no NUL) */
	__u32 state;	 /* LG_WALK_* */
	__u32 truncated; /* deeper than LG_FDEPTH, longer than LG_FPATH_LEN, or a walk cut short */
};

/* Pass 1 alone: the components of (dentry d, mount vm) into s->names/lens. */
static __always_inline struct fwalk_ctx walk_dentry(struct dentry *d, struct vfsmount *vm)
{
	struct fwalk_ctx w = {
		.d = d,
		.mnt = container_of(vm, struct mount, mnt),
	};

	bpf_loop(LG_FWALK_MAX, fwalk_step, &w, 0);
	return w;
}

/*
 * Pass 2: the walked components as the absolute path into s->path, NUL-terminated, and the
 * LPM key length (s->keylen, bits of at most the first 256 bytes).
 */
static __always_inline struct lg_composed compose_walked(struct lg_pscratch *s,
							  struct fwalk_ctx *w)
{
	struct fcompose_ctx c = { .depth = w->depth };
	struct lg_composed r = { .state = w->state };

	bpf_loop(LG_FDEPTH, fcompose_step, &c, 0);
	if (c.off == 0) {
		s->path[0] = '/';
		c.off = 1;
	}
	s->path[PIDX(c.off)] = 0;
	r.len = c.off;
	r.truncated = c.truncated || w->depth > LG_FDEPTH || w->state == LG_WALK_RUNNING;
	s->keylen = (c.off > 256 ? 256 : c.off) * 8;
	return r;
}

/*
 * A kernel pointer as a plain number, for a global subprogram (which takes no kernel
 * pointers): copied through a probe read, which the verifier does not follow. One helper call.
 */
static __always_inline unsigned long ptr_number(const void *p)
{
	unsigned long addr = 0;

	bpf_probe_read_kernel(&addr, sizeof(addr), &p);
	return addr;
}

/*
 * Both passes for (dentry d, mount vm) into the per-CPU scratch, as a global subprogram: the
 * verifier checks its two loops once, not once per caller (a dozen in the dispatcher's exit
 * program). The result packed: len, state << 32, truncated << 40.
 */
__noinline __u64 lg_compose_dentry(unsigned long d, unsigned long vm)
{
	struct lg_pscratch *s = pscratch_get();
	struct lg_composed r;
	struct fwalk_ctx w;

	if (!s)
		return (__u64)LG_WALK_ANON << 32;
	w = walk_dentry((struct dentry *)d, (struct vfsmount *)vm);
	r = compose_walked(s, &w);
	return r.len | ((__u64)r.state << 32) | ((__u64)(r.truncated != 0) << 40);
}

/* The absolute path of (dentry d, mount vm) into s->path (the same per-CPU scratch). */
static __always_inline struct lg_composed compose_dentry(struct lg_pscratch *s, struct dentry *d,
							  struct vfsmount *vm)
{
	__u64 v = lg_compose_dentry(ptr_number(d), ptr_number(vm));
	struct lg_composed r = {
		.len = (__u32)v,
		.state = (v >> 32) & 0xff,
		.truncated = (v >> 40) & 1,
	};

	return r;
}

/* The path of an open file. */
static __always_inline struct lg_composed compose_file(struct lg_pscratch *s, struct file *f)
{
	return compose_dentry(s, BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt));
}

/*
 * Copies the composed path out of the scratch into a record's buffer: all LG_FPATH_LEN bytes
 * (a constant size keeps the verifier simple); user space reads the record's length.
 */
static __always_inline void copy_path(char dst[LG_FPATH_LEN], const char *src)
{
	bpf_probe_read_kernel(dst, LG_FPATH_LEN, src);
}

#endif /* LG_PATHS_BPF_H */
