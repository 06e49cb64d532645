/*
 * lgt.c: the kernel matrix's guest test program (scripts/kernel-matrix). Built static, it runs
 * inside each booted kernel and makes one kind of event per run, printing on one line what the
 * guest's checks need to find that event in the agent's output (`key=value` words).
 *
 *   lgt exit CODE [WORD...]  exits with CODE (an exec with argv, then an exit)
 *   lgt fork                 forks a child that exits 0; prints child=PID
 *   lgt tcp                  listens on 127.0.0.1, connects to it, accepts; prints port=PORT
 *   lgt setuid               setuid(65534) (run as root)
 *   lgt capset               drops CAP_NET_RAW from its effective and permitted sets (as root)
 *   lgt ptrace               PTRACE_ATTACH to a child of its own; prints target=PID
 *   lgt memfd                copies itself into memfd "lgt_memfd" and executes that with
 *                            `exit 0 fileless` (memfd_create, then a fileless exec)
 *   lgt bpf                  BPF_PROG_LOAD of a two-instruction socket filter named "lgt_prog"
 *   lgt storm N WORD         N times: fork, exec `lgt exit 0 WORD`, wait; exits 1 if any failed
 *   lgt ns                   unshare(CLONE_NEWUTS); prints pid=PID
 *   lgt mount DIR            mounts a tmpfs named "lgt-src" on DIR and unmounts it; prints pid=PID
 *   lgt module               finit_module of /dev/null with params "lgt_mark=1" (fails: no
 *                            module there, the attempt is what is reported); prints pid=PID
 *   lgt dns                  one DNS question (A lgt-probe.example) over UDP to 127.0.0.1:53;
 *                            prints pid=PID
 *   lgt spawn PATH [ARG...]  forks a child that executes PATH with argv [PATH ARG...], waits;
 *                            prints child=PID and exits with the child's status (127: the
 *                            exec failed)
 *   lgt asuid UID PATH [ARG...]  setuid(UID) (run as root: real, effective and saved), then
 *                            executes PATH with argv [PATH ARG...] in the same process (127:
 *                            the setuid or the exec failed)
 *   lgt uconnect PATH        listens on a Unix socket bound at PATH and connects to it through
 *                            a relative name (from PATH's directory); prints pid=PID
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sched.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int fail(const char *what)
{
	fprintf(stderr, "lgt: %s: %s\n", what, strerror(errno));
	return 1;
}

static int do_tcp(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0), c, s;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a, &len))
		return fail("listen");
	c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)))
		return fail("connect");
	s = accept(l, NULL, NULL);
	if (s < 0)
		return fail("accept");
	printf("port=%d\n", ntohs(a.sin_port));
	return 0;
}

static int do_ptrace(void)
{
	int st;
	pid_t child = fork();

	if (child < 0)
		return fail("fork");
	if (child == 0) {
		for (;;)
			pause();
	}
	if (ptrace(PTRACE_ATTACH, child, 0, 0))
		return fail("ptrace");
	waitpid(child, &st, 0);
	ptrace(PTRACE_DETACH, child, 0, 0);
	kill(child, SIGKILL);
	waitpid(child, &st, 0);
	printf("target=%d\n", child);
	return 0;
}

static int do_memfd(void)
{
	static char buf[1 << 16];
	int in = open("/proc/self/exe", O_RDONLY);
	int fd = syscall(SYS_memfd_create, "lgt_memfd", 0);
	ssize_t n;
	char *argv[] = { "lgt", "exit", "0", "fileless", NULL };
	char *envp[] = { NULL };

	if (in < 0 || fd < 0)
		return fail("memfd_create");
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(fd, buf, n) != n)
			return fail("write");
	close(in);
	fflush(stdout);
	syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
	/* Debian's 5.10 answers ENOENT in the matrix's guest (no /dev/fd there): by its /proc name. */
	snprintf(buf, sizeof(buf), "/proc/self/fd/%d", fd);
	execve(buf, argv, envp);
	return fail("execve of the memfd");
}

static int do_bpf(void)
{
	struct bpf_insn insns[2] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	union bpf_attr attr;
	long fd;

	/* Before 5.11 BPF memory counts against RLIMIT_MEMLOCK (64 KiB by default). */
	setrlimit(RLIMIT_MEMLOCK, &(struct rlimit){ RLIM_INFINITY, RLIM_INFINITY });
	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
	attr.insn_cnt = 2;
	attr.insns = (unsigned long)insns;
	attr.license = (unsigned long)"GPL";
	strcpy(attr.prog_name, "lgt_prog");
	fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
	if (fd < 0)
		return fail("bpf");
	printf("fd=%ld\n", fd);
	return 0;
}

static int do_capset(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d))
		return fail("capget");
	d[0].effective &= ~(1u << CAP_NET_RAW);
	d[0].permitted &= ~(1u << CAP_NET_RAW);
	if (syscall(SYS_capset, &h, d))
		return fail("capset");
	return 0;
}

/*
 * fork, exec argv[0] with argv (no environment) in the child, wait: the child's exit status
 * (127: the exec failed, 128+N: killed by signal N), -1 when fork or wait failed; *pid: the
 * child's pid.
 */
