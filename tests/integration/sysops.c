/*
 * sysops.c: a test helper (tests/integration/system.rs) that makes the namespace, mount and
 * module syscalls the sensor reports, natively and through the 32-bit entry (`int $0x80` from
 * this 64-bit process). Built at test time with `cc -no-pie -static`, so its static buffers sit
 * below 4 GiB and can be passed as 32-bit pointers. One action per run; prints what the test
 * needs to match the events, as `key=value` words on one line.
 *
 *   sysops unshare            unshare(CLONE_NEWUTS | CLONE_NEWNS)
 *   sysops unshare32          the same through int $0x80
 *   sysops setns PATH         setns(open(PATH), CLONE_NEWNET) (PATH: /proc/PID/ns/net)
 *   sysops setns-bad          setns(-1, 0): EBADF
 *   sysops clone3             clone3(CLONE_NEWUTS | CLONE_NEWNET); the child sleeps 500 ms
 *   sysops clone              clone(CLONE_NEWUTS | SIGCHLD); the child sleeps 500 ms
 *   sysops mounts DIR MARK    in a new mount namespace: mount, umount2, fsopen + fsmount +
 *                             move_mount, open_tree, a failing pivot_root, and mount + umount2
 *                             through int $0x80
 *   sysops modules FILE MARK  init_module, finit_module(FILE) and init_module through int $0x80
 *   sysops dns32 NAME         a DNS query for NAME (type A) to 127.0.0.1:53 from a UDP socket,
 *                             with socket and sendto through int $0x80
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NR32_MOUNT 21
#define NR32_UMOUNT2 52
#define NR32_INIT_MODULE 128
#define NR32_UNSHARE 310
#define NR32_SOCKET 359
#define NR32_SENDTO 369

/* New mount API (include/uapi/linux/mount.h), spelled out for older headers. */
#define LG_FSCONFIG_SET_STRING 1
#define LG_FSCONFIG_CMD_CREATE 6
#define LG_MOVE_MOUNT_F_EMPTY_PATH 0x4
#define LG_OPEN_TREE_CLONE 1

/* Everything passed by pointer to int $0x80 lives here, below 4 GiB. */
static char src32[256], dir32[512], type32[] = "tmpfs", params32[256];
static char image32[64];
static unsigned char query32[300];
static unsigned char addr32[16];

static long int80_3(long nr, long a, long b, long c)
{
	long ret;

	asm volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory", "r8", "r9", "r10", "r11");
	return ret;
}

static long int80_5(long nr, long a, long b, long c, long d, long e)
{
	long ret;

	asm volatile("int $0x80"
		     : "=a"(ret)
		     : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
		     : "memory", "r8", "r9", "r10", "r11");
	return ret;
}

