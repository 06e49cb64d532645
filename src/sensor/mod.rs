//! The kernel side's user half: checks, opens, probes, loads and attaches the BPF programs of
//! bpf/sensor.bpf.c, and reads the kernel's loss counters.
//!
//! Each event has one or more hooks in priority order (tp_btf before the classic tracepoint);
//! the best one the running kernel offers is loaded and attached, and one log line per event
//! says which (or that none could be).

use std::mem::MaybeUninit;
use std::path::Path;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, PrintLevel};

use crate::error::{Error, Result};

pub mod decode;
pub mod dns;
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
}

/// One way to observe an event: a set of programs that all load and attach together.
struct Alt {
    progs: &'static [(&'static str, Via)],
}

/// One event the sensor reports and its hooks, best first.
struct Hook {
    event: &'static str,
    alts: &'static [Alt],
}

macro_rules! sys {
    ($($prog:literal => $tp:literal),* $(,)?) => {
        &[Alt { progs: &[$(($prog, Via::Tracepoint("syscalls", $tp))),*] }]
    };
}

/// Every event and its hooks, best first (bpf/sensor.bpf.c has the programs).
const HOOKS: &[Hook] = &[
    Hook {
        event: "exec",
        alts: &[
            Alt {
                progs: &[("exec_btf", Via::TpBtf("sched_process_exec", 3))],
            },
            Alt {
                progs: &[("exec_tp", Via::Tracepoint("sched", "sched_process_exec"))],
            },
        ],
    },
    Hook {
        event: "exit",
        alts: &[
            Alt {
                progs: &[("exit_btf", Via::TpBtf("sched_process_exit", 2))],
            },
            Alt {
                progs: &[("exit_tp", Via::Tracepoint("sched", "sched_process_exit"))],
            },
        ],
    },
    Hook {
        event: "fork",
        alts: &[
            Alt {
                progs: &[("fork_btf", Via::TpBtf("sched_process_fork", 2))],
            },
            Alt {
                progs: &[("fork_tp", Via::Tracepoint("sched", "sched_process_fork"))],
            },
        ],
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
            },
        ],
    },
    Hook {
        event: "accept",
        alts: sys!("accept4_exit" => "sys_exit_accept4", "accept_exit" => "sys_exit_accept"),
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
    },
    Hook {
        event: "capset",
        alts: sys!("capset_enter" => "sys_enter_capset", "capset_exit" => "sys_exit_capset"),
    },
    Hook {
        event: "ptrace",
        alts: sys!("ptrace_enter" => "sys_enter_ptrace", "ptrace_exit" => "sys_exit_ptrace"),
    },
    Hook {
        event: "bpf_load",
        alts: sys!("bpf_enter" => "sys_enter_bpf", "bpf_exit" => "sys_exit_bpf"),
    },
    Hook {
        event: "memfd",
        alts: sys!("memfd_enter" => "sys_enter_memfd_create", "memfd_exit" => "sys_exit_memfd_create"),
    },
    // Issue 17's events. Where the compat hook runs, its two programs already see every syscall:
    // they serve these events too (the dispatcher, bpf/syscalls.bpf.h), so a syscall none of
    // them wants costs two compares and nothing is attached per syscall. Without it
    // (--compat-syscalls=false) each event uses its own `syscalls:*` tracepoints.
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
            },
        ],
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
            },
        ],
    },
    // Opens, renames, deletes, mode changes... of watched paths (bpf/file.bpf.h): filtered in
    // the kernel against the watch lists. fchmodat2 is Linux 6.6+: older kernels use the same
    // tracepoints without it.
    Hook {
        event: "file",
        alts: &[
            DISPATCH_BTF,
            DISPATCH_RAW,
            Alt { progs: FILE_TPS },
            Alt {
                progs: FILE_TPS.split_at(FILE_TPS.len() - 1).0,
            },
        ],
    },
    // TCP connections' ends (bpf/conn.bpf.h): a second program on inet_sock_set_state, and
    // the owners of accepted connections noted at accept()'s return (by the dispatcher, else by
    // programs of their own on the accept tracepoints).
    Hook {
        event: "connection_close",
        alts: &[
            Alt {
                progs: &[CLOSE_BTF, DISPATCH_BTF.progs[0], DISPATCH_BTF.progs[1]],
            },
            Alt {
                progs: &[CLOSE_TP, DISPATCH_RAW.progs[0], DISPATCH_RAW.progs[1]],
            },
            Alt {
                progs: &[CLOSE_BTF, CLOSE_ACCEPT4, CLOSE_ACCEPT],
            },
            Alt {
                progs: &[CLOSE_TP, CLOSE_ACCEPT4, CLOSE_ACCEPT],
            },
        ],
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
            },
        ],
    },
    // Kernels without loadable modules (like the development machine's) have neither the
    // `module:module_load` tracepoint (the module's name) nor `syscalls:*_init_module`: there
    // the dispatcher alone still reports the attempts (they fail with ENOSYS).
    Hook {
        event: "module_load",
        alts: &[
            Alt {
                progs: &[DISPATCH_BTF.progs[0], DISPATCH_BTF.progs[1], MODULE_NAME],
            },
            Alt {
                progs: &[DISPATCH_RAW.progs[0], DISPATCH_RAW.progs[1], MODULE_NAME],
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
            },
            DISPATCH_BTF,
            DISPATCH_RAW,
        ],
    },
    // 32-bit syscalls (`int $0x80`...) skip every `syscalls:*` tracepoint above: these see
    // every syscall, leave at once unless it is a compat one, and report setuid, capset,
    // ptrace, bpf_load, memfd, connect and accept through the same BPF code as the native hooks.
    Hook {
        event: COMPAT,
        alts: &[
            Alt {
                progs: &[
                    ("compat_enter_btf", Via::TpBtf("sys_enter", 2)),
                    ("compat_exit_btf", Via::TpBtf("sys_exit", 2)),
                ],
            },
            Alt {
                progs: &[
                    ("compat_enter_raw", Via::RawTp("raw_syscalls", "sys_enter")),
                    ("compat_exit_raw", Via::RawTp("raw_syscalls", "sys_exit")),
                ],
            },
        ],
    },
];

