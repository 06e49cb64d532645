/* SPDX-License-Identifier: GPL-2.0 */
/*
 * sysargs.bpf.h: a syscall's arguments from the caller's saved user registers, per
 * architecture and ABI (native, or 32-bit on x86_64). Shared by bpf/syscalls.bpf.h and
 * bpf/file.bpf.h.
 */
#ifndef LG_SYSARGS_BPF_H
#define LG_SYSARGS_BPF_H

/*
 * Argument i of the current syscall from its user registers: rdi, rsi, rdx, r10, r8 natively;
 * the low 32 bits of ebx, ecx, edx, esi, edi for a 32-bit call (the kernel truncates them too).
 * The registers are intact at sys_exit (a syscall returns in rax only).
 */
static __always_inline __u64 sys_arg(struct pt_regs *regs, int i, int compat)
{
#if defined(__TARGET_ARCH_arm64)
	/* arm64: x0-x4; x0 holds the result at the exit, the first argument stays in orig_x0. */
	switch (i) {
	case 0:
		return BPF_CORE_READ(regs, orig_x0);
	case 1:
		return BPF_CORE_READ(regs, regs[1]);
	case 2:
		return BPF_CORE_READ(regs, regs[2]);
	case 3:
		return BPF_CORE_READ(regs, regs[3]);
	default:
		return BPF_CORE_READ(regs, regs[4]);
	}
#else
	if (compat) {
		switch (i) {
		case 0:
			return (__u32)BPF_CORE_READ(regs, bx);
		case 1:
			return (__u32)BPF_CORE_READ(regs, cx);
		case 2:
			return (__u32)BPF_CORE_READ(regs, dx);
		case 3:
			return (__u32)BPF_CORE_READ(regs, si);
		default:
			return (__u32)BPF_CORE_READ(regs, di);
		}
	}
	switch (i) {
	case 0:
		return BPF_CORE_READ(regs, di);
	case 1:
		return BPF_CORE_READ(regs, si);
	case 2:
		return BPF_CORE_READ(regs, dx);
	case 3:
		return BPF_CORE_READ(regs, r10);
	default:
		return BPF_CORE_READ(regs, r8);
	}
#endif
}

#endif /* LG_SYSARGS_BPF_H */
