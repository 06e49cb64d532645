//! The kernel side's user half: checks, opens, probes, loads and attaches the BPF programs of
//! bpf/sensor.bpf.c, and reads the kernel's loss counters.
//!
//! Each event has one or more hooks in priority order (tp_btf before the classic tracepoint);
//! the best one the running kernel offers is loaded and attached, and one log line per event
//! says which (or that none could be).
//!
//! Kernels differ (docs/kernels.md): what can be known before loading is probed (tracepoints in
//! tracefs, tp_btf arguments in the kernel's BTF, helpers such as bpf_loop()), and a program the
//! kernel still refuses sends only its own event type to its next hook, or leaves that type out
//! with one warning naming the kernel's reason and what is lost; the others load and run. Each
//! event type ends up `active`, `reduced` (watched with a documented loss) or `absent`
//! ([`HookState`]), which `watch`'s start line, `status`, the heartbeat and the metrics show.

use std::mem::MaybeUninit;
use std::path::Path;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, PrintLevel};

use crate::error::{Error, Result};

pub mod decode;
pub mod dns;
pub mod exclude;
mod load_log;
pub mod skel;
pub mod watch;

use skel::{OpenSensorSkel, SensorSkel, SensorSkelBuilder, consts};

const TRACEFS: &str = "/sys/kernel/tracing";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// How a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// BTF-enabled raw tracepoint: needs `btf_trace_<name>` in the kernel's BTF with at least
    /// this many arguments (the program reads them all; the verifier refuses a program that
    /// reads an argument the kernel's tracepoint lacks, and one refused program fails the
    /// whole object's load).
    TpBtf(&'static str, usize),
    /// Classic tracepoint `<category>/<name>`: needs tracefs.
    Tracepoint(&'static str, &'static str),
    /// Raw tracepoint `<name>` (untyped arguments); probed through tracefs's `<category>/<name>`.
    RawTp(&'static str, &'static str),
    /// fentry on kernel function `<name>`: needs the function in the kernel's BTF and BPF
    /// trampolines (not every kernel lets them load: this machine's refuses them).
    Fentry(&'static str),
}

/// One way to observe an event: a set of programs that all load and attach together.
struct Alt {
    progs: &'static [(&'static str, Via)],
    /// BPF helpers the programs call that older kernels lack (probed before loading), with the
    /// name and first kernel to show in a reason.
    helpers: &'static [(libbpf_rs::libbpf_sys::bpf_func_id, &'static str)],
    /// What users lose with this way compared with the hook's first (the event type is then
    /// `reduced`); None: nothing.
    loss: Option<&'static str>,
}

/// The fields most alternatives leave at their defaults: `Alt { progs: ..., ..ALT }`.
const ALT: Alt = Alt {
    progs: &[],
    helpers: &[],
    loss: None,
};

/// bpf_loop() (Linux 5.17+), which the exec path walk prefers.
const BPF_LOOP: (libbpf_rs::libbpf_sys::bpf_func_id, &str) = (
    libbpf_rs::libbpf_sys::BPF_FUNC_loop,
    "bpf_loop (Linux 5.17+)",
);

/// One event the sensor reports and its hooks, best first.
struct Hook {
    event: &'static str,
    alts: &'static [Alt],
    /// What users lose when none of the hooks can run.
    lost: &'static str,
}

macro_rules! sys {
    ($($prog:literal => $tp:literal),* $(,)?) => {
        &[Alt { progs: &[$(($prog, Via::Tracepoint("syscalls", $tp))),*], ..ALT }]
    };
}

/// Every event and its hooks, best first (bpf/sensor.bpf.c has the programs).
const HOOKS: &[Hook] = &[
    Hook {
        event: "exec",
        // Before bpf_loop() (5.17) the path walk is unrolled: the same depth, nothing lost.
        alts: &[
            Alt {
                progs: &[("exec_btf", Via::TpBtf("sched_process_exec", 3))],
                helpers: &[BPF_LOOP],
                ..ALT
            },
            Alt {
                progs: &[("exec_tp", Via::Tracepoint("sched", "sched_process_exec"))],
                helpers: &[BPF_LOOP],
                ..ALT
            },
            Alt {
                progs: &[("exec_btf_unrolled", Via::TpBtf("sched_process_exec", 3))],
                ..ALT
            },
            Alt {
                progs: &[(
                    "exec_tp_unrolled",
                    Via::Tracepoint("sched", "sched_process_exec"),
                )],
                ..ALT
            },
        ],
        lost: "program executions are NOT reported (and exits, forks and every other event \
               carry no executable for processes started since)",
    },
    Hook {
        event: "exit",
        alts: &[
            Alt {
                progs: &[("exit_btf", Via::TpBtf("sched_process_exit", 2))],
                ..ALT
            },
            Alt {
                progs: &[("exit_fentry", Via::Fentry("taskstats_exit"))],
                ..ALT
            },
            Alt {
                progs: &[("exit_tp", Via::Tracepoint("sched", "sched_process_exit"))],
                loss: Some(
                    "the kernel's sched_process_exit has no group_dead (before Linux 6.16): a \
                     process is reported when its leader thread exits, so one whose leader \
                     leaves before its other threads is reported early, with the leader's code",
                ),
                ..ALT
            },
        ],
        lost: "process exits are NOT reported",
    },
    Hook {
        event: "fork",
        alts: &[
            Alt {
                progs: &[("fork_btf", Via::TpBtf("sched_process_fork", 2))],
                ..ALT
            },
            Alt {
                progs: &[("fork_tp", Via::Tracepoint("sched", "sched_process_fork"))],
                loss: Some(
                    "no BTF-enabled sched_process_fork: new threads are reported as forks too, \
                     without the child's start time",
                ),
                ..ALT
            },
        ],
        lost: "forks are NOT reported",
    },
    Hook {
        event: "connect",
        alts: &[
            Alt {
                progs: &[
                    ("connect_btf", Via::TpBtf("inet_sock_set_state", 3)),
                    (
                        "connect_enter",
                        Via::Tracepoint("syscalls", "sys_enter_connect"),
                    ),
                    (
                        "connect_exit",
                        Via::Tracepoint("syscalls", "sys_exit_connect"),
                    ),
                ],
                ..ALT
            },
            Alt {
                progs: &[
                    ("connect_tp", Via::Tracepoint("sock", "inet_sock_set_state")),
                    (
                        "connect_enter",
                        Via::Tracepoint("syscalls", "sys_enter_connect"),
                    ),
                    (
                        "connect_exit",
                        Via::Tracepoint("syscalls", "sys_exit_connect"),
                    ),
                ],
                ..ALT
            },
        ],
        lost: "outbound TCP connections are NOT reported",
    },
    Hook {
        event: "accept",
        alts: sys!("accept4_exit" => "sys_exit_accept4", "accept_exit" => "sys_exit_accept"),
        lost: "inbound TCP connections (accept) are NOT reported",
    },
    Hook {
        event: "setuid",
        alts: sys!(
            "setuid_enter" => "sys_enter_setuid", "setuid_exit" => "sys_exit_setuid",
            "setgid_enter" => "sys_enter_setgid", "setgid_exit" => "sys_exit_setgid",
            "setreuid_enter" => "sys_enter_setreuid", "setreuid_exit" => "sys_exit_setreuid",
            "setregid_enter" => "sys_enter_setregid", "setregid_exit" => "sys_exit_setregid",
            "setresuid_enter" => "sys_enter_setresuid", "setresuid_exit" => "sys_exit_setresuid",
            "setresgid_enter" => "sys_enter_setresgid", "setresgid_exit" => "sys_exit_setresgid",
            "setfsuid_enter" => "sys_enter_setfsuid", "setfsuid_exit" => "sys_exit_setfsuid",
            "setfsgid_enter" => "sys_enter_setfsgid", "setfsgid_exit" => "sys_exit_setfsgid",
        ),
        lost: "uid and gid changes (setuid, setgid, setre*, setres*, setfs*) are NOT reported",
    },
    Hook {
        event: "capset",
        alts: sys!("capset_enter" => "sys_enter_capset", "capset_exit" => "sys_exit_capset"),
        lost: "capability changes (capset) are NOT reported",
    },
    Hook {
        event: "ptrace",
        alts: sys!("ptrace_enter" => "sys_enter_ptrace", "ptrace_exit" => "sys_exit_ptrace"),
        lost: "ptrace attaches are NOT reported",
    },
    Hook {
        event: "bpf_load",
        alts: sys!("bpf_enter" => "sys_enter_bpf", "bpf_exit" => "sys_exit_bpf"),
        lost: "BPF program loads are NOT reported",
    },
    Hook {
        event: "memfd",
        alts: sys!("memfd_enter" => "sys_enter_memfd_create", "memfd_exit" => "sys_exit_memfd_create"),
        lost: "memfd_create calls are NOT reported (fileless executions still are, as exec)",
    },
    // Issue 17's events. Where the compat hook runs its dispatching programs (x86_64, Linux
    // 5.17+), those two programs already see every syscall and serve these events too (the
    // dispatcher, bpf/syscalls.bpf.h): a syscall none of them wants costs a bit test and nothing
    // is attached per syscall. Elsewhere each event uses its own `syscalls:*` tracepoints.
    Hook {
        event: "namespace",
        alts: &[
            DISPATCH_BTF,
            DISPATCH_RAW,
            Alt {
                progs: &[
                    (
                        "ns_setns_enter",
                        Via::Tracepoint("syscalls", "sys_enter_setns"),
                    ),
                    (
                        "ns_setns_exit",
                        Via::Tracepoint("syscalls", "sys_exit_setns"),
                    ),
                    (
                        "ns_unshare_enter",
                        Via::Tracepoint("syscalls", "sys_enter_unshare"),
                    ),
                    (
                        "ns_unshare_exit",
                        Via::Tracepoint("syscalls", "sys_exit_unshare"),
                    ),
                    (
                        "ns_clone_enter",
                        Via::Tracepoint("syscalls", "sys_enter_clone"),
                    ),
                    (
                        "ns_clone_exit",
                        Via::Tracepoint("syscalls", "sys_exit_clone"),
                    ),
                    (
                        "ns_clone3_enter",
                        Via::Tracepoint("syscalls", "sys_enter_clone3"),
                    ),
                    (
                        "ns_clone3_exit",
                        Via::Tracepoint("syscalls", "sys_exit_clone3"),
                    ),
                ],
                helpers: &[TASK_PT_REGS],
                ..ALT
            },
        ],
        lost: "namespace changes (setns, unshare, clone with CLONE_NEW*) are NOT reported",
    },
    Hook {
        event: "mount",
        alts: &[
            DISPATCH_BTF,
            DISPATCH_RAW,
            Alt {
                progs: &[
                    (
                        "mount_mount_exit",
                        Via::Tracepoint("syscalls", "sys_exit_mount"),
                    ),
                    (
                        "mount_umount_exit",
                        Via::Tracepoint("syscalls", "sys_exit_umount"),
                    ),
                    (
                        "mount_move_exit",
                        Via::Tracepoint("syscalls", "sys_exit_move_mount"),
                    ),
                    (
                        "mount_fsmount_exit",
                        Via::Tracepoint("syscalls", "sys_exit_fsmount"),
                    ),
                    (
                        "mount_open_tree_exit",
                        Via::Tracepoint("syscalls", "sys_exit_open_tree"),
                    ),
                    (
                        "mount_pivot_root_exit",
                        Via::Tracepoint("syscalls", "sys_exit_pivot_root"),
                    ),
                ],
                helpers: &[BPF_LOOP],
                ..ALT
            },
        ],
        lost: "mounts (mount, umount, move_mount, fsmount, open_tree, pivot_root) are NOT reported",
    },
    // Opens, renames, deletes, mode changes... of watched paths (bpf/file.bpf.h), filtered in
    // the kernel against the watch lists. Without the dispatcher: each syscall's tracepoints;
    // fchmodat2 is Linux 6.6+, and arm64 has only the *at calls (open, rename... do not exist).
    Hook {
        event: "file",
        alts: &[
            DISPATCH_BTF,
            DISPATCH_RAW,
            Alt {
                progs: FILE_TPS,
                helpers: &[BPF_LOOP],
                ..ALT
            },
            Alt {
                progs: FILE_TPS.split_at(FILE_TPS.len() - 1).0,
                helpers: &[BPF_LOOP],
                ..ALT
            },
            Alt {
                progs: FILE_TPS.split_at(FILE_AT).1,
                helpers: &[BPF_LOOP],
                ..ALT
            },
            Alt {
                progs: FILE_TPS
                    .split_at(FILE_AT)
                    .1
                    .split_at(FILE_TPS.len() - FILE_AT - 1)
                    .0,
                helpers: &[BPF_LOOP],
                ..ALT
            },
        ],
        lost: "reads of credential files and changes below the watched directories are NOT \
               reported",
    },
    // TCP connections' ends (bpf/conn.bpf.h): a second program on inet_sock_set_state, and
    // the owners of accepted connections noted at accept()'s return (by the dispatcher, else by
    // programs of their own on the accept tracepoints).
    Hook {
        event: "connection_close",
        alts: &[
            Alt {
                progs: &[CLOSE_BTF, DISPATCH_BTF.progs[0], DISPATCH_BTF.progs[1]],
                ..DISPATCH_BTF
            },
            Alt {
                progs: &[CLOSE_TP, DISPATCH_RAW.progs[0], DISPATCH_RAW.progs[1]],
                ..DISPATCH_RAW
            },
            Alt {
                progs: &[CLOSE_BTF, CLOSE_ACCEPT4, CLOSE_ACCEPT],
                ..ALT
            },
            Alt {
                progs: &[CLOSE_TP, CLOSE_ACCEPT4, CLOSE_ACCEPT],
                ..ALT
            },
        ],
        lost: "TCP connection ends (bytes, duration) are NOT reported",
    },
    // DNS questions sent over UDP to port 53 (bpf/dns.bpf.h), at the sends' entry.
    Hook {
        event: "dns",
        alts: &[
            DISPATCH_BTF,
            DISPATCH_RAW,
            Alt {
                progs: &[
                    (
                        "dns_sendto_enter",
                        Via::Tracepoint("syscalls", "sys_enter_sendto"),
                    ),
                    (
                        "dns_sendmsg_enter",
                        Via::Tracepoint("syscalls", "sys_enter_sendmsg"),
                    ),
                    (
                        "dns_sendmmsg_enter",
                        Via::Tracepoint("syscalls", "sys_enter_sendmmsg"),
                    ),
                ],
                ..ALT
            },
        ],
        lost: "DNS questions are NOT reported",
    },
    // Kernels without loadable modules (like the development machine's) have neither the
    // `module:module_load` tracepoint (the module's name) nor `syscalls:*_init_module`: there
    // the dispatcher alone still reports the attempts (they fail with ENOSYS).
    Hook {
        event: "module_load",
        alts: &[
            Alt {
                progs: &[DISPATCH_BTF.progs[0], DISPATCH_BTF.progs[1], MODULE_NAME],
                ..DISPATCH_BTF
            },
            Alt {
                progs: &[DISPATCH_RAW.progs[0], DISPATCH_RAW.progs[1], MODULE_NAME],
                ..DISPATCH_RAW
            },
            Alt {
                progs: &[
                    (
                        "module_init_exit",
                        Via::Tracepoint("syscalls", "sys_exit_init_module"),
                    ),
                    (
                        "module_finit_exit",
                        Via::Tracepoint("syscalls", "sys_exit_finit_module"),
                    ),
                    MODULE_NAME,
                ],
                helpers: &[BPF_LOOP],
                ..ALT
            },
            DISPATCH_BTF,
            DISPATCH_RAW,
        ],
        lost: "kernel module loads are NOT reported",
    },
    // 32-bit syscalls (x86 `int $0x80`..., arm64 AArch32 processes) skip every `syscalls:*`
    // tracepoint above: these see
    // every syscall, leave at once unless it is a compat one, and report setuid, capset,
    // ptrace, bpf_load, memfd, connect and accept through the same BPF code as the native hooks.
    Hook {
        event: COMPAT,
        alts: &[
            DISPATCH_BTF,
            DISPATCH_RAW,
            Alt {
                progs: &[
                    ("compat_enter_btf", Via::TpBtf("sys_enter", 2)),
                    ("compat_exit_btf", Via::TpBtf("sys_exit", 2)),
                ],
                loss: Some(COMPAT_UNDISPATCHED),
                ..ALT
            },
            Alt {
                progs: &[
                    ("compat_enter_raw", Via::RawTp("raw_syscalls", "sys_enter")),
                    ("compat_exit_raw", Via::RawTp("raw_syscalls", "sys_exit")),
                ],
                loss: Some(COMPAT_UNDISPATCHED),
                ..ALT
            },
        ],
        lost: "32-bit (int $0x80) setuid, capset, ptrace, bpf, memfd_create, connect, accept, \
               namespace, mount, module, file and DNS syscalls are NOT reported",
    },
];

