// SPDX-License-Identifier: GPL-2.0
/*
 * floor.bpf.c: the cost floor of the agent's hook set, for scripts/bench-floor (not part of the
 * agent). Every hook the agent attaches on this kernel (bpf/sensor.bpf.c, the tp_btf flavour
 * where it has one) gets a program that does nothing, so a storm run under it measures what
 * the kernel charges for running a BPF program on those hooks at all: the syscall slow path
 * that any `syscalls:*` or raw syscall tracepoint turns on, and the dispatch of each program
 * run. Built with -DRECORDS, the exec, fork and exit programs also reserve and submit an
 * empty record of the agent's record size, which a reader (floor.c) consumes without looking
 * at it: the transport floor, kernel to user space, for the events the agent must report.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#ifdef RECORDS
#define EXEC_BYTES 1904 /* sizeof(struct lg_exec) */
#define TASK_BYTES 104	/* sizeof(struct lg_exit), sizeof(struct lg_fork) */
/* Wake the reader once this much is waiting (as the agent does: an eighth of its ring). */
#define WAKE_AT (256 << 10)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 << 20);
} events SEC(".maps");

static __always_inline int record(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);

	if (!e)
		return 0;
	/* The first word only: the agent writes every byte it sends, the floor writes none. */
	*(__u64 *)e = size;
	bpf_ringbuf_submit(e, bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKE_AT ?
				      BPF_RB_FORCE_WAKEUP :
				      BPF_RB_NO_WAKEUP);
	return 0;
}
#else
#define record(size) 0
#endif

SEC("tp_btf/sched_process_exec")
int sched_exec(void *ctx) { return record(EXEC_BYTES); }

SEC("tp_btf/sched_process_exit")
int sched_exit(void *ctx) { return record(TASK_BYTES); }

SEC("tp_btf/sched_process_fork")
int sched_fork(void *ctx) { return record(TASK_BYTES); }

SEC("tp_btf/inet_sock_set_state")
int sock_state(void *ctx) { return 0; }

/* The native syscall tracepoints the agent uses, both halves. */
#define PAIR(sys)                                                            \
	SEC("tracepoint/syscalls/sys_enter_" #sys)                           \
	int sys_enter_##sys(void *ctx) { return 0; }                         \
	SEC("tracepoint/syscalls/sys_exit_" #sys)                            \
	int sys_exit_##sys(void *ctx) { return 0; }

PAIR(setuid)
PAIR(setgid)
PAIR(setreuid)
PAIR(setregid)
PAIR(setresuid)
PAIR(setresgid)
PAIR(setfsuid)
PAIR(setfsgid)
PAIR(capset)
PAIR(ptrace)
PAIR(bpf)
PAIR(memfd_create)
PAIR(connect)

SEC("tracepoint/syscalls/sys_exit_accept")
int sys_exit_accept(void *ctx) { return 0; }

SEC("tracepoint/syscalls/sys_exit_accept4")
int sys_exit_accept4(void *ctx) { return 0; }

/* The 32-bit syscall hook: every syscall of every task, both halves. */
SEC("tp_btf/sys_enter")
int compat_enter(void *ctx) { return 0; }

SEC("tp_btf/sys_exit")
int compat_exit(void *ctx) { return 0; }