/// The hook for 32-bit syscalls: only wanted where they can happen.
const COMPAT: &str = "compat";

/// The compat hook's programs as the dispatcher of other events (bpf/syscalls.bpf.h): usable
/// only where the compat hook itself is wanted (they run on every syscall).
const DISPATCH_BTF: Alt = Alt {
    progs: &[
        ("compat_enter_btf", Via::TpBtf("sys_enter", 2)),
        ("compat_exit_btf", Via::TpBtf("sys_exit", 2)),
    ],
};
const DISPATCH_RAW: Alt = Alt {
    progs: &[
        ("compat_enter_raw", Via::RawTp("raw_syscalls", "sys_enter")),
        ("compat_exit_raw", Via::RawTp("raw_syscalls", "sys_exit")),
    ],
};
/// The file event's own tracepoints (without the dispatcher); fchmodat2 (6.6+) last.
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
        "file_rename_exit",
        Via::Tracepoint("syscalls", "sys_exit_rename"),
    ),
    (
        "file_renameat_exit",
        Via::Tracepoint("syscalls", "sys_exit_renameat"),
    ),
    (
        "file_renameat2_exit",
        Via::Tracepoint("syscalls", "sys_exit_renameat2"),
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
        "file_unlinkat_exit",
        Via::Tracepoint("syscalls", "sys_exit_unlinkat"),
    ),
    (
        "file_chmod_exit",
        Via::Tracepoint("syscalls", "sys_exit_chmod"),
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
        "file_mkdir_exit",
        Via::Tracepoint("syscalls", "sys_exit_mkdir"),
    ),
    (
        "file_mkdirat_exit",
        Via::Tracepoint("syscalls", "sys_exit_mkdirat"),
    ),
    (
        "file_link_exit",
        Via::Tracepoint("syscalls", "sys_exit_link"),
    ),
    (
        "file_linkat_exit",
        Via::Tracepoint("syscalls", "sys_exit_linkat"),
    ),
    (
        "file_symlink_exit",
        Via::Tracepoint("syscalls", "sys_exit_symlink"),
    ),
    (
        "file_symlinkat_exit",
        Via::Tracepoint("syscalls", "sys_exit_symlinkat"),
    ),
    (
        "file_fchmodat2_exit",
        Via::Tracepoint("syscalls", "sys_exit_fchmodat2"),
    ),
];

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

/// Whether `via` is one of the dispatcher's raw syscall hooks.
fn is_dispatch(via: &Via) -> bool {
    matches!(via, Via::TpBtf(n, _) | Via::RawTp(_, n) if *n == "sys_enter" || *n == "sys_exit")
}