/// The hook for 32-bit syscalls: only wanted where they can happen.
const COMPAT: &str = "compat";

/// The dispatching programs of the compat hook (bpf/sensor.bpf.c `disp_*`), which also serve
/// the events of bpf/syscalls.bpf.h. They need bpf_loop() and know x86_64's syscall numbers
/// only; the other hooks may use them only when the compat hook runs them.
const DISPATCH_BTF: Alt = Alt {
    progs: &[
        ("disp_enter_btf", Via::TpBtf("sys_enter", 2)),
        ("disp_exit_btf", Via::TpBtf("sys_exit", 2)),
    ],
    helpers: &[BPF_LOOP],
    loss: None,
};
const DISPATCH_RAW: Alt = Alt {
    progs: &[
        ("disp_enter_raw", Via::RawTp("raw_syscalls", "sys_enter")),
        ("disp_exit_raw", Via::RawTp("raw_syscalls", "sys_exit")),
    ],
    helpers: &[BPF_LOOP],
    loss: None,
};

/// What the compat hook's plain programs leave out compared with the dispatching ones.
#[cfg(target_arch = "x86_64")]
const COMPAT_UNDISPATCHED: &str =
    "32-bit (int $0x80) namespace, mount, module, file and DNS syscalls are not reported";
#[cfg(target_arch = "aarch64")]
const COMPAT_UNDISPATCHED: &str =
    "AArch32 processes' namespace, mount, module, file and DNS syscalls are not reported";

/// bpf_task_pt_regs() (Linux 5.15+): the per-syscall tracepoint programs of bpf/syscalls.bpf.h
/// read the call's arguments from the task's saved registers.
const TASK_PT_REGS: (libbpf_rs::libbpf_sys::bpf_func_id, &str) = (
    libbpf_rs::libbpf_sys::BPF_FUNC_task_pt_regs,
    "bpf_task_pt_regs (Linux 5.15+)",
);

/// The file event's own tracepoints (without the dispatcher): first the calls only x86_64 has
/// (`FILE_AT` of them), then the ones every architecture has, fchmodat2 (Linux 6.6+) last (the
/// fallback flavour is the list without it).
const FILE_TPS: &[(&str, Via)] = &[
    (
        "file_open_exit",
        Via::Tracepoint("syscalls", "sys_exit_open"),
    ),
    (
        "file_creat_exit",
        Via::Tracepoint("syscalls", "sys_exit_creat"),
    ),
    (
        "file_rename_exit",
        Via::Tracepoint("syscalls", "sys_exit_rename"),
    ),
    (
        "file_renameat_exit",
        Via::Tracepoint("syscalls", "sys_exit_renameat"),
    ),
    (
        "file_unlink_exit",
        Via::Tracepoint("syscalls", "sys_exit_unlink"),
    ),
    (
        "file_rmdir_exit",
        Via::Tracepoint("syscalls", "sys_exit_rmdir"),
    ),
    (
        "file_chmod_exit",
        Via::Tracepoint("syscalls", "sys_exit_chmod"),
    ),
    (
        "file_mkdir_exit",
        Via::Tracepoint("syscalls", "sys_exit_mkdir"),
    ),
    (
        "file_link_exit",
        Via::Tracepoint("syscalls", "sys_exit_link"),
    ),
    (
        "file_symlink_exit",
        Via::Tracepoint("syscalls", "sys_exit_symlink"),
    ),
    (
        "file_openat_exit",
        Via::Tracepoint("syscalls", "sys_exit_openat"),
    ),
    (
        "file_openat2_exit",
        Via::Tracepoint("syscalls", "sys_exit_openat2"),
    ),
    (
        "file_open_by_handle_exit",
        Via::Tracepoint("syscalls", "sys_exit_open_by_handle_at"),
    ),
    (
        "file_renameat2_exit",
        Via::Tracepoint("syscalls", "sys_exit_renameat2"),
    ),
    (
        "file_unlinkat_exit",
        Via::Tracepoint("syscalls", "sys_exit_unlinkat"),
    ),
    (
        "file_fchmod_exit",
        Via::Tracepoint("syscalls", "sys_exit_fchmod"),
    ),
    (
        "file_fchmodat_exit",
        Via::Tracepoint("syscalls", "sys_exit_fchmodat"),
    ),
    (
        "file_mkdirat_exit",
        Via::Tracepoint("syscalls", "sys_exit_mkdirat"),
    ),
    (
        "file_linkat_exit",
        Via::Tracepoint("syscalls", "sys_exit_linkat"),
    ),
    (
        "file_symlinkat_exit",
        Via::Tracepoint("syscalls", "sys_exit_symlinkat"),
    ),
    (
        "file_connect_exit",
        Via::Tracepoint("syscalls", "sys_exit_connect"),
    ),
    (
        "file_fchmodat2_exit",
        Via::Tracepoint("syscalls", "sys_exit_fchmodat2"),
    ),
];
const FILE_AT: usize = 10;

