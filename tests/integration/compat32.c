/*
 * compat32.c: a test helper (tests/integration/compat.rs) that makes the syscalls the sensor
 * reports through the 32-bit entry, `int $0x80`, from a 64-bit process: the evasion the compat
 * hook closes. Built at test time with `cc -no-pie -static`, so its static buffers sit below
 * 4 GiB and can be passed as 32-bit pointers (the stack cannot). One action per run; prints
 * what the test needs to match the events, as `key=value` words on one line.
 *
 *   compat32 memfd NAME   memfd_create(NAME, MFD_CLOEXEC)
 *   compat32 setuid       setgid (16-bit call) and setuid32 to 65534 (run as root)
 *   compat32 capset       drops CAP_NET_RAW from the effective and permitted sets (as root)
 *   compat32 ptrace       PTRACE_ATTACH to a child of its own
 *   compat32 bpf          BPF_PROG_LOAD of a two-instruction socket filter named "lg_compat"
 *   compat32 tcp          connect + accept4, then socketcall(CONNECT) + socketcall(ACCEPT),
 *                         over loopback
 */
#include <arpa/inet.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* i386 syscall numbers (arch/x86/entry/syscalls/syscall_32.tbl). */
#define NR32_SETGID16 46
#define NR32_PTRACE 26
#define NR32_SOCKETCALL 102
#define NR32_CAPGET 184
#define NR32_CAPSET 185
#define NR32_SETUID32 213
#define NR32_MEMFD_CREATE 356
#define NR32_BPF 357
#define NR32_CONNECT 362
#define NR32_ACCEPT4 364
#define SYS_CONNECT 3
#define SYS_ACCEPT 5
#define PTRACE_ATTACH_REQ 16

/* Everything passed by pointer lives here, below 4 GiB. */
static char name_buf[256];
static struct __user_cap_header_struct cap_hdr;
static struct __user_cap_data_struct cap_data[2];
static struct bpf_insn insns[2];
static char license[] = "GPL";
static union bpf_attr attr;
static struct sockaddr_in addr;
static unsigned int sc_args[3];

static long int80_4(long nr, long a, long b, long c, long d)
{
	long ret;

	/* The 32-bit entry zeroes r8-r11 on the way back to a 64-bit caller. */
	asm volatile("int $0x80"
		     : "=a"(ret)
		     : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d)
		     : "r8", "r9", "r10", "r11", "memory");
	return ret;
}

static long int80(long nr, long a, long b, long c)
{
	return int80_4(nr, a, b, c, 0);
}

static long low(const void *p)
{
	if ((unsigned long)p > 0xffffffffUL) {
		fprintf(stderr, "compat32: %p is above 4 GiB: build with -no-pie -static\n", p);
		exit(2);
	}
	return (long)(unsigned long)p;
}

static int listener(int *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0);

	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 4) ||
	    getsockname(l, (struct sockaddr *)&a, &len))
		return -1;
	*port = ntohs(a.sin_port);
	return l;
}

static int local_port(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	if (getsockname(fd, (struct sockaddr *)&a, &len))
		return -1;
	return ntohs(a.sin_port);
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "";

	if (!strcmp(what, "memfd") && argc > 2) {
		strncpy(name_buf, argv[2], sizeof(name_buf) - 1);
		long fd = int80(NR32_MEMFD_CREATE, low(name_buf), 1 /* MFD_CLOEXEC */, 0);
		printf("pid=%d fd=%ld\n", getpid(), fd);
		return fd < 0;
	}
	if (!strcmp(what, "setuid")) {
		long g = int80(NR32_SETGID16, 65534, 0, 0);
		long u = int80(NR32_SETUID32, 65534, 0, 0);
		printf("pid=%d setgid=%ld setuid=%ld uid=%d\n", getpid(), g, u, getuid());
		return g || u;
	}
	if (!strcmp(what, "capset")) {
		cap_hdr.version = _LINUX_CAPABILITY_VERSION_3;
		cap_hdr.pid = 0;
		long r = int80(NR32_CAPGET, low(&cap_hdr), low(cap_data), 0);
		if (r)
			return printf("capget=%ld\n", r), 1;
		cap_data[0].effective &= ~(1u << CAP_NET_RAW);
		cap_data[0].permitted &= ~(1u << CAP_NET_RAW);
		r = int80(NR32_CAPSET, low(&cap_hdr), low(cap_data), 0);
		printf("pid=%d capset=%ld\n", getpid(), r);
		return r != 0;
	}
	if (!strcmp(what, "ptrace")) {
		pid_t child = fork();

		if (child == 0) {
			pause();
			_exit(0);
		}
		long r = int80(NR32_PTRACE, PTRACE_ATTACH_REQ, child, 0);
		if (r == 0)
			waitpid(child, NULL, 0);
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		printf("pid=%d target=%d ptrace=%ld\n", getpid(), child, r);
		return r != 0;
	}
	if (!strcmp(what, "bpf")) {
		insns[0] = (struct bpf_insn){ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0 };
		insns[1] = (struct bpf_insn){ .code = BPF_JMP | BPF_EXIT };
		attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
		attr.insn_cnt = 2;
		attr.insns = (unsigned long)low(insns);
		attr.license = (unsigned long)low(license);
		strcpy(attr.prog_name, "lg_compat");
		long fd = int80(NR32_BPF, BPF_PROG_LOAD, low(&attr), sizeof(attr));
		printf("pid=%d fd=%ld\n", getpid(), fd);
		return fd < 0;
	}
	if (!strcmp(what, "tcp")) {
		int port, l = listener(&port);
		int a = socket(AF_INET, SOCK_STREAM, 0), b = socket(AF_INET, SOCK_STREAM, 0);

		if (l < 0 || a < 0 || b < 0)
			return 1;
		addr.sin_family = AF_INET;
		addr.sin_port = htons(port);
		addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		/* The direct socket syscalls (i386 since 4.3)... */
		long ca = int80(NR32_CONNECT, a, low(&addr), sizeof(addr));
		long aa = int80_4(NR32_ACCEPT4, l, 0, 0, 0);
		/* ...and the socketcall multiplexer older 32-bit libcs use. */
		sc_args[0] = b;
		sc_args[1] = low(&addr);
		sc_args[2] = sizeof(addr);
		long cb = int80(NR32_SOCKETCALL, SYS_CONNECT, low(sc_args), 0);
		sc_args[0] = l;
		sc_args[1] = 0;
		sc_args[2] = 0;
		long ab = int80(NR32_SOCKETCALL, SYS_ACCEPT, low(sc_args), 0);
		printf("pid=%d port=%d connect=%ld accept4=%ld socketcall_connect=%ld "
		       "socketcall_accept=%ld sport_a=%d sport_b=%d\n",
		       getpid(), port, ca, aa, cb, ab, local_port(a), local_port(b));
		return ca || cb || aa < 0 || ab < 0;
	}
	fprintf(stderr, "usage: compat32 memfd NAME | setuid | capset | ptrace | bpf | tcp\n");
	return 2;
}