/// The events the chosen alternatives serve through the dispatcher (its `want_*` knobs).
fn dispatched(choice: &[Option<usize>]) -> Vec<&'static str> {
    HOOKS
        .iter()
        .zip(choice)
        .filter(|(h, _)| h.event != COMPAT)
        .filter_map(|(h, c)| c.map(|i| (h, &h.alts[i])))
        .filter(|(_, a)| a.progs.iter().any(|(_, v)| is_dispatch(v)))
        .map(|(h, _)| h.event)
        .collect()
}

/// Functions the kernel has only when it can run 32-bit syscalls (CONFIG_IA32_EMULATION on
/// x86_64): `do_fast_syscall_32` since 4.3, `ia32_sys_call` since 6.10.
const IA32_ENTRY_FUNCS: &[&str] = &["do_fast_syscall_32", "ia32_sys_call"];

/// Why the compat hook has nothing to watch on this kernel, if so.
fn compat_impossible(btf: Option<&libbpf_rs::btf::Btf<'_>>, cmdline: &str) -> Option<&'static str> {
    use libbpf_rs::btf::BtfType;
    let btf = btf?;
    if !IA32_ENTRY_FUNCS
        .iter()
        .any(|f| btf.type_by_name::<BtfType<'_>>(f).is_some())
    {
        return Some(
            "the kernel has no 32-bit syscall entry (built without CONFIG_IA32_EMULATION): \
             compat syscalls are not possible here",
        );
    }
    if ia32_disabled_on_cmdline(cmdline) {
        return Some(
            "the kernel was booted with ia32_emulation off: compat syscalls are not possible here",
        );
    }
    None
}

/// `ia32_emulation=<bool>` on the kernel command line, read as the kernel's kstrtobool does.
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
}

/// What happened to one event's hook at start-up.
#[derive(Debug, Clone)]
pub struct HookStatus {
    pub event: &'static str,
    /// The attached hook ("tp_btf/sched_process_exec"), or None.
    pub attached: Option<String>,
}

/// The loaded, attached sensor. Dropping it detaches everything.
pub struct Sensor {
    skel: SensorSkel<'static>,
    _links: Vec<Link>,
    pub hooks: Vec<HookStatus>,
}

/// libbpf's own messages (including the verifier log) go to `log` at debug level: quiet by
/// default, complete with `--log-level debug`.
fn libbpf_print(_level: PrintLevel, msg: String) {
    log::debug!(target: "libbpf", "{}", msg.trim_end());
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
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
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
            "the kernel has no BTF ({VMLINUX_BTF} is missing): the sensor needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y"
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
                    Some((
                        log::Level::Warn,
                        "turned off (--compat-syscalls=false): 32-bit (int $0x80) setuid, capset, \
                         ptrace, bpf, memfd_create, connect and accept are NOT reported",
                    ))
                } else {
                    None
                }
            }
            "file" if opts.watch_read.is_empty() && opts.watch_write.is_empty() => Some((
                log::Level::Info,
                "both watch lists are empty (--watch-read none, --watch-write none)",
            )),
            _ => None,
        })
        .collect()
}

/// Which alternative each hook will use, from what the kernel offers (`None`: nothing usable,
/// or not wanted: `skip`).
fn probe(
    btf: Option<&libbpf_rs::btf::Btf<'_>>,
    allow_btf: bool,
    skip: &[Skip],
) -> Vec<Option<usize>> {
    // The dispatcher runs only where the compat hook does.
    let dispatch_ok = HOOKS
        .iter()
        .zip(skip)
        .any(|(h, s)| h.event == COMPAT && s.is_none());
    let available = |via: &Via| match via {
        _ if is_dispatch(via) && !dispatch_ok => false,
        Via::TpBtf(name, args) => {
            allow_btf && btf.and_then(|b| tp_btf_args(b, name)) >= Some(*args)
        }
        Via::Tracepoint(cat, name) | Via::RawTp(cat, name) => Path::new(TRACEFS)
            .join("events")
            .join(cat)
            .join(name)
            .is_dir(),
    };
    HOOKS
        .iter()
        .zip(skip)
        .map(|(h, skip)| {
            if skip.is_some() {
                return None;
            }
            h.alts
                .iter()
                .position(|a| a.progs.iter().all(|(_, v)| available(v)))
        })
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
    // The fast path's first-component filter (bpf/file.bpf.h); none: every path is looked up.
    let entries = watch::entries(&opts.watch_read, &opts.watch_write);
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
    }
    Ok(open)
}