/// connection_close's programs (bpf/conn.bpf.h).
const CLOSE_BTF: (&str, Via) = ("close_btf", Via::TpBtf("inet_sock_set_state", 3));
const CLOSE_TP: (&str, Via) = ("close_tp", Via::Tracepoint("sock", "inet_sock_set_state"));
const CLOSE_ACCEPT4: (&str, Via) = (
    "close_accept4_exit",
    Via::Tracepoint("syscalls", "sys_exit_accept4"),
);
const CLOSE_ACCEPT: (&str, Via) = (
    "close_accept_exit",
    Via::Tracepoint("syscalls", "sys_exit_accept"),
);

/// The loaded module's name (module:module_load), where the kernel has loadable modules.
const MODULE_NAME: (&str, Via) = ("module_load_tp", Via::Tracepoint("module", "module_load"));

/// Whether `alt` runs the dispatcher (bpf/syscalls.bpf.h).
fn is_dispatch(alt: &Alt) -> bool {
    alt.progs.iter().any(|(n, _)| n.starts_with("disp_"))
}

/// The events the chosen alternatives serve through the dispatcher (its `want_*` knobs).
fn dispatched(choice: &Choice) -> Vec<&'static str> {
    HOOKS
        .iter()
        .zip(choice)
        .filter(|(h, _)| h.event != COMPAT)
        .filter_map(|(h, (c, _))| c.map(|i| (h, &h.alts[i])))
        .filter(|(_, a)| is_dispatch(a))
        .map(|(h, _)| h.event)
        .collect()
}

/// Functions the kernel has only when it can run 32-bit syscalls (CONFIG_IA32_EMULATION on
/// x86_64): `do_fast_syscall_32` since 4.3, `ia32_sys_call` since 6.10, and the ia32 syscall
/// wrappers (`__ia32_sys_*`, 4.17+), which are in the BTF of kernels whose pahole (before 1.22)
/// left out the untraceable entry code (Debian's 5.10).
#[cfg(target_arch = "x86_64")]
const COMPAT_ENTRY_FUNCS: &[&str] = &["do_fast_syscall_32", "ia32_sys_call", "__ia32_sys_setuid16"];
/// Functions the kernel has only when built with CONFIG_COMPAT (AArch32 processes on arm64):
/// `compat_arm_syscall` since 3.7, `do_el0_svc_compat` since 5.5.
#[cfg(target_arch = "aarch64")]
const COMPAT_ENTRY_FUNCS: &[&str] = &["do_el0_svc_compat", "compat_arm_syscall"];

/// The 32-bit syscalls the compat hook reports, for the warning when it is turned off.
#[cfg(target_arch = "x86_64")]
const COMPAT_OFF: &str = "turned off (--compat-syscalls=false): 32-bit (int $0x80) setuid, \
                          capset, ptrace, bpf, memfd_create, connect, accept, namespace, mount, \
                          module, file and DNS syscalls are NOT reported";
#[cfg(target_arch = "aarch64")]
const COMPAT_OFF: &str = "turned off (--compat-syscalls=false): AArch32 processes' setuid, \
                          capset, ptrace, bpf, memfd_create, connect and accept are NOT reported";

/// Why the compat hook has nothing to watch on this kernel, if so.
fn compat_impossible(btf: Option<&libbpf_rs::btf::Btf<'_>>, cmdline: &str) -> Option<&'static str> {
    use libbpf_rs::btf::BtfType;
    let btf = btf?;
    if !COMPAT_ENTRY_FUNCS
        .iter()
        .any(|f| btf.type_by_name::<BtfType<'_>>(f).is_some())
    {
        return Some(if cfg!(target_arch = "x86_64") {
            "the kernel has no 32-bit syscall entry (built without CONFIG_IA32_EMULATION): \
             compat syscalls are not possible here"
        } else {
            "the kernel has no AArch32 syscall entry (built without CONFIG_COMPAT): compat \
             syscalls are not possible here"
        });
    }
    compat_off_at_run_time(cmdline)
}

/// On a kernel that has the 32-bit entry: whether it is switched off at boot.
#[cfg(target_arch = "x86_64")]
fn compat_off_at_run_time(cmdline: &str) -> Option<&'static str> {
    ia32_disabled_on_cmdline(cmdline).then_some(
        "the kernel was booted with ia32_emulation off: compat syscalls are not possible here",
    )
}

/// On a kernel built with CONFIG_COMPAT: whether any CPU here runs AArch32 code at EL0 (many
/// recent arm64 cores do not).
#[cfg(target_arch = "aarch64")]
fn compat_off_at_run_time(_cmdline: &str) -> Option<&'static str> {
    (!aarch32_el0_supported()).then_some(
        "no CPU here runs AArch32 code (the kernel refuses the PER_LINUX32 personality): \
         compat syscalls are not possible here",
    )
}

/// The personality(2) type values (include/uapi/linux/personality.h, a fixed ABI; the libc
/// crate has them for glibc only).
#[cfg(target_arch = "aarch64")]
const PER_LINUX32: i32 = 0x0008;
#[cfg(target_arch = "aarch64")]
const PER_MASK: i32 = 0x00ff;

/// Whether the system runs AArch32 processes: arm64's personality(2) refuses PER_LINUX32 with
/// EINVAL exactly when it cannot (`system_supports_32bit_el0()`: no CONFIG_COMPAT, or no CPU
/// with AArch32 at EL0, counting mismatched systems booted with allow_mismatched_32bit_el0).
/// The calling thread's personality is restored at once; nothing runs in between.
#[cfg(target_arch = "aarch64")]
fn aarch32_el0_supported() -> bool {
    use nix::libc::{c_ulong, personality};
    // SAFETY: personality(2) takes an integer and affects only the calling thread's execution
    // domain; 0xffffffff queries it without a change.
    let old = unsafe { personality(0xffff_ffff) };
    if old == -1 {
        return false;
    }
    let linux32 = (old as c_ulong & !(PER_MASK as c_ulong)) | PER_LINUX32 as c_ulong;
    // SAFETY: as above; the old value is put back right after.
    let ok = unsafe { personality(linux32) } != -1;
    if ok {
        // SAFETY: as above: restores what this thread had.
        unsafe { personality(old as c_ulong) };
    }
    ok
}

/// `ia32_emulation=<bool>` on the kernel command line, read as the kernel's kstrtobool does.
#[cfg(target_arch = "x86_64")]
fn ia32_disabled_on_cmdline(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix("ia32_emulation="))
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.starts_with(['n', 'f', '0']) || v.starts_with("of")
        })
}

/// Sensor knobs, set before load.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ring-buffer size in MiB (a power of two).
    pub ring_buffer_mb: u64,
    /// Process whose events the kernel drops (the agent itself); 0 = none.
    pub own_tgid: u32,
    /// Wake the reader only when this many bytes wait (0: every record); the reader must then
    /// poll with a timeout.
    pub wakeup_bytes: u64,
    /// Watch 32-bit syscalls too (`--compat-syscalls`): two more programs run on every syscall.
    pub compat_syscalls: bool,
    /// Path prefixes whose opens for reading are reported (`--watch-read`, resolved).
    pub watch_read: Vec<String>,
    /// Path prefixes below which changes are reported (`--watch-write`, resolved).
    pub watch_write: Vec<String>,
    /// Path prefixes of the Unix socket files whose connects are reported (`--watch-connect`,
    /// resolved).
    pub watch_connect: Vec<String>,
    /// In-kernel exclusions (`--exclude` and the rule files' `exclude:`).
    pub exclude: exclude::Options,
}

/// How well the sensor watches one event type on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookState {
    /// Watched by its best hook, or by one that loses nothing.
    Active,
    /// Watched, with a documented loss (`HookStatus::why`).
    Reduced,
    /// Not watched (`HookStatus::why` says why and what is lost).
    Absent,
}

impl HookState {
    pub fn as_str(self) -> &'static str {
        match self {
            HookState::Active => "active",
            HookState::Reduced => "reduced",
            HookState::Absent => "absent",
        }
    }
}

/// What happened to one event type's hook at start-up: the one home of that state (`watch`'s
/// start line, `status`, the heartbeat and the metrics read it through [`EventTypes`]).
#[derive(Debug, Clone)]
pub struct HookStatus {
    pub event: &'static str,
    pub state: HookState,
    /// The attached hook ("tp_btf/sched_process_exec"), or None.
    pub attached: Option<String>,
    /// For `reduced` and `absent`: what is lost and why.
    pub why: Option<String>,
}

/// The number of hooks (event types, and `compat` for 32-bit syscalls).
pub const HOOK_COUNT: usize = HOOKS.len();

/// Every hook's state, in a fixed order: a copy of what [`Sensor::hooks`] decided at start-up,
/// small enough to travel with the counters. Empty (every state `None`) before the sensor
/// started. Serializes as `{"exec": "active", "exit": "reduced", ...}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTypes([Option<HookState>; HOOK_COUNT]);

impl EventTypes {
    pub fn from_hooks(hooks: &[HookStatus]) -> EventTypes {
        let mut t = EventTypes::default();
        for h in hooks {
            if let Some(i) = HOOKS.iter().position(|x| x.event == h.event) {
                t.0[i] = Some(h.state);
            }
        }
        t
    }

    /// (event type, state) of every hook the sensor reported on.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, HookState)> + '_ {
        HOOKS
            .iter()
            .zip(self.0)
            .filter_map(|(h, s)| s.map(|s| (h.event, s)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// `exec=active exit=reduced ...`, as `watch`'s start line shows it.
    pub fn line(&self) -> String {
        let v: Vec<String> = self
            .iter()
            .map(|(e, s)| format!("{e}={}", s.as_str()))
            .collect();
        v.join(" ")
    }
}

impl serde::Serialize for EventTypes {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(None)?;
        for (e, s) in self.iter() {
            m.serialize_entry(e, &s)?;
        }
        m.end()
    }
}

/// The loaded, attached sensor. Dropping it detaches everything.
pub struct Sensor {
    skel: SensorSkel<'static>,
    _links: Vec<Link>,
    /// Whether the kernel's exclusion checks are loaded, and the keys now in its maps.
    exclusions_loaded: bool,
    excluded: exclude::Resolved,
    proc_root: std::path::PathBuf,
    /// One entry per hook, in `HOOKS` order.
    pub hooks: Vec<HookStatus>,
}

/// The running kernel's release (`uname -r`), for messages.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// CAP_PERFMON (38) and CAP_BPF (39), or CAP_SYS_ADMIN (21), from /proc/self/status.
fn has_bpf_caps() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return false;
    };
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    has(21) || (has(38) && has(39))
}

/// Makes sure tracefs is mounted at /sys/kernel/tracing (mounting it when missing).
fn ensure_tracefs() -> Result<()> {
    match std::fs::metadata(Path::new(TRACEFS).join("events")) {
        Ok(md) if md.is_dir() => return Ok(()),
        // Mounted (tracefs is 0700 by default) but closed to a non-root user with CAP_BPF and
        // CAP_PERFMON: mounting again would not help, and "not mounted" would mislead.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Error::runtime(format!(
                "tracefs at {TRACEFS} is not readable by this user (uid {}): {e}; run as root, or let the \
                 agent's user read it (mount -o remount,gid=GID,mode=0750 {TRACEFS} with the agent in group GID)",
                nix::unistd::geteuid()
            )));
        }
        _ => {}
    }
    log::info!("tracefs is not mounted at {TRACEFS}: mounting it");
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        Error::runtime(format!(
            "tracefs is not mounted and mounting it failed ({e}): run `mount -t tracefs tracefs {TRACEFS}` \
             (in a container: bind-mount the host's {TRACEFS})"
        ))
    })
}

