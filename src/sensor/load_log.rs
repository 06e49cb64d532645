//! libbpf's messages while the sensor loads: every one goes to `log` at debug level, and during
//! a load they are also kept (per thread) so that a refused load can be pinned on the one
//! program the kernel refused, with the kernel's reason in one line.

use std::cell::RefCell;

use libbpf_rs::PrintLevel;

thread_local! {
    /// libbpf's messages since [`capture`] began on this thread, while it runs.
    static CAPTURED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// libbpf's print callback: quiet by default, complete with `--log-level debug`.
pub fn print(_level: PrintLevel, msg: String) {
    log::debug!(target: "libbpf", "{}", msg.trim_end());
    // Only what `refusal` reads is kept: a load prints thousands of lines (11,000 on 6.18),
    // and keeping them all raised the agent's peak memory by 2.5 MiB.
    if !telling(&msg) {
        return;
    }
    CAPTURED.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push(msg);
        }
    });
}

/// A message [`refusal`] may use: a program's failure, error or verifier log.
fn telling(msg: &str) -> bool {
    msg.contains("prog '")
        && (msg.contains("failed")
            || msg.contains("error")
            || msg.contains("-- BEGIN PROG LOAD LOG"))
}

/// Runs `f` (which loads an object on this thread) and returns its result with what libbpf
/// said meanwhile.
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let out = f();
    let msgs = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (out, msgs)
}

/// The program a failed load failed on, and the kernel's (or libbpf's) reason in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub prog: String,
    pub reason: String,
}

/// Lines of the verifier's log that say nothing about why (statistics).
fn is_statistics(line: &str) -> bool {
    line.starts_with("processed ")
        || line.starts_with("verification time")
        || line.starts_with("stack depth")
        || line.starts_with("-- END PROG LOAD LOG")
}

/// Finds the first program libbpf reports as failed in `msgs` (`prog 'NAME': failed to load`,
/// or any other `prog 'NAME': ...` failure such as a relocation) and the reason: the last
/// telling line of that program's verifier log, else libbpf's own words.
pub fn refusal(msgs: &[String]) -> Option<Refusal> {
    let named = |m: &str| -> Option<(String, String)> {
        let m = m.trim_start();
        let rest = m
            .strip_prefix("libbpf: ")
            .unwrap_or(m)
            .strip_prefix("prog '")?;
        let (name, what) = rest.split_once("': ")?;
        Some((name.to_string(), what.trim().to_string()))
    };
    let (prog, said) = msgs.iter().find_map(|m| {
        let (name, what) = named(m)?;
        let failed = what.contains("failed") || what.contains("error");
        (failed && !what.starts_with("-- BEGIN")).then_some((name, what))
    })?;
    let verifier = msgs.iter().find_map(|m| {
        let (name, what) = named(m)?;
        if name != prog {
            return None;
        }
        let log = what.strip_prefix("-- BEGIN PROG LOAD LOG --")?;
        log.lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !is_statistics(l))
            .map(str::to_string)
    });
    let mut reason = verifier.unwrap_or(said);
    if reason.len() > 240 {
        let mut cut = 240;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("...");
    }
    Some(Refusal { prog, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// What libbpf 1.7 printed when Debian's 6.1 kernel refused the sensor (kernel_cap_t's old
    /// shape), and when 5.10 refused a program naming a bpf_loop() callback.
    #[test]
    fn the_refused_program_and_the_kernels_reason_are_found() {
        let m = msgs(&[
            "libbpf: prog 'fork_tp': skipped loading\n",
            "libbpf: map 'sensor_b.data': created successfully, fd=13\n",
            "libbpf: prog 'setuid_enter': BPF program load failed: -EINVAL\n",
            "libbpf: prog 'setuid_enter': -- BEGIN PROG LOAD LOG --\nreg type unsupported for arg#0 \
             function setuid_enter#714\n0: R1=ctx(off=0,imm=0) R10=fp0\n40: <invalid CO-RE \
             relocation>\nfailed to resolve CO-RE relocation <byte_off> [431] struct \
             cred.cap_effective.val (0:12:0 @ offset 64)\nprocessed 33 insns (limit 1000000) \
             max_states_per_insn 0\n-- END PROG LOAD LOG --\n",
            "libbpf: prog 'setuid_enter': failed to load: -22\n",
            "failed to load object 'sensor_bpf'\n",
        ]);
        let r = refusal(&m).expect("a refusal");
        assert_eq!(r.prog, "setuid_enter");
        assert!(
            r.reason
                .starts_with("failed to resolve CO-RE relocation <byte_off> [431] struct cred"),
            "{}",
            r.reason
        );
        let m = msgs(&[
            "prog 'exec_btf': BPF program load failed: -EINVAL\n",
            "prog 'exec_btf': -- BEGIN PROG LOAD LOG --\nnumber of funcs in func_info doesn't \
             match number of subprogs\nprocessed 0 insns (limit 1000000)\n-- END PROG LOAD LOG --\n",
            "prog 'exec_btf': failed to load: -22\n",
        ]);
        let r = refusal(&m).expect("a refusal");
        assert_eq!(r.prog, "exec_btf");
        assert_eq!(
            r.reason,
            "number of funcs in func_info doesn't match number of subprogs"
        );
    }

    #[test]
    fn without_a_verifier_log_libbpfs_words_are_the_reason() {
        let m = msgs(&[
            "prog 'exit_btf': failed to find kernel BTF type ID of 'sched_process_exit': -3\n",
            "prog 'exit_btf': failed to prepare load attributes: -3\n",
            "prog 'exit_btf': failed to load: -3\n",
        ]);
        let r = refusal(&m).expect("a refusal");
        assert_eq!(r.prog, "exit_btf");
        assert!(r.reason.contains("sched_process_exit"), "{}", r.reason);
        assert_eq!(
            refusal(&msgs(&["failed to create map 'events': -1\n"])),
            None
        );
    }

    #[test]
    fn capture_keeps_this_threads_messages_only_while_it_runs() {
        let failed = |when: &str| format!("libbpf: prog '{when}': failed to load: -13\n");
        print(PrintLevel::Debug, failed("before"));
        let ((), got) = capture(|| {
            print(PrintLevel::Warn, failed("during"));
            print(PrintLevel::Debug, "libbpf: sec 'x': found program\n".into());
            let elsewhere = failed("elsewhere");
            std::thread::spawn(move || print(PrintLevel::Warn, elsewhere))
                .join()
                .expect("join");
        });
        // This thread's telling messages, not the chatter (a load prints thousands of lines).
        assert_eq!(got, vec![failed("during")]);
        let ((), again) = capture(|| ());
        assert!(again.is_empty());
    }
}