static unsigned long ino(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

static void nap(void)
{
	struct timespec ts = { 0, 500 * 1000 * 1000 };

	nanosleep(&ts, NULL);
}

static long ret_of(long r)
{
	return r < 0 ? -errno : r;
}

int main(int argc, char **argv)
{
	const char *op = argc > 1 ? argv[1] : "";

	if (!strcmp(op, "unshare") || !strcmp(op, "unshare32")) {
		unsigned long uts = ino("/proc/self/ns/uts"), mnt = ino("/proc/self/ns/mnt");
		long r = !strcmp(op, "unshare")
				 ? ret_of(unshare(CLONE_NEWUTS | CLONE_NEWNS))
				 : int80_3(NR32_UNSHARE, CLONE_NEWUTS | CLONE_NEWNS, 0, 0);

		printf("pid=%d ret=%ld uts_before=%lu uts_after=%lu mnt_before=%lu mnt_after=%lu\n",
		       getpid(), r, uts, ino("/proc/self/ns/uts"), mnt, ino("/proc/self/ns/mnt"));
		return r == 0 ? 0 : 1;
	}
	if (!strcmp(op, "setns") && argc > 2) {
		unsigned long net = ino("/proc/self/ns/net");
		int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
		long r = ret_of(setns(fd, CLONE_NEWNET));

		printf("pid=%d ret=%ld net_before=%lu net_after=%lu\n", getpid(), r, net,
		       ino("/proc/self/ns/net"));
		return r == 0 ? 0 : 1;
	}
	if (!strcmp(op, "setns-bad")) {
		long r = ret_of(setns(-1, 0));

		printf("pid=%d ret=%ld\n", getpid(), r);
		return 0;
	}
	if (!strcmp(op, "clone3") || !strcmp(op, "clone")) {
		char path[64];
		unsigned long uts;
		long pid;

		if (!strcmp(op, "clone3")) {
			/* struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, ... */
			uint64_t args[11] = { 0 };

			args[0] = CLONE_NEWUTS | CLONE_NEWNET;
			args[4] = SIGCHLD;
			pid = syscall(SYS_clone3, args, sizeof(args));
		} else {
			pid = syscall(SYS_clone, CLONE_NEWUTS | SIGCHLD, 0, 0, 0, 0);
		}
		if (pid == 0) {
			nap();
			_exit(0);
		}
		if (pid < 0) {
			printf("ret=%d\n", -errno);
			return 1;
		}
		snprintf(path, sizeof(path), "/proc/%ld/ns/uts", pid);
		uts = ino(path);
		snprintf(path, sizeof(path), "/proc/%ld/ns/net", pid);
		printf("pid=%d child=%ld uts_before=%lu child_uts=%lu child_net=%lu\n", getpid(), pid,
		       ino("/proc/self/ns/uts"), uts, ino(path));
		waitpid(pid, NULL, 0);
		return 0;
	}
	if (!strcmp(op, "mounts") && argc > 3) {
		const char *dir = argv[2], *mark = argv[3];
		char src[256], fssrc[256], bad[256];
		long r1, r2, fsfd, cfg, mfd, mv, tree, piv, r32m, r32u, u2;

		if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) {
			perror("private mount namespace");
			return 1;
		}
		snprintf(src, sizeof(src), "%s-src", mark);
		r1 = ret_of(mount(src, dir, "tmpfs", MS_NOSUID, "size=1m"));
		r2 = ret_of(umount2(dir, 0));
		fsfd = syscall(SYS_fsopen, "tmpfs", 0);
		snprintf(fssrc, sizeof(fssrc), "%s-fs", mark);
		cfg = syscall(SYS_fsconfig, fsfd, LG_FSCONFIG_SET_STRING, "source", fssrc, 0);
		cfg |= syscall(SYS_fsconfig, fsfd, LG_FSCONFIG_CMD_CREATE, NULL, NULL, 0);
		mfd = ret_of(syscall(SYS_fsmount, fsfd, 0, 0));
		mv = ret_of(syscall(SYS_move_mount, mfd, "", AT_FDCWD, dir,
				    LG_MOVE_MOUNT_F_EMPTY_PATH));
		tree = ret_of(syscall(SYS_open_tree, AT_FDCWD, dir, LG_OPEN_TREE_CLONE));
		u2 = ret_of(umount2(dir, MNT_DETACH));
		snprintf(bad, sizeof(bad), "/nonexistent-%s", mark);
		piv = ret_of(syscall(SYS_pivot_root, bad, bad));
		snprintf(src32, sizeof(src32), "%s-32", mark);
		snprintf(dir32, sizeof(dir32), "%s", dir);
		r32m = int80_5(NR32_MOUNT, (long)src32, (long)dir32, (long)type32, 0, 0);
		r32u = int80_3(NR32_UMOUNT2, (long)dir32, 0, 0);
		printf("pid=%d mount=%ld umount=%ld fsopen=%ld fsconfig=%ld fsmount=%ld move_mount=%ld "
		       "open_tree=%ld umount_detach=%ld pivot_root=%ld mount32=%ld umount32=%ld\n",
		       getpid(), r1, r2, fsfd, cfg, mfd, mv, tree, u2, piv, r32m, r32u);
		return r1 || r2 || fsfd < 0 || cfg || mfd < 0 || mv || tree < 0 || r32m || r32u;
	}
	if (!strcmp(op, "modules") && argc > 3) {
		static char image[64] = "\177ELF not really a module";
		char params[256];
		int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
		long r1, r2, r3;

		snprintf(params, sizeof(params), "lgmark=%s", argv[3]);
		r1 = ret_of(syscall(SYS_init_module, image, sizeof(image), params));
		r2 = ret_of(syscall(SYS_finit_module, fd, params, 0));
		memcpy(image32, image, sizeof(image32));
		snprintf(params32, sizeof(params32), "lgmark32=%s", argv[3]);
		r3 = int80_3(NR32_INIT_MODULE, (long)image32, sizeof(image32), (long)params32);
		printf("pid=%d init_module=%ld finit_module=%ld init_module32=%ld\n", getpid(), r1,
		       r2, r3);
		return 0;
	}
	if (!strcmp(op, "dns32") && argc > 2) {
		const char *name = argv[2];
		unsigned char *p = query32 + 12;
		long fd, r;

		query32[0] = 0x42, query32[1] = 0x24, query32[2] = 1, query32[5] = 1;
		while (*name) {
			const char *dot = strchr(name, '.');
			size_t len = dot ? (size_t)(dot - name) : strlen(name);

			*p++ = len;
			memcpy(p, name, len);
			p += len;
			name += len + (dot ? 1 : 0);
		}
		*p++ = 0, *p++ = 0, *p++ = 1, *p++ = 0, *p++ = 1;
		/* struct sockaddr_in: AF_INET, port 53, 127.0.0.1 */
		addr32[0] = 2, addr32[2] = 0, addr32[3] = 53;
		addr32[4] = 127, addr32[7] = 1;
		fd = int80_3(NR32_SOCKET, 2, 2, 0);
		{
			/* sendto(fd, buf, len, flags, addr, addrlen): six arguments, ebp the last. */
			long ebp_arg = 16;

			asm volatile("push %%rbp\n\tmov %[six], %%rbp\n\tint $0x80\n\tpop %%rbp"
				     : "=a"(r)
				     : "a"(NR32_SENDTO), "b"(fd), "c"(query32), "d"(p - query32), "S"(0),
				       "D"(addr32), [six] "r"(ebp_arg)
				     : "memory", "r8", "r9", "r10", "r11");
		}
		printf("pid=%d fd=%ld sent=%ld\n", getpid(), fd, r);
		return r <= 0;
	}
	fprintf(stderr, "usage: see the comment at the top of sysops.c\n");
	return 2;
}