/// Checks that run before anything is loaded, with errors that say what to do.
pub fn preflight() -> Result<()> {
    if !has_bpf_caps() {
        return Err(Error::runtime(
            "loading the eBPF sensor needs root, or CAP_BPF and CAP_PERFMON: run with sudo",
        ));
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(Error::runtime(format!(
            "kernel {} has no BTF ({VMLINUX_BTF} is missing): the sensor needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (Debian 11+, Ubuntu 20.10+, RHEL 8.2+, Amazon Linux 2 5.10 \
             kernels have it); kernels without BTF are not supported yet",
            kernel_release()
        )));
    }
    ensure_tracefs()
}

/// A hook left out on purpose, and how loud to say so: `Info` when there is nothing for it to
/// see on this kernel, `Warn` when it was turned off and events go unreported.
type Skip = Option<(log::Level, &'static str)>;

/// Per hook: why it is left out, or None.
fn unneeded(opts: &Options, btf: Option<&libbpf_rs::btf::Btf<'_>>) -> Vec<Skip> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    HOOKS
        .iter()
        .map(|h| match h.event {
            COMPAT => {
                if let Some(why) = compat_impossible(btf, &cmdline) {
                    Some((log::Level::Info, why))
                } else if !opts.compat_syscalls {
                    Some((log::Level::Warn, COMPAT_OFF))
                } else {
                    None
                }
            }
            "file"
                if opts.watch_read.is_empty()
                    && opts.watch_write.is_empty()
                    && opts.watch_connect.is_empty() =>
            {
                Some((
                    log::Level::Info,
                    "the watch lists are empty (--watch-read none, --watch-write none, \
                     --watch-connect none)",
                ))
            }
            _ => None,
        })
        .collect()
}

/// What the kernel offers, as far as it can be known without loading the sensor.
struct Offer<'a> {
    btf: Option<&'a libbpf_rs::btf::Btf<'a>>,
    /// false: tp_btf hooks are not used (how the tracepoint fallbacks are tested).
    allow_btf: bool,
    /// Helpers a tracepoint program may call here (`libbpf_probe_bpf_helper`), per helper id.
    helpers: Vec<(libbpf_rs::libbpf_sys::bpf_func_id, bool)>,
}

impl Offer<'_> {
    fn probe<'a>(btf: Option<&'a libbpf_rs::btf::Btf<'a>>, allow_btf: bool) -> Offer<'a> {
        let mut helpers: Vec<(libbpf_rs::libbpf_sys::bpf_func_id, bool)> = Vec::new();
        for (id, name) in HOOKS.iter().flat_map(|h| h.alts).flat_map(|a| a.helpers) {
            if helpers.iter().any(|(h, _)| h == id) {
                continue;
            }
            let ok = libbpf_rs::ProgramType::Tracepoint
                .is_helper_supported(*id)
                .unwrap_or_else(|e| {
                    log::debug!("probing for {name} failed ({e}): taken as missing");
                    false
                });
            log::debug!(
                "sensor: kernel helper {name}: {}",
                if ok { "yes" } else { "no" }
            );
            helpers.push((*id, ok));
        }
        Offer {
            btf,
            allow_btf,
            helpers,
        }
    }

    /// Why `alt` cannot run here, or None when it may.
    fn lacks(&self, alt: &Alt) -> Option<String> {
        if is_dispatch(alt) {
            use libbpf_rs::btf::types::Func;
            if !cfg!(target_arch = "x86_64") {
                return Some("the dispatcher knows x86_64's syscall numbers only".into());
            }
            // Without it the path walks take their bpf_loop form, and the dispatcher's two
            // programs then exceed what Linux 6.1's verifier explores (1M instructions).
            let kfunc = self
                .btf
                .and_then(|b| b.type_by_name::<Func<'_>>("bpf_rdonly_cast"));
            if kfunc.is_none() {
                return Some("the kernel has no bpf_rdonly_cast (Linux 6.2+)".into());
            }
        }
        for (id, name) in alt.helpers {
            if !self.helpers.iter().any(|(h, ok)| h == id && *ok) {
                return Some(format!("the kernel has no {name}"));
            }
        }
        for (_, via) in alt.progs {
            match via {
                Via::TpBtf(name, args) => {
                    if !self.allow_btf {
                        return Some("BTF hooks not wanted".into());
                    }
                    let have = self.btf.and_then(|b| tp_btf_args(b, name));
                    if have < Some(*args) {
                        return Some(match have {
                            None => format!("the kernel's BTF has no tracepoint {name}"),
                            Some(n) => format!(
                                "the kernel's tracepoint {name} passes {n} of the {args} \
                                 arguments the program reads"
                            ),
                        });
                    }
                }
                Via::Fentry(func) => {
                    use libbpf_rs::btf::types::Func;
                    if !self.allow_btf {
                        return Some("BTF hooks not wanted".into());
                    }
                    if self
                        .btf
                        .and_then(|b| b.type_by_name::<Func<'_>>(func))
                        .is_none()
                    {
                        return Some(format!("the kernel's BTF has no function {func}"));
                    }
                }
                Via::Tracepoint(cat, name) | Via::RawTp(cat, name) => {
                    if !Path::new(TRACEFS)
                        .join("events")
                        .join(cat)
                        .join(name)
                        .is_dir()
                    {
                        return Some(format!("the kernel has no tracepoint {cat}:{name}"));
                    }
                }
            }
        }
        None
    }
}

/// Per hook: the alternative chosen (None: none), and why the ones before it could not be used.
type Choice = Vec<(Option<usize>, Vec<String>)>;

/// Which alternative each hook will use, from what the kernel offers (`None`: nothing usable,
/// or not wanted: `skip`). `from[i]`: the first alternative hook `i` may take (later ones once
/// the kernel refused earlier ones). Also says, per hook, why the alternatives before the
/// chosen one could not be used.
fn probe(offer: &Offer<'_>, skip: &[Skip], from: &[usize]) -> Choice {
    let pick = |h: &Hook, skip: &Skip, from: usize, dispatching: Option<&Alt>| {
        let mut why = Vec::new();
        if skip.is_some() {
            return (None, why);
        }
        for (i, alt) in h.alts.iter().enumerate().skip(from) {
            // The same flavour (tp_btf or raw_tp) of the dispatcher as the compat hook runs.
            let runs = |d: &Alt| {
                alt.progs
                    .iter()
                    .filter(|(n, _)| n.starts_with("disp_"))
                    .all(|p| d.progs.contains(p))
            };
            let lacks = if h.event != COMPAT && is_dispatch(alt) && !dispatching.is_some_and(runs) {
                Some("the compat hook does not run this dispatcher".to_string())
            } else {
                offer.lacks(alt)
            };
            match lacks {
                None => return (Some(i), why),
                Some(w) => why.push(w),
            }
        }
        (None, why)
    };
    // The dispatcher serves other hooks only where the compat hook runs it: decide that first.
    let compat = HOOKS.iter().position(|h| h.event == COMPAT);
    let dispatching = compat.and_then(|c| {
        let (alt, _) = pick(&HOOKS[c], &skip[c], from[c], None);
        alt.map(|a| &HOOKS[c].alts[a]).filter(|a| is_dispatch(a))
    });
    HOOKS
        .iter()
        .zip(skip)
        .zip(from)
        .map(|((h, skip), from)| pick(h, skip, *from, dispatching))
        .collect()
}

/// The number of arguments of raw tracepoint `name` in the kernel's BTF (`btf_trace_<name>` is
/// a typedef of a pointer to a function whose first parameter is the hidden `void *__data`).
/// `sched_process_exit` has 1 before kernel 6.16 and 2 (`group_dead`) since.
fn tp_btf_args(btf: &libbpf_rs::btf::Btf<'_>, name: &str) -> Option<usize> {
    use libbpf_rs::btf::{BtfType, types::FuncProto};
    let td = btf.type_by_name::<BtfType<'_>>(&format!("btf_trace_{name}"))?;
    let proto = td
        .skip_mods_and_typedefs()
        .next_type()?
        .skip_mods_and_typedefs();
    let proto = FuncProto::try_from(proto).ok()?;
    Some(proto.len().saturating_sub(1))
}

fn via_name(via: &Via) -> String {
    match via {
        Via::TpBtf(n, _) => format!("tp_btf/{n}"),
        Via::Tracepoint(c, n) => format!("tracepoint/{c}/{n}"),
        Via::RawTp(_, n) => format!("raw_tp/{n}"),
        Via::Fentry(f) => format!("fentry/{f}"),
    }
}

/// Opens the skeleton and sets the knobs; `wanted` names the programs to load.
fn open(opts: &Options, wanted: &[&str], dispatched: &[&str]) -> Result<OpenSensorSkel<'static>> {
    // The open object must outlive the skeleton, which lives as long as the process needs the
    // sensor: leaking one small allocation per load is the simplest correct owner.
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = SensorSkelBuilder::default()
        .open(storage)
        .map_err(|e| Error::runtime(format!("failed to open the BPF object: {e}")))?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| Error::runtime("the BPF object has no .rodata section"))?;
    rodata.agent_tgid = opts.own_tgid;
    rodata.wakeup_bytes = opts.wakeup_bytes;
    // Each CPU looks at the ring's fill after its share of wakeup_bytes (bpf/sensor.bpf.c).
    let cpus = libbpf_rs::num_possible_cpus().map_or(1, |n| n.max(1)) as u64;
    rodata.wakeup_check_bytes = opts.wakeup_bytes / cpus;
    rodata.want_ns = dispatched.contains(&"namespace");
    rodata.want_mount = dispatched.contains(&"mount");
    rodata.want_module = dispatched.contains(&"module_load");
    rodata.want_file = dispatched.contains(&"file");
    rodata.want_dns = dispatched.contains(&"dns");
    rodata.want_close = dispatched.contains(&"connection_close");
    rodata.watch_reads = !opts.watch_read.is_empty();
    rodata.watch_connects = !opts.watch_connect.is_empty();
    rodata.have_exclusions = opts.exclude.in_kernel();
    // The fast path's first-component filter (bpf/file.bpf.h); none: every path is looked up.
    let entries = watch::entries(&opts.watch_read, &opts.watch_write, &opts.watch_connect);
    let tops = watch::tops(&entries).unwrap_or_default();
    rodata.top_count = tops.len() as u32;
    for (i, t) in tops.iter().enumerate() {
        rodata.top_lo[i] = t.lo;
        rodata.top_hi[i] = t.hi;
        rodata.top_mlo[i] = t.mlo;
        rodata.top_mhi[i] = t.mhi;
        rodata.top_len[i] = t.len;
        rodata.top_exact[i] = u8::from(t.exact);
        rodata.top_lists[i] = t.lists as u8;
        let first = (t.lo & 0xff) as usize;
        for (list, bit) in [
            (0, consts::LG_FILE_F_WATCH_READ),
            (1, consts::LG_FILE_F_WATCH_WRITE),
        ] {
            if t.lists & bit as u32 != 0 {
                rodata.top_first[list][first >> 6] |= 1 << (first & 63);
            }
        }
    }
    let bytes = u32::try_from(opts.ring_buffer_mb << 20)
        .map_err(|_| Error::config("--ring-buffer-mb is too large (at most 1024)"))?;
    open.maps
        .events
        .set_max_entries(bytes)
        .map_err(|e| Error::runtime(format!("failed to size the ring buffer: {e}")))?;
    for mut prog in open.open_object_mut().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        prog.set_autoload(wanted.contains(&name.as_str()));
        #[cfg(test)]
        if tests::SABOTAGE.with(|s| s.borrow().contains(&name.as_str())) {
            // A socket filter may not call the tracing helpers: the kernel refuses it.
            prog.set_prog_type(libbpf_rs::ProgramType::SocketFilter);
        }
    }
    Ok(open)
}