/// Puts the watch lists into the kernel's trie (before anything is attached).
fn fill_watch(skel: &SensorSkel<'static>, opts: &Options) -> Result<()> {
    let entries = watch::entries(&opts.watch_read, &opts.watch_write);
    if entries.len() > watch::MAX_ENTRIES {
        return Err(Error::config(format!(
            "the watch lists have {} prefixes after expanding `*`; at most {} fit in the kernel's \
             table: shorten --watch-read/--watch-write",
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
        "file: watching {} prefixes for reads, {} for changes",
        opts.watch_read.len(),
        opts.watch_write.len()
    );
    Ok(())
}

impl Sensor {
    /// Checks privileges, BTF and tracefs, loads the best available hooks and attaches them.
    pub fn start(opts: &Options) -> Result<Sensor> {
        Self::start_with(opts, true)
    }

    /// `allow_btf: false` uses the classic-tracepoint fallbacks only (also how they are tested).
    fn start_with(opts: &Options, allow_btf: bool) -> Result<Sensor> {
        preflight()?;
        libbpf_rs::set_print(Some((PrintLevel::Debug, libbpf_print)));
        let btf = libbpf_rs::Btf::from_vmlinux().ok();
        let skip = unneeded(opts, btf.as_ref());
        let (mut skel, choice) = match Self::load(opts, btf.as_ref(), allow_btf, &skip) {
            Ok(ok) => ok,
            Err(e) if !allow_btf => return Err(e),
            Err(e) => {
                // A tp_btf program can be refused even when its BTF is present (older verifiers):
                // retry with classic tracepoints only before giving up.
                log::debug!(
                    "loading with tp_btf hooks failed ({e}); retrying with tracepoints only"
                );
                Self::load(opts, btf.as_ref(), false, &skip)?
            }
        };
        fill_watch(&skel, opts)?;
        let mut links = Vec::new();
        let mut hooks = Vec::new();
        // Programs shared by several events (the dispatcher) are attached once.
        let mut attached_progs: Vec<&str> = Vec::new();
        for ((hook, alt), skip) in HOOKS.iter().zip(&choice).zip(&skip) {
            if let Some((level, why)) = skip {
                log::log!(*level, "sensor: {:<8} not attached: {why}", hook.event);
                continue;
            }
            let mut attached = None;
            if let Some(i) = alt {
                let alt = &hook.alts[*i];
                let mut these = Vec::new();
                let mut failed = None;
                for (name, _) in alt.progs {
                    if attached_progs.contains(name) {
                        continue;
                    }
                    let prog = skel
                        .object()
                        .progs_mut()
                        .find(|p| p.name() == *name)
                        .map(|p| p.attach());
                    match prog {
                        Some(Ok(link)) => these.push((*name, link)),
                        Some(Err(e)) => failed = Some(format!("{name}: {e}")),
                        None => failed = Some(format!("{name}: not in the object")),
                    }
                }
                match failed {
                    None => {
                        for (name, link) in these {
                            attached_progs.push(name);
                            links.push(link);
                        }
                        let vias: Vec<String> =
                            alt.progs.iter().map(|(_, v)| via_name(v)).collect();
                        let shown = if vias.len() > 2 {
                            format!("{} (+{} more)", vias[0], vias.len() - 1)
                        } else {
                            vias.join(", ")
                        };
                        log::info!("sensor: {:<8} attached via {shown}", hook.event);
                        attached = Some(shown);
                    }
                    Some(why) => log::warn!("sensor: {:<8} NOT attached: {why}", hook.event),
                }
            } else {
                log::warn!(
                    "sensor: {:<8} NOT attached: no usable hook on this kernel",
                    hook.event
                );
            }
            hooks.push(HookStatus {
                event: hook.event,
                attached,
            });
        }
        if hooks.iter().all(|h| h.attached.is_none()) {
            return Err(Error::runtime(
                "no BPF program could be attached (see the warnings above)",
            ));
        }
        // The skeleton keeps its own (empty) links; ours live in `links`.
        let _ = &mut skel;
        Ok(Sensor {
            skel,
            _links: links,
            hooks,
        })
    }

    fn load(
        opts: &Options,
        btf: Option<&libbpf_rs::btf::Btf<'_>>,
        allow_btf: bool,
        skip: &[Skip],
    ) -> Result<(SensorSkel<'static>, Vec<Option<usize>>)> {
        let choice = probe(btf, allow_btf, skip);
        let wanted: Vec<&str> = HOOKS
            .iter()
            .zip(&choice)
            .filter_map(|(h, c)| c.map(|i| &h.alts[i]))
            .flat_map(|a| a.progs.iter().map(|(n, _)| *n))
            .collect();
        let open = open(opts, &wanted, &dispatched(&choice))?;
        let skel = open.load().map_err(|e| {
            Error::runtime(format!(
                "the kernel refused to load the BPF programs ({e}); the verifier's log is shown with \
                 --log-level debug"
            ))
        })?;
        Ok((skel, choice))
    }

    /// The `events` ring buffer map, for a `RingBufferBuilder`.
    pub fn events_map(&self) -> &libbpf_rs::MapMut<'static> {
        &self.skel.maps.events
    }

    /// Failed ring-buffer reservations per record type, summed over CPUs.
    pub fn kernel_drops(&self) -> [u64; decode::LG_TYPE_MAX] {
        let mut out = [0u64; decode::LG_TYPE_MAX];
        for (i, slot) in out.iter_mut().enumerate() {
            let key = (i as u32).to_ne_bytes();
            if let Ok(Some(cpus)) = self.skel.maps.drops.lookup_percpu(&key, MapFlags::ANY) {
                *slot = cpus
                    .iter()
                    .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                    .map(u64::from_ne_bytes)
                    .sum();
            }
        }
        out
    }
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
    libbpf_rs::set_print(Some((PrintLevel::Debug, libbpf_print)));
    let mut all: Vec<&str> = HOOKS
        .iter()
        .flat_map(|h| h.alts.iter())
        .flat_map(|a| a.progs.iter().map(|(n, _)| *n))
        .collect();
    all.sort_unstable();
    all.dedup();
    // Every event's dispatcher code too, so that the verifier sees all of it.
    let events: Vec<&str> = HOOKS.iter().map(|h| h.event).collect();
    let open = open(opts, &all, &events)?;
    let skel = open
        .load()
        .map_err(|e| Error::runtime(format!("load failed: {e}")))?;
    Ok(skel.object().progs().count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::decode::{Record, decode};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Options for a sensor of the tests' own: a 1 MiB ring, nothing filtered, every hook.
    fn test_opts() -> Options {
        Options {
            ring_buffer_mb: 1,
            own_tgid: 0,
            wakeup_bytes: 0,
            compat_syscalls: true,
            watch_read: watch::resolve("default", watch::DEFAULT_READ),
            watch_write: watch::resolve("default", watch::DEFAULT_WRITE),
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
        for hook in HOOKS {
            if let Some(Via::TpBtf(name, want)) = hook.alts[0].progs.first().map(|(_, v)| *v) {
                let have = tp_btf_args(&btf, name);
                let none = vec![None; HOOKS.len()];
                let chosen = probe(Some(&btf), true, &none)
                    [HOOKS.iter().position(|h| h.event == hook.event).unwrap()];
                if have < Some(want) {
                    assert_ne!(chosen, Some(0), "{name}: {have:?} < {want}");
                }
            }
        }
    }

    /// Load-only smoke test: every program (tp_btf and tracepoint flavours) passes the verifier.
    #[test]
    fn root_every_bpf_program_loads() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads BPF programs: run the tests as root (sudo scripts/test)"
        );
        let n = load_all_for_test(&test_opts()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, programs_in_object().len());
    }

    /// The compat hook is skipped, with a reason, only where 32-bit syscalls cannot happen.
    #[test]
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
        let btf = libbpf_rs::btf::Btf::from_vmlinux()
            .expect("the kernel has BTF (/sys/kernel/btf/vmlinux), as every supported kernel does");
        let has_ia32 = std::fs::read_to_string("/proc/kallsyms")
            .is_ok_and(|k| k.lines().any(|l| l.ends_with(" do_fast_syscall_32")));
        let why = compat_impossible(Some(&btf), "");
        assert_eq!(why.is_none(), has_ia32, "{why:?}");
        let idx = HOOKS.iter().position(|h| h.event == COMPAT).unwrap();
        if has_ia32 {
            let why = compat_impossible(Some(&btf), "ia32_emulation=0").unwrap_or_default();
            assert!(why.contains("ia32_emulation off"), "{why}");
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
        assert_eq!(probe(Some(&btf), true, &skip)[idx], None);
        assert_eq!(
            probe(Some(&btf), true, &vec![None; HOOKS.len()])[idx],
            Some(0)
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
    #[test]
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
            // follow it.
            let def = HOOKS.iter().find(|d| d.event == h.event).expect("hook");
            let dispatchable = def
                .alts
                .iter()
                .any(|a| a.progs.first().is_some_and(|(_, v)| is_dispatch(v)));
            let want = if h.event == COMPAT || dispatchable {
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
