/*
 * lgguest.c: the kernel matrix's in-guest test program (scripts/kernel-matrix-arm64). Built
 * static for the guest's arch, it makes the kernel events the agent must report, one action per
 * run, and prints what the checks match them by as `key=value` words on one line.
 *
 *   lgguest true [ARG...]       exit 0 (an exec with known argv)
 *   lgguest exit CODE           exit with CODE
 *   lgguest fork                fork a child that exits 3, wait for it
 *   lgguest tcp                 listen on 127.0.0.1 (ephemeral port), connect to it, accept
 *   lgguest setuid              in a child: setgid(65534), setuid(65534)
 *   lgguest ptrace              PTRACE_ATTACH to a child of its own
 *   lgguest memfd               memfd_create("lg_memfd"), copy /proc/self/exe into it, exec it
 *                               (as `lgguest true memfd-exec`)
 *   lgguest bpf                 BPF_PROG_LOAD of a two-instruction socket filter "lg_guest"
 *   lgguest storm N PATH        N times: fork, exec PATH, wait; prints the wall time
 *
 * Any program run as `lgstormchild` (PATH of the storm is a copy named so) exits 0 at once.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int die(const char *what)
{
	fprintf(stderr, "lgguest: %s: %s\n", what, strerror(errno));
	return 1;
}

static int wait_child(pid_t pid)
{
	int st;

	if (waitpid(pid, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int do_fork(void)
{
	pid_t pid = fork();

	if (pid < 0)
		return die("fork");
	if (pid == 0)
		_exit(3);
	printf("child=%d status=%d\n", pid, wait_child(pid));
	return 0;
}

static int do_tcp(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0), c, s;

	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a, &len))
		return die("listen");
	c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)))
		return die("connect");
	s = accept(l, NULL, NULL);
	if (s < 0)
		return die("accept");
	printf("port=%d\n", ntohs(a.sin_port));
	return 0;
}

static int do_setuid(void)
{
	pid_t pid = fork();

	if (pid < 0)
		return die("fork");
	if (pid == 0)
		_exit(setgid(65534) || setuid(65534) ? 1 : 0);
	printf("child=%d status=%d\n", pid, wait_child(pid));
	return 0;
}

static int do_ptrace(void)
{
	pid_t pid = fork();
	long r;

	if (pid < 0)
		return die("fork");
	if (pid == 0) {
		pause();
		_exit(0);
	}
	r = ptrace(PTRACE_ATTACH, pid, 0, 0);
	if (r == 0)
		waitpid(pid, NULL, 0);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	printf("target=%d result=%ld\n", pid, r);
	return r ? die("ptrace") : 0;
}

static int do_memfd(void)
{
	int fd = memfd_create("lg_memfd", 0), self = open("/proc/self/exe", O_RDONLY);
	struct stat st;
	char *argv[] = { "lgguest", "true", "memfd-exec", NULL };
	char *envp[] = { NULL };

	if (fd < 0 || self < 0 || fstat(self, &st))
		return die("memfd_create");
	if (sendfile(fd, self, NULL, st.st_size) != st.st_size)
		return die("sendfile");
	printf("memfd=%d\n", fd);
	fflush(stdout);
	fexecve(fd, argv, envp);
	return die("fexecve");
}

static int do_bpf(void)
{
	struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	union bpf_attr attr;
	long fd;

	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
	attr.insns = (unsigned long)insns;
	attr.insn_cnt = 2;
	attr.license = (unsigned long)"GPL";
	strcpy(attr.prog_name, "lg_guest");
	fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
	if (fd < 0)
		return die("bpf");
	printf("prog_fd=%ld\n", fd);
	return 0;
}

static int do_storm(long n, const char *path)
{
	char *argv[] = { "lgstormchild", NULL };
	char *envp[] = { NULL };
	struct timespec t0, t1;
	long i, failed = 0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < n; i++) {
		pid_t pid = fork();

		if (pid < 0)
			return die("fork");
		if (pid == 0) {
			execve(path, argv, envp);
			_exit(127);
		}
		if (wait_child(pid) != 0)
			failed++;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("execs=%ld failed=%ld ms=%ld\n", n, failed,
	       (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
	return failed != 0;
}

int main(int argc, char **argv)
{
	const char *me = strrchr(argv[0], '/');

	me = me ? me + 1 : argv[0];
	if (!strcmp(me, "lgstormchild") || (argc >= 2 && !strcmp(argv[1], "true")))
		return 0;
	if (argc == 3 && !strcmp(argv[1], "exit"))
		return atoi(argv[2]);
	if (argc == 2 && !strcmp(argv[1], "fork"))
		return do_fork();
	if (argc == 2 && !strcmp(argv[1], "tcp"))
		return do_tcp();
	if (argc == 2 && !strcmp(argv[1], "setuid"))
		return do_setuid();
	if (argc == 2 && !strcmp(argv[1], "ptrace"))
		return do_ptrace();
	if (argc == 2 && !strcmp(argv[1], "memfd"))
		return do_memfd();
	if (argc == 2 && !strcmp(argv[1], "bpf"))
		return do_bpf();
	if (argc == 4 && !strcmp(argv[1], "storm"))
		return do_storm(atol(argv[2]), argv[3]);
	fprintf(stderr, "usage: lgguest true|exit CODE|fork|tcp|setuid|ptrace|memfd|bpf|storm N PATH\n");
	return 2;
}