/// Puts the watch lists into the kernel's trie (before anything is attached).
fn fill_watch(skel: &SensorSkel<'static>, opts: &Options) -> Result<()> {
    let entries = watch::entries(&opts.watch_read, &opts.watch_write, &opts.watch_connect);
    if entries.len() > watch::MAX_ENTRIES {
        return Err(Error::config(format!(
            "the watch lists have {} prefixes after expanding `*`; at most {} fit in the kernel's \
             table: shorten --watch-read/--watch-write/--watch-connect",
            entries.len(),
            watch::MAX_ENTRIES
        )));
    }
    for (prefix, lists) in &entries {
        skel.maps
            .watch
            .update(&watch::key(prefix), &lists.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| {
                Error::runtime(format!("failed to fill the watch list ({prefix}): {e}"))
            })?;
    }
    log::debug!(
        "file: watching {} prefixes for reads, {} for changes, {} for Unix connects",
        opts.watch_read.len(),
        opts.watch_write.len(),
        opts.watch_connect.len()
    );
    Ok(())
}

/// Makes the kernel's exclusion maps hold `new` (in place: new keys first, then the old ones
/// that went), re-marks the running processes of excluded executables when that set changed,
/// and sets `exclude_kinds`, the kinds the kernel checks.
fn fill_exclusions(
    skel: &mut SensorSkel<'static>,
    now: &mut exclude::Resolved,
    new: exclude::Resolved,
    proc_root: &Path,
) -> Result<()> {
    let fail = |what: &str, e: libbpf_rs::Error| {
        Error::runtime(format!(
            "failed to update the kernel's {what} exclusions: {e}"
        ))
    };
    let one = [1u8];
    let exe_key = |k: &exclude::ExeKey| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&k.0.to_ne_bytes());
        b[8..].copy_from_slice(&k.1.to_ne_bytes());
        b
    };
    let maps = &skel.maps;
    for k in new.exe.difference(&now.exe) {
        maps.exclude_exe
            .update(&exe_key(k), &one, MapFlags::ANY)
            .map_err(|e| fail("executable", e))?;
    }
    for k in new.uid.difference(&now.uid) {
        maps.exclude_uid
            .update(&k.to_ne_bytes(), &one, MapFlags::ANY)
            .map_err(|e| fail("uid", e))?;
    }
    for k in new.cgroup.difference(&now.cgroup) {
        maps.exclude_cgroup
            .update(&k.to_ne_bytes(), &one, MapFlags::ANY)
            .map_err(|e| fail("cgroup", e))?;
    }
    let exe_changed = new.exe != now.exe;
    if exe_changed {
        // Forget every mark, then mark what runs the new set (a moment where they are seen).
        let marks: Vec<Vec<u8>> = maps.excluded_procs.keys().collect();
        for k in marks {
            let _ = maps.excluded_procs.delete(&k);
        }
        for tgid in exclude::running(proc_root, &new.exe) {
            maps.excluded_procs
                .update(&tgid.to_ne_bytes(), &one, MapFlags::ANY)
                .map_err(|e| fail("process", e))?;
        }
    }
    use skel::types::lg_filter;
    let kinds = u32::from(!new.exe.is_empty()) << lg_filter::LG_FILTER_EXE.0
        | u32::from(!new.uid.is_empty()) << lg_filter::LG_FILTER_UID.0
        | u32::from(!new.cgroup.is_empty()) << lg_filter::LG_FILTER_CGROUP.0;
    if let Some(bss) = skel.maps.bss_data.as_deref_mut() {
        bss.exclude_kinds = kinds;
    } else if kinds != 0 {
        return Err(Error::runtime(
            "the BPF object's .bss is not mapped: exclusions cannot be set",
        ));
    }
    let maps = &skel.maps;
    for k in now.exe.difference(&new.exe) {
        let _ = maps.exclude_exe.delete(&exe_key(k));
    }
    for k in now.uid.difference(&new.uid) {
        let _ = maps.exclude_uid.delete(&k.to_ne_bytes());
    }
    for k in now.cgroup.difference(&new.cgroup) {
        let _ = maps.exclude_cgroup.delete(&k.to_ne_bytes());
    }
    if kinds != 0 {
        log::info!(
            "excluding in the kernel: {} executables, {} uids, {} cgroups",
            new.exe.len(),
            new.uid.len(),
            new.cgroup.len()
        );
    }
    *now = new;
    Ok(())
}

/// What the start-up has ruled out so far, per hook: the first alternative it may still take,
/// and the kernel's refusals (to load or to attach) of the ones before.
struct Tried {
    from: Vec<usize>,
    refused: Vec<Vec<String>>,
}

impl Tried {
    fn new() -> Tried {
        Tried {
            from: vec![0; HOOKS.len()],
            refused: vec![Vec::new(); HOOKS.len()],
        }
    }
}

/// Attaches every program of `alt`; an error names the program and the kernel's answer.
/// Programs several hooks share (the dispatcher) are attached once: `done` names those attached.
fn attach(
    skel: &mut SensorSkel<'static>,
    alt: &Alt,
    done: &mut Vec<&'static str>,
) -> std::result::Result<Vec<Link>, String> {
    let mut links = Vec::new();
    for (name, _) in alt.progs {
        if done.contains(name) {
            continue;
        }
        let prog = skel
            .object()
            .progs_mut()
            .find(|p| p.name() == *name)
            .map(|p| p.attach());
        match prog {
            Some(Ok(link)) => links.push((*name, link)),
            Some(Err(e)) => return Err(format!("the kernel refused to attach {name}: {e}")),
            None => return Err(format!("{name} is not in the object")),
        }
    }
    // Only a whole alternative counts as attached (a partial one's links drop with it).
    Ok(links
        .into_iter()
        .map(|(name, link)| {
            done.push(name);
            link
        })
        .collect())
}

/// How `alt` is attached, for the log: "tp_btf/sched_process_exec", "a, b" or "a (+3 more)".
fn shown_vias(alt: &Alt) -> String {
    let vias: Vec<String> = alt.progs.iter().map(|(_, v)| via_name(v)).collect();
    if vias.len() > 2 {
        format!("{} (+{} more)", vias[0], vias.len() - 1)
    } else {
        vias.join(", ")
    }
}

/// Each hook's state from what start-up decided, with its one log line: info when watched
/// with nothing lost, a warning naming the loss and the kernel's reasons when reduced or absent.
fn report(
    choice: &Choice,
    skip: &[Skip],
    refused: &[Vec<String>],
    attached: &[std::result::Result<Option<String>, String>],
) -> Vec<HookStatus> {
    let mut hooks = Vec::new();
    for ((((hook, (alt, lacks)), skip), refused), attached) in HOOKS
        .iter()
        .zip(choice)
        .zip(skip)
        .zip(refused)
        .zip(attached)
    {
        let mut status = HookStatus {
            event: hook.event,
            state: HookState::Absent,
            attached: None,
            why: None,
        };
        if let Some((level, why)) = skip {
            log::log!(*level, "sensor: {:<8} not watched: {why}", hook.event);
            status.why = Some((*why).to_string());
            hooks.push(status);
            continue;
        }
        // The kernel's reasons for the hooks not taken: its refusals, then what it lacks.
        let mut reasons: Vec<&str> = Vec::new();
        for r in refused.iter().chain(lacks) {
            if !reasons.contains(&r.as_str()) {
                reasons.push(r);
            }
        }
        let shown = match (alt, attached) {
            (Some(i), Ok(Some(shown))) => (&hook.alts[*i], shown),
            (_, Err(e)) => {
                reasons.push(e);
                let why = format!("{} ({})", hook.lost, reasons.join("; "));
                log::warn!("sensor: {:<8} NOT watched: {why}", hook.event);
                status.why = Some(why);
                hooks.push(status);
                continue;
            }
            _ => {
                let why = format!("{} ({})", hook.lost, reasons.join("; "));
                log::warn!("sensor: {:<8} NOT watched: {why}", hook.event);
                status.why = Some(why);
                hooks.push(status);
                continue;
            }
        };
        let (alt, shown) = shown;
        status.attached = Some(shown.clone());
        if let Some(loss) = alt.loss {
            let why = if reasons.is_empty() {
                loss.to_string()
            } else {
                format!("{loss} ({})", reasons.join("; "))
            };
            log::warn!("sensor: {:<8} reduced: {why}", hook.event);
            status.state = HookState::Reduced;
            status.why = Some(why);
        } else {
            status.state = HookState::Active;
            if reasons.is_empty() {
                log::info!("sensor: {:<8} attached via {shown}", hook.event);
            } else {
                log::info!(
                    "sensor: {:<8} attached via {shown} (nothing lost; program {}; not the first \
                     choice: {})",
                    hook.event,
                    alt.progs[0].0,
                    reasons.join("; ")
                );
            }
        }
        hooks.push(status);
    }
    hooks
}

impl Sensor {
    /// Checks privileges, BTF and tracefs, loads the best available hooks and attaches them.
    pub fn start(opts: &Options) -> Result<Sensor> {
        Self::start_with(opts, true)
    }

