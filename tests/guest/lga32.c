/*
 * lga32.c: the arm64 guest's AArch32 (compat) test program (scripts/kernel-matrix-arm64). A
 * freestanding 32-bit ARM (EABI) executable, no libc: built with clang for armv7a and linked
 * with lld, so no 32-bit ARM toolchain is needed. An arm64 kernel leaves the syscalls of such a
 * process out of its `syscalls:*` tracepoints, as x86_64 does with `int $0x80` ones; the agent's
 * compat hook must report them. It makes, with `svc #0`:
 *   memfd_create("lg_a32", MFD_CLOEXEC), connect(127.0.0.1:1) (refused: still reported),
 *   setgid (16-bit call) and setuid32 to 65534, exit_group(0)
 * and writes `lga32 ok` to stdout at the end.
 */

/* AArch32 EABI syscall numbers (arch/arm64/include/asm/unistd32.h). */
#define NR_EXIT_GROUP 248
#define NR_WRITE 4
#define NR_SETGID16 46
#define NR_SETUID32 213
#define NR_SOCKET 281
#define NR_CONNECT 283
#define NR_MEMFD_CREATE 385

static long sys3(long nr, long a, long b, long c)
{
	register long r0 __asm__("r0") = a;
	register long r1 __asm__("r1") = b;
	register long r2 __asm__("r2") = c;
	register long r7 __asm__("r7") = nr;

	__asm__ volatile("svc #0" : "+r"(r0) : "r"(r1), "r"(r2), "r"(r7) : "memory");
	return r0;
}

struct sockaddr_in32 {
	unsigned short family;
	unsigned short port; /* network order */
	unsigned int addr;   /* network order */
	unsigned char zero[8];
};

void _start(void)
{
	static const char name[] = "lg_a32";
	static const char ok[] = "lga32 ok\n";
	struct sockaddr_in32 a = { .family = 2, .port = 0x0100, .addr = 0x0100007f };
	long s;

	sys3(NR_MEMFD_CREATE, (long)name, 1, 0);
	s = sys3(NR_SOCKET, 2, 1, 0);
	if (s >= 0)
		sys3(NR_CONNECT, s, (long)&a, sizeof(a));
	sys3(NR_SETGID16, 65534, 0, 0);
	sys3(NR_SETUID32, 65534, 0, 0);
	sys3(NR_WRITE, 1, (long)ok, sizeof(ok) - 1);
	sys3(NR_EXIT_GROUP, 0, 0, 0);
	for (;;)
		;
}