static int run_child(char **argv, pid_t *pid)
{
	char *envp[] = { NULL };
	int st;
	pid_t p = fork();

	if (p < 0)
		return -1;
	if (p == 0) {
		execve(argv[0], argv, envp);
		_exit(127);
	}
	*pid = p;
	if (waitpid(p, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int do_storm(long n, char *word)
{
	static char self[4096];
	char *argv[] = { self, "exit", "0", word, NULL };
	long bad = 0;
	pid_t p;

	if (readlink("/proc/self/exe", self, sizeof(self) - 1) <= 0)
		return fail("readlink /proc/self/exe");
	for (long i = 0; i < n; i++)
		if (run_child(argv, &p))
			bad++;
	printf("execs=%ld failed=%ld\n", n, bad);
	return bad != 0;
}


/* One DNS question for "lgt-probe.example" (type A) to 127.0.0.1:53; nobody needs to answer. */
static int do_dns(void)
{
	static const unsigned char q[] = {
		0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
		9, 'l', 'g', 't', '-', 'p', 'r', 'o', 'b', 'e',
		7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0x00, 0x01, 0x00, 0x01,
	};
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(53) };
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	if (fd < 0)
		return fail("socket");
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (sendto(fd, q, sizeof(q), 0, (struct sockaddr *)&a, sizeof(a)) < 0)
		return fail("sendto");
	close(fd);
	printf("pid=%d\n", getpid());
	return 0;
}

/* run_child(argv), printing child=PID: its exit status. */
static int do_spawn(char **argv)
{
	pid_t p = 0;
	int st = run_child(argv, &p);

	if (st < 0)
		return fail("fork/wait");
	printf("child=%d\n", p);
	return st;
}

/* setuid(uid), then exec argv[0] with argv in this process (127: either failed). */
static int do_asuid(long uid, char **argv)
{
	char *envp[] = { NULL };

	if (setuid((uid_t)uid)) {
		fail("setuid");
		return 127;
	}
	execve(argv[0], argv, envp);
	fail("execve");
	return 127;
}

/* A Unix stream listener at path, and a connect to it by its base name from its directory. */
static int do_uconnect(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX }, c = { .sun_family = AF_UNIX };
	const char *base = strrchr(path, '/');
	char dir[sizeof(a.sun_path)];
	int l, s;

	if (!base || strlen(path) >= sizeof(a.sun_path))
		return fail("uconnect: an absolute path below 108 bytes");
	snprintf(dir, sizeof(dir), "%.*s", (int)(base - path), path);
	strcpy(a.sun_path, path);
	strcpy(c.sun_path, base + 1);
	unlink(path);
	l = socket(AF_UNIX, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1))
		return fail("uconnect: listen");
	s = socket(AF_UNIX, SOCK_STREAM, 0);
	if (s < 0 || chdir(dir[0] ? dir : "/") || connect(s, (struct sockaddr *)&c, sizeof(c)))
		return fail("uconnect: connect");
	printf("pid=%d\n", getpid());
	return 0;
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "";

	if (!strcmp(what, "exit") && argc > 2)
		return atoi(argv[2]);
	if (!strcmp(what, "fork")) {
		int st;
		pid_t p = fork();

		if (p < 0)
			return fail("fork");
		if (p == 0)
			_exit(0);
		waitpid(p, &st, 0);
		printf("child=%d\n", p);
		return 0;
	}
	if (!strcmp(what, "tcp"))
		return do_tcp();
	if (!strcmp(what, "setuid")) {
		if (setuid(65534))
			return fail("setuid");
		return 0;
	}
	if (!strcmp(what, "capset"))
		return do_capset();
	if (!strcmp(what, "ptrace"))
		return do_ptrace();
	if (!strcmp(what, "memfd"))
		return do_memfd();
	if (!strcmp(what, "bpf"))
		return do_bpf();
	if (!strcmp(what, "ns")) {
		if (unshare(CLONE_NEWUTS))
			return fail("unshare");
		printf("pid=%d\n", getpid());
		return 0;
	}
	if (!strcmp(what, "mount") && argc > 2) {
		if (mount("lgt-src", argv[2], "tmpfs", 0, NULL))
			return fail("mount");
		umount(argv[2]);
		printf("pid=%d\n", getpid());
		return 0;
	}
	if (!strcmp(what, "module")) {
		int fd = open("/dev/null", O_RDONLY);

		/* Fails (not a module, or no module support): the attempt is the event. */
		syscall(SYS_finit_module, fd, "lgt_mark=1", 0);
		printf("pid=%d\n", getpid());
		return 0;
	}
	if (!strcmp(what, "dns"))
		return do_dns();
	if (!strcmp(what, "storm") && argc > 3)
		return do_storm(atol(argv[2]), argv[3]);
	if (!strcmp(what, "spawn") && argc > 2)
		return do_spawn(argv + 2);
	if (!strcmp(what, "asuid") && argc > 3)
		return do_asuid(atol(argv[2]), argv + 3);
	if (!strcmp(what, "uconnect") && argc > 2)
		return do_uconnect(argv[2]);
	fprintf(stderr, "usage: lgt exit CODE [WORD...] | fork | tcp | setuid | capset | ptrace | memfd | bpf"
			" | storm N WORD | ns | mount DIR | module | dns | spawn PATH [ARG...]"
			" | asuid UID PATH [ARG...] | uconnect PATH\n");
	return 2;
}