    /// `allow_btf: false` uses the classic-tracepoint fallbacks only (also how they are tested).
    fn start_with(opts: &Options, allow_btf: bool) -> Result<Sensor> {
        preflight()?;
        libbpf_rs::set_print(Some((PrintLevel::Debug, load_log::print)));
        let btf = libbpf_rs::Btf::from_vmlinux().ok();
        let skip = unneeded(opts, btf.as_ref());
        let offer = Offer::probe(btf.as_ref(), allow_btf);
        let mut tried = Tried::new();
        // Each round that fails takes one alternative away: the rounds are bounded.
        let rounds = HOOKS.iter().map(|h| h.alts.len()).sum::<usize>() + 1;
        for _ in 0..rounds {
            let (mut skel, choice) = Self::load(opts, &offer, &skip, &mut tried)?;
            fill_watch(&skel, opts)?;
            // Before anything is attached: no record of an excluded process is ever produced.
            let (resolved, bad) = exclude::resolve(&opts.exclude.items, &exclude::cgroup2_root());
            if let Some(b) = bad.first() {
                return Err(Error::config(format!(
                    "--exclude {b} (fix or remove the item; rule files' `exclude:` too)"
                )));
            }
            let mut excluded = exclude::Resolved::default();
            fill_exclusions(&mut skel, &mut excluded, resolved, &opts.exclude.proc_root)?;
            let mut links = Vec::new();
            let mut attached: Vec<std::result::Result<Option<String>, String>> = Vec::new();
            let mut retry = false;
            let mut done = Vec::new();
            for (i, (hook, (alt, _))) in HOOKS.iter().zip(&choice).enumerate() {
                let Some(a) = alt else {
                    attached.push(Ok(None));
                    continue;
                };
                match attach(&mut skel, &hook.alts[*a], &mut done) {
                    Ok(these) => {
                        links.extend(these);
                        attached.push(Ok(Some(shown_vias(&hook.alts[*a]))));
                    }
                    Err(e) => {
                        // Another alternative may attach where this one did not: load again.
                        let later = hook
                            .alts
                            .iter()
                            .skip(a + 1)
                            .any(|x| offer.lacks(x).is_none());
                        if later {
                            log::debug!("sensor: {e}: {} tries its next hook", hook.event);
                            tried.refused[i].push(e);
                            tried.from[i] = a + 1;
                            retry = true;
                            break;
                        }
                        attached.push(Err(e));
                    }
                }
            }
            if retry {
                continue;
            }
            let hooks = report(&choice, &skip, &tried.refused, &attached);
            // Without process starts and ends the rest cannot be attributed: that is no sensor.
            let missing: Vec<String> = hooks
                .iter()
                .filter(|h| matches!(h.event, "exec" | "exit") && h.state == HookState::Absent)
                .map(|h| format!("{}: {}", h.event, h.why.as_deref().unwrap_or("not watched")))
                .collect();
            if !missing.is_empty() {
                return Err(Error::runtime(format!(
                    "cannot watch process executions and exits on kernel {}: {}",
                    kernel_release(),
                    missing.join("; ")
                )));
            }
            return Ok(Sensor {
                skel,
                _links: links,
                exclusions_loaded: opts.exclude.in_kernel(),
                excluded,
                proc_root: opts.exclude.proc_root.clone(),
                hooks,
            });
        }
        Err(Error::runtime(
            "the sensor did not start after trying every hook (see --log-level debug)",
        ))
    }

    /// Loads the best alternative of every hook that `tried` leaves; a program the kernel
    /// refuses sends its hook to its next alternative (or leaves it out) and the object is
    /// loaded again. Returns the skeleton and each hook's choice (with what the kernel lacked for
    /// the alternatives before it).
    fn load(
        opts: &Options,
        offer: &Offer<'_>,
        skip: &[Skip],
        tried: &mut Tried,
    ) -> Result<(SensorSkel<'static>, Choice)> {
        let rounds = HOOKS.iter().map(|h| h.alts.len()).sum::<usize>() + 1;
        for _ in 0..rounds {
            let choice = probe(offer, skip, &tried.from);
            let wanted: Vec<&str> = HOOKS
                .iter()
                .zip(&choice)
                .filter_map(|(h, (c, _))| c.map(|i| &h.alts[i]))
                .flat_map(|a| a.progs.iter().map(|(n, _)| *n))
                .collect();
            let open = open(opts, &wanted, &dispatched(&choice))?;
            let (res, msgs) = load_log::capture(|| open.load());
            let err = match res {
                Ok(skel) => return Ok((skel, choice)),
                Err(e) => e,
            };
            // Which hook's program was refused: that hook moves on, the others stay.
            let culprit = load_log::refusal(&msgs).and_then(|r| {
                HOOKS
                    .iter()
                    .zip(&choice)
                    .enumerate()
                    // The dispatcher's programs belong to the compat hook (last), shared or not.
                    .rev()
                    .find_map(|(i, (h, (c, _)))| {
                        let c = (*c)?;
                        h.alts[c]
                            .progs
                            .iter()
                            .any(|(n, _)| *n == r.prog)
                            .then(|| (i, c, r.clone()))
                    })
            });
            let Some((i, alt, r)) = culprit else {
                let said = msgs
                    .iter()
                    .find(|m| m.contains("fail") && !m.contains("optional"))
                    .map(|m| format!(": libbpf: {}", m.trim()))
                    .unwrap_or_default();
                return Err(Error::runtime(format!(
                    "kernel {} refused the sensor's BPF object ({err}{said}); the sensor needs \
                     Linux 5.10 or newer with BTF (the kernel's log is shown with --log-level debug)",
                    kernel_release()
                )));
            };
            log::debug!(
                "sensor: the kernel refused {} ({}): {} tries its next hook",
                r.prog,
                r.reason,
                HOOKS[i].event
            );
            tried.refused[i].push(format!("the kernel refused {}: {}", r.prog, r.reason));
            tried.from[i] = alt + 1;
        }
        Err(Error::runtime(
            "the sensor's BPF object did not load after trying every hook (see --log-level debug)",
        ))
    }

    /// Every hook's state, for the outputs that show it.
    pub fn event_types(&self) -> EventTypes {
        EventTypes::from_hooks(&self.hooks)
    }

    /// The `events` ring buffer map, for a `RingBufferBuilder`.
    pub fn events_map(&self) -> &libbpf_rs::MapMut<'static> {
        &self.skel.maps.events
    }

    /// Replaces the exclusions in force (`SIGHUP`): the kernel's maps are updated in place. An
    /// item that cannot be resolved is skipped and named in the returned reasons.
    pub fn set_exclusions(&mut self, items: &[exclude::Exclusion]) -> Vec<String> {
        let (resolved, mut bad) = exclude::resolve(items, &exclude::cgroup2_root());
        if !self.exclusions_loaded {
            if !items.is_empty() {
                bad.push(
                    "the agent started without exclusions and without --rules, so the kernel's                      exclusion checks are not loaded: restart the agent to apply them"
                        .into(),
                );
            }
            return bad;
        }
        if let Err(e) = fill_exclusions(
            &mut self.skel,
            &mut self.excluded,
            resolved,
            &self.proc_root,
        ) {
            bad.push(e.to_string());
        }
        bad
    }

    /// Records the kernel kept out of the ring on purpose, per exclusion kind (exe, uid,
    /// cgroup: `enum lg_filter`), summed over CPUs.
    pub fn kernel_filtered(&self) -> [u64; exclude::KINDS] {
        percpu_sums(&self.skel.maps.filtered)
    }

    /// Failed ring-buffer reservations per record type, summed over CPUs.
    pub fn kernel_drops(&self) -> [u64; decode::LG_TYPE_MAX] {
        percpu_sums(&self.skel.maps.drops)
    }
}

/// The first N entries of a per-CPU array of u64 counters, each summed over CPUs (0 where a
/// lookup fails).
fn percpu_sums<const N: usize>(map: &impl MapCore) -> [u64; N] {
    let mut out = [0u64; N];
    for (i, slot) in out.iter_mut().enumerate() {
        let key = (i as u32).to_ne_bytes();
        if let Ok(Some(cpus)) = map.lookup_percpu(&key, MapFlags::ANY) {
            *slot = cpus
                .iter()
                .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .sum();
        }
    }
    out
}

impl Drop for Sensor {
    /// Detaching a link waits for an RCU grace period in the kernel (60–90 ms each, measured
    /// here), so closing ~30 links one by one took ~3 s. Each link's last reference is handed to
    /// its own short-lived thread so the waits overlap.
    fn drop(&mut self) {
        use std::os::fd::AsFd;
        let fds: Vec<std::os::fd::OwnedFd> = self
            ._links
            .iter()
            .filter_map(|l| l.as_fd().try_clone_to_owned().ok())
            .collect();
        // Cheap now: the duplicates keep every link attached.
        self._links.clear();
        let closers: Vec<_> = fds
            .into_iter()
            .filter_map(|fd| {
                std::thread::Builder::new()
                    .name("lg-detach".into())
                    .spawn(move || drop(fd))
                    .ok()
            })
            .collect();
        for c in closers {
            let _ = c.join();
        }
    }
}

/// Loads every program of the object (both flavours of each hook) without attaching: the
/// load-only smoke test that catches verifier regressions.
#[cfg(test)]
pub fn load_all_for_test(opts: &Options) -> Result<usize> {
    preflight()?;
    libbpf_rs::set_print(Some((PrintLevel::Debug, load_log::print)));
    // fentry programs cannot load on this machine's kernel (it refuses trampolines): the kernel
    // matrix (scripts/kernel-matrix) loads them on kernels that take them.
    let mut all: Vec<&str> = HOOKS
        .iter()
        .flat_map(|h| h.alts.iter())
        .flat_map(|a| a.progs.iter())
        .filter(|(_, v)| !matches!(v, Via::Fentry(_)))
        .map(|(n, _)| *n)
        .collect();
    all.sort_unstable();
    all.dedup();
    // Every event's dispatcher code too, so that the verifier sees all of it.
    let events: Vec<&str> = HOOKS.iter().map(|h| h.event).collect();
    let open = open(opts, &all, &events)?;
    let (res, msgs) = load_log::capture(|| open.load());
    res.map_err(|e| {
        let why = load_log::refusal(&msgs)
            .map(|r| format!(": {} refused: {}", r.prog, r.reason))
            .unwrap_or_default();
        Error::runtime(format!("load failed: {e}{why}"))
    })?;
    Ok(all.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::decode::{Record, decode};
    use std::cell::RefCell;
    use std::rc::Rc;

    thread_local! {
        /// Programs `open` turns into socket filters, which the kernel refuses (they call
        /// tracing helpers): how the tests make the kernel refuse one program.
        pub(super) static SABOTAGE: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    }

    /// Options for a sensor of the tests' own: a 1 MiB ring, nothing filtered, every hook.
    fn test_opts() -> Options {
        Options {
            ring_buffer_mb: 1,
            own_tgid: 0,
            wakeup_bytes: 0,
            compat_syscalls: true,
            watch_read: watch::resolve("default", watch::DEFAULT_READ),
            watch_write: watch::resolve("default", watch::DEFAULT_WRITE),
            watch_connect: watch::resolve("default", watch::DEFAULT_CONNECT),
            exclude: exclude::Options::default(),
        }
    }

    /// A ring-buffer reader that decodes every record of `s` into the returned list.
    fn collect(s: &Sensor) -> (libbpf_rs::RingBuffer<'static>, Rc<RefCell<Vec<Record>>>) {
        let got: Rc<RefCell<Vec<Record>>> = Rc::default();
        let g = got.clone();
        let mut rb = libbpf_rs::RingBufferBuilder::new();
        rb.add(s.events_map(), move |b: &[u8]| {
            if let Ok(r) = decode(b) {
                g.borrow_mut().push(r);
            }
            0
        })
        .expect("ring buffer");
        (rb.build().expect("ring buffer"), got)
    }

    /// The file hook's fallback flavour (kernels before 6.6) is FILE_TPS without its last
    /// program: that must be fchmodat2's.
    #[test]
    fn file_tracepoints_keep_fchmodat2_last() {
        assert_eq!(FILE_TPS.last().map(|p| p.0), Some("file_fchmodat2_exit"));
        assert!(FILE_TPS.iter().any(|p| p.0 == "file_connect_exit"));
    }

    #[test]
    fn hooks_name_exactly_the_programs_of_the_object() {
        let mut in_hooks: Vec<&str> = HOOKS
            .iter()
            .flat_map(|h| h.alts.iter())
            .flat_map(|a| a.progs.iter().map(|(n, _)| *n))
            .collect();
        in_hooks.sort_unstable();
        in_hooks.dedup();
        assert_eq!(
            in_hooks,
            programs_in_object(),
            "HOOKS and the SEC() programs of bpf/sensor.bpf.c differ"
        );
    }

    /// The names of the programs compiled into the object (its `SEC()` functions), sorted.
    fn programs_in_object() -> Vec<&'static str> {
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = SensorSkelBuilder::default()
            .open(storage)
            .expect("the BPF object opens");
        let mut names: Vec<&'static str> = open
            .open_object()
            .progs()
            .map(|p| &*String::leak(p.name().to_string_lossy().into_owned()))
            .collect();
        names.sort_unstable();
        names
    }

    /// The tp_btf hooks are chosen only when the kernel's tracepoint has every argument the
    /// program reads (else one refused program would push every hook to the fallbacks).
    #[test]
    fn tp_btf_argument_counts_come_from_the_kernel_btf() {
        let btf = libbpf_rs::btf::Btf::from_vmlinux()
            .expect("the kernel has BTF (/sys/kernel/btf/vmlinux), as every supported kernel does");
        assert_eq!(tp_btf_args(&btf, "sched_process_exec"), Some(3));
        assert_eq!(tp_btf_args(&btf, "sched_process_fork"), Some(2));
        assert_eq!(tp_btf_args(&btf, "inet_sock_set_state"), Some(3));
        assert!(tp_btf_args(&btf, "sched_process_exit") >= Some(1));
        assert_eq!(tp_btf_args(&btf, "no_such_tracepoint"), None);
        // What `probe` demands of each hook is what the kernel offers, or the hook falls back.
        let offer = Offer {
            btf: Some(&btf),
            allow_btf: true,
            helpers: vec![(BPF_LOOP.0, true)],
        };
        let none = vec![None; HOOKS.len()];
        let chosen = probe(&offer, &none, &[0; HOOK_COUNT]);
        for (i, hook) in HOOKS.iter().enumerate() {
            if let Some(Via::TpBtf(name, want)) = hook.alts[0].progs.first().map(|(_, v)| *v) {
                let have = tp_btf_args(&btf, name);
                if have < Some(want) {
                    assert_ne!(chosen[i].0, Some(0), "{name}: {have:?} < {want}");
                    assert!(chosen[i].1[0].contains(name), "{:?}", chosen[i].1);
                }
            }
        }
    }

    /// Without bpf_loop() (before 5.17) exec takes the unrolled walk, and says why; a hook
    /// refused by the kernel starts its next probe after the refused alternative.
    #[test]
    fn exec_without_bpf_loop_takes_the_unrolled_walk() {
        let Ok(btf) = libbpf_rs::btf::Btf::from_vmlinux() else {
            panic!("no kernel BTF at {VMLINUX_BTF}");
        };
        let exec = HOOKS.iter().position(|h| h.event == "exec").unwrap();
        let none = vec![None; HOOKS.len()];
        let mut offer = Offer {
            btf: Some(&btf),
            allow_btf: true,
            helpers: vec![(BPF_LOOP.0, false)],
        };
        let (alt, why) = probe(&offer, &none, &[0; HOOK_COUNT]).swap_remove(exec);
        assert_eq!(
            HOOKS[exec].alts[alt.unwrap()].progs[0].0,
            "exec_btf_unrolled"
        );
        assert_eq!(why, vec!["the kernel has no bpf_loop (Linux 5.17+)"; 2]);
        assert_eq!(
            HOOKS[exec].alts[alt.unwrap()].loss,
            None,
            "the same walk: nothing lost"
        );
        offer.helpers = vec![(BPF_LOOP.0, true)];
        let mut from = [0; HOOK_COUNT];
        from[exec] = 1;
        let (alt, _) = probe(&offer, &none, &from).swap_remove(exec);
        assert_eq!(HOOKS[exec].alts[alt.unwrap()].progs[0].0, "exec_tp");
        from[exec] = HOOKS[exec].alts.len();
        assert_eq!(probe(&offer, &none, &from)[exec].0, None);
    }

    /// Load-only smoke test: every program (tp_btf and tracepoint flavours) passes the verifier.
    #[test]
    fn root_every_bpf_program_loads() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads BPF programs: run the tests as root (sudo scripts/test)"
        );
        let n = load_all_for_test(&test_opts()).unwrap_or_else(|e| panic!("{e}"));
        // Every program but the fentry ones, which this machine's kernel refuses.
        let fentry = HOOKS
            .iter()
            .flat_map(|h| h.alts.iter())
            .flat_map(|a| a.progs.iter())
            .filter(|(_, v)| matches!(v, Via::Fentry(_)))
            .count();
        assert_eq!(fentry, 1);
        assert_eq!(n, programs_in_object().len() - fentry);
    }

    /// The compat hook is skipped, with a reason, only where 32-bit syscalls cannot happen.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn compat_hook_is_wanted_only_where_32_bit_syscalls_exist() {
        assert!(!ia32_disabled_on_cmdline(
            "BOOT_IMAGE=/vmlinuz root=/dev/vda ro"
        ));
        assert!(!ia32_disabled_on_cmdline("ia32_emulation=1 quiet"));
        assert!(!ia32_disabled_on_cmdline("ia32_emulation=on"));
        assert!(ia32_disabled_on_cmdline("quiet ia32_emulation=0"));
        assert!(ia32_disabled_on_cmdline("ia32_emulation=off"));
        assert!(ia32_disabled_on_cmdline("ia32_emulation=N"));
        assert!(ia32_disabled_on_cmdline("ia32_emulation=false"));
        // The last one wins, as in the kernel.
        assert!(!ia32_disabled_on_cmdline(
            "ia32_emulation=0 ia32_emulation=y"
        ));
        let has_ia32 = std::fs::read_to_string("/proc/kallsyms")
            .is_ok_and(|k| k.lines().any(|l| l.ends_with(" do_fast_syscall_32")));
        compat_hook_wanted_where_possible(has_ia32, "ia32_emulation=0", "ia32_emulation off");
    }

    /// arm64: the compat hook is wanted where the kernel has CONFIG_COMPAT and a CPU runs
    /// AArch32 (the kernel then accepts the PER_LINUX32 personality).
    #[test]
    #[cfg(target_arch = "aarch64")]
    fn compat_hook_is_wanted_only_where_32_bit_syscalls_exist() {
        let has_compat = std::fs::read_to_string("/proc/kallsyms")
            .is_ok_and(|k| k.lines().any(|l| l.ends_with(" compat_arm_syscall")));
        let possible = has_compat && aarch32_el0_supported();
        // Restored: the test thread is still in the Linux personality.
        // SAFETY: personality(2) with 0xffffffff only queries the calling thread's value.
        let now = unsafe { nix::libc::personality(0xffff_ffff) };
        assert_eq!(now & PER_MASK, 0, "PER_LINUX");
        compat_hook_wanted_where_possible(possible, "", "");
    }

    /// Shared by both arches: `possible` is what the test found out itself; `off_cmdline` a
    /// command line that switches the entry off, with `off_why` in its reason ("": no such
    /// switch on this arch).
    fn compat_hook_wanted_where_possible(possible: bool, off_cmdline: &str, off_why: &str) {
        let btf = libbpf_rs::btf::Btf::from_vmlinux()
            .expect("the kernel has BTF (/sys/kernel/btf/vmlinux), as every supported kernel does");
        let why = compat_impossible(Some(&btf), "");
        assert_eq!(why.is_none(), possible, "{why:?}");
        let idx = HOOKS.iter().position(|h| h.event == COMPAT).unwrap();
        if possible {
            if !off_cmdline.is_empty() {
                let why = compat_impossible(Some(&btf), off_cmdline).unwrap_or_default();
                assert!(why.contains(off_why), "{why}");
            }
            // Turned off where it could see something: a warning, since events go unreported.
            let off = Options {
                compat_syscalls: false,
                ..test_opts()
            };
            assert!(matches!(
                unneeded(&off, Some(&btf))[idx],
                Some((log::Level::Warn, why)) if why.contains("--compat-syscalls=false")
            ));
        }
        // A hook left out is neither loaded nor attached.
        let mut skip = vec![None; HOOKS.len()];
        skip[idx] = Some((log::Level::Info, "no 32-bit syscalls"));
        let mut offer = Offer {
            btf: Some(&btf),
            allow_btf: true,
            helpers: vec![(BPF_LOOP.0, true), (TASK_PT_REGS.0, true)],
        };
        assert_eq!(probe(&offer, &skip, &[0; HOOK_COUNT])[idx].0, None);
        let all = vec![None; HOOKS.len()];
        let dispatching = cfg!(target_arch = "x86_64");
        let first = usize::from(!dispatching) * 2;
        assert_eq!(probe(&offer, &all, &[0; HOOK_COUNT])[idx].0, Some(first));
        // The other hooks take the dispatcher only where the compat hook runs it.
        let ns = HOOKS.iter().position(|h| h.event == "namespace").unwrap();
        let ns_alt = probe(&offer, &all, &[0; HOOK_COUNT])[ns].0.unwrap();
        assert_eq!(is_dispatch(&HOOKS[ns].alts[ns_alt]), dispatching);
        assert!(!is_dispatch(
            &HOOKS[ns].alts[probe(&offer, &skip, &[0; HOOK_COUNT])[ns].0.unwrap()]
        ));
        // Without bpf_loop (before 5.17) the compat hook runs its plain programs, reduced, and
        // the dispatched events use their own tracepoints where those can run without it.
        offer.helpers = vec![(BPF_LOOP.0, false), (TASK_PT_REGS.0, true)];
        let choice = probe(&offer, &all, &[0; HOOK_COUNT]);
        let compat = &HOOKS[idx].alts[choice[idx].0.unwrap()];
        assert!(!is_dispatch(compat) && compat.loss.is_some());
        assert!(!is_dispatch(&HOOKS[ns].alts[choice[ns].0.unwrap()]));
        let file = HOOKS.iter().position(|h| h.event == "file").unwrap();
        assert_eq!(choice[file].0, None, "the file event needs bpf_loop");
    }

    /// A program the kernel refuses costs only its own event type: fork falls back to its
    /// classic tracepoint (reduced, with the kernel's reason), memfd (one hook) is left out,
    /// and everything else loads and runs.
    #[test]
    fn root_a_refused_program_costs_only_its_event_type() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "root_* tests load BPF programs: run them as root"
        );
        SABOTAGE.with(|s| *s.borrow_mut() = vec!["fork_btf", "memfd_enter", "exit_btf"]);
        // A ring that the rest of a busy machine does not fill before it is read.
        let started = Sensor::start(&Options {
            ring_buffer_mb: 16,
            ..test_opts()
        });
        SABOTAGE.with(|s| s.borrow_mut().clear());
        let s = started.unwrap_or_else(|e| panic!("{e}"));
        let state = |e: &str| {
            let h = s.hooks.iter().find(|h| h.event == e).expect("a hook");
            (h.state, h.why.clone().unwrap_or_default())
        };
        let (fork, why) = state("fork");
        assert_eq!(fork, HookState::Reduced, "{why}");
        assert!(
            why.contains("new threads are reported as forks")
                && why.contains("the kernel refused fork_btf: "),
            "{why}"
        );
        let (memfd, why) = state("memfd");
        assert_eq!(memfd, HookState::Absent);
        assert!(
            why.starts_with("memfd_create calls are NOT reported")
                && why.contains("the kernel refused memfd_enter: "),
            "{why}"
        );
        // exit: fentry where the kernel takes it (as good as exit_btf), else, as on this
        // machine whose kernel refuses trampolines, the classic tracepoint.
        let (exit, why) = state("exit");
        let via = s
            .hooks
            .iter()
            .find(|h| h.event == "exit")
            .and_then(|h| h.attached.clone());
        match exit {
            HookState::Active => assert_eq!(via.as_deref(), Some("fentry/taskstats_exit")),
            _ => {
                assert_eq!(exit, HookState::Reduced);
                assert_eq!(via.as_deref(), Some("tracepoint/sched/sched_process_exit"));
                assert!(why.contains("the kernel refused exit_fentry: "), "{why}");
            }
        }
        for e in ["exec", "connect", "setuid", "ptrace", "bpf_load"] {
            assert_eq!(state(e).0, HookState::Active, "{e}: {}", state(e).1);
        }
        let types = s.event_types();
        assert_eq!(types.iter().count(), HOOK_COUNT);
        let line = types.line();
        assert!(
            line.starts_with("exec=active ")
                && line.contains(" fork=reduced ")
                && line.contains(" memfd=absent"),
            "{line}"
        );
        let v = serde_json::to_value(types).expect("serialize");
        assert_eq!(v["memfd"], "absent");
        assert_eq!(v["exec"], "active");
        // The rest runs: a fork and exit of a child are reported.
        let (rb, got) = collect(&s);
        let mut child = std::process::Command::new("/bin/true")
            .spawn()
            .expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let seen = || {
            got.borrow()
                .iter()
                .any(|r| matches!(r, Record::Exit(e) if e.task.pid == pid))
        };
        while !seen() && std::time::Instant::now() < deadline {
            let _ = rb.poll(std::time::Duration::from_millis(100));
        }
        assert!(
            seen(),
            "the exit of {pid} was not reported ({} records, kernel drops {:?})",
            got.borrow().len(),
            s.kernel_drops()
        );
    }

    /// Without exec there is no sensor: start fails, naming the kernel and what it refused (to
    /// load, or to attach: a socket filter loads but does not attach to a tracepoint).
    #[test]
    fn root_without_exec_the_sensor_refuses_to_start_and_says_why() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "root_* tests load BPF programs: run them as root"
        );
        let exec: Vec<&'static str> = HOOKS[0].alts.iter().map(|a| a.progs[0].0).collect();
        assert_eq!(HOOKS[0].event, "exec");
        SABOTAGE.with(|s| *s.borrow_mut() = exec);
        let started = Sensor::start(&test_opts());
        SABOTAGE.with(|s| s.borrow_mut().clear());
        let Err(e) = started else {
            panic!("the sensor started without exec");
        };
        let e = e.to_string();
        assert!(
            e.contains(&format!(
                "cannot watch process executions and exits on kernel {}: exec: program \
                 executions are NOT reported",
                kernel_release()
            )) && e.contains("the kernel refused exec_btf: ")
                && e.contains("exec_tp_unrolled")
                && !e.contains("exit:"),
            "{e}"
        );
    }

    /// A TCP connect that never returns through connect() (TCP Fast Open via sendto) must not be
    /// reported, with its stale socket, at the thread's next connect() (here a UDP one, as in
    /// every DNS lookup).
    #[test]
    fn root_fast_open_connect_is_not_reported_at_a_later_udp_connect() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
        use std::os::fd::AsRawFd;
        use std::time::{Duration, Instant};

        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads BPF programs: run the tests as root (sudo scripts/test)"
        );
        let opts = test_opts();
        let s = Sensor::start(&opts).unwrap_or_else(|e| panic!("{e}"));
        let (rb, got) = collect(&s);

        let tid = nix::unistd::gettid().as_raw() as u32;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let tcp_port = l.local_addr().expect("addr").port();
        let tfo = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let dst = nix::libc::sockaddr_in {
            sin_family: nix::libc::AF_INET as nix::libc::sa_family_t,
            sin_port: tcp_port.to_be(),
            sin_addr: nix::libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        // MSG_FASTOPEN connects inside sendto(): SYN_SENT without a connect() syscall.
        // SAFETY: `tfo` is an open socket; the buffer and the sockaddr_in are valid for the
        // lengths passed and outlive the call.
        let sent = unsafe {
            nix::libc::sendto(
                tfo.as_raw_fd(),
                b"x".as_ptr().cast(),
                1,
                nix::libc::MSG_FASTOPEN,
                (&dst as *const nix::libc::sockaddr_in).cast(),
                std::mem::size_of::<nix::libc::sockaddr_in>() as nix::libc::socklen_t,
            )
        };
        assert_eq!(
            sent,
            1,
            "sendto(MSG_FASTOPEN): {}",
            nix::errno::Errno::last()
        );
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
        udp.connect("127.0.0.1:9").expect("udp connect");
        // A plain TCP connect afterwards proves the hook is live.
        let _c = std::net::TcpStream::connect(("127.0.0.1", tcp_port)).expect("connect");

        let mine = || -> Vec<(u16, i32)> {
            got.borrow()
                .iter()
                .filter_map(|r| match r {
                    Record::Sock(c) if !c.inbound && c.task.tid == tid => Some((c.dport, c.ret)),
                    _ => None,
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while mine().is_empty() && Instant::now() < deadline {
            let _ = rb.poll(Duration::from_millis(100));
        }
        // Records are in order; anything the UDP connect produced came before the last one.
        let _ = rb.poll(Duration::from_millis(200));
        let mine = mine();
        assert_eq!(
            mine,
            vec![(tcp_port, 0)],
            "exactly one connect event: the real connect(), none for the UDP connect()"
        );
    }

    /// The compat hook's raw-tracepoint fallback sees a 64-bit process's `int $0x80`
    /// memfd_create (the helper of tests/integration/compat.rs, built here) and reports it once.
    /// x86_64 only (the helper is x86 code); arm64's compat hook is tested in an arm64 guest by
    /// scripts/kernel-matrix-arm64 (tests/guest/lga32.c).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn root_compat_raw_tp_fallback_reports_an_int80_memfd_create() {
        use std::time::{Duration, Instant};

        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads BPF programs: run the tests as root (sudo scripts/test)"
        );
        let dir = std::env::temp_dir().join(format!("lg-compat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bin = dir.join("compat32");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/compat32.c");
        let built = std::process::Command::new("cc")
            .args(["-no-pie", "-static", "-O1", "-o"])
            .arg(&bin)
            .arg(src)
            .status()
            .expect("run cc");
        assert!(built.success(), "cc {src}");
        let opts = test_opts();
        let s = Sensor::start_with(&opts, false).unwrap_or_else(|e| panic!("{e}"));
        let compat = s
            .hooks
            .iter()
            .find(|h| h.event == COMPAT)
            .expect("compat hook");
        assert_eq!(
            compat.attached.as_deref(),
            Some("raw_tp/sys_enter, raw_tp/sys_exit")
        );
        let (rb, got) = collect(&s);
        let name = format!("lg-rawtp-{}", std::process::id());
        let out = std::process::Command::new(&bin)
            .args(["memfd", &name])
            .output()
            .expect("run compat32");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{out:?}");
        let seen = || {
            got.borrow()
                .iter()
                .filter(|r| matches!(r, Record::Memfd(m) if m.name == name && m.flags == 1))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen() == 0 && Instant::now() < deadline {
            let _ = rb.poll(Duration::from_millis(100));
        }
        let _ = rb.poll(Duration::from_millis(200));
        assert_eq!(seen(), 1);
    }

    /// The classic-tracepoint fallbacks (used where tp_btf is missing) attach and deliver
    /// exec, exit, fork and connect records with the right fields.
    #[test]
    fn root_tracepoint_fallbacks_deliver_exec_exit_fork_connect() {
        use std::time::{Duration, Instant};

        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads BPF programs: run the tests as root (sudo scripts/test)"
        );
        let opts = test_opts();
        let s = Sensor::start_with(&opts, false).unwrap_or_else(|e| panic!("{e}"));
        for h in &s.hooks {
            let via = h.attached.as_deref().unwrap_or("none");
            // The compat hook's fallback is the raw tracepoint, and the events it dispatches
            // follow it (connection_close: its first program).
            let def = HOOKS.iter().find(|d| d.event == h.event).expect("hook");
            let dispatched_first = def.alts[0].progs[0].0.starts_with("disp_");
            let want = if h.event == COMPAT || dispatched_first {
                "raw_tp/"
            } else {
                "tracepoint/"
            };
            assert!(via.starts_with(want), "{}: {via}", h.event);
        }
        let (rb, got) = collect(&s);

        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        child.wait().expect("wait");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");

        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut exec, mut exit, mut fork, mut connect) = (false, false, false, false);
        while !(exec && exit && fork && connect) && Instant::now() < deadline {
            let _ = rb.poll(Duration::from_millis(100));
            for r in got.borrow().iter() {
                match r {
                    Record::Exec(e) if e.task.pid == pid => {
                        exec = e.path.ends_with("dash") || e.path.ends_with("sh");
                        assert_eq!(e.args, vec!["/bin/sh", "-c", "exit 3"]);
                    }
                    Record::Exit(e) if e.task.pid == pid => {
                        assert_eq!(e.exit_code, 3);
                        exit = true;
                    }
                    Record::Fork(f) if f.child_pid == pid => fork = true,
                    Record::Sock(c) if !c.inbound && c.dport == port => {
                        assert_eq!(c.dst.to_string(), "127.0.0.1");
                        assert_ne!(c.sport, 0);
                        connect = true;
                    }
                    _ => {}
                }
            }
        }
        assert!(
            exec && exit && fork && connect,
            "exec {exec} exit {exit} fork {fork} connect {connect}"
        );
    }
}
