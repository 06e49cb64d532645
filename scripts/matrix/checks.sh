#!/bin/sh
# scripts/matrix/checks.sh: the kernel matrix's checks, run inside each booted kernel by the
# guest's init (and on the host itself for the host's row). POSIX sh (busybox ash in the guest).
# Starts `watch` with in-kernel exclusions (exclusions.sh: an executable and a uid, so every
# row's verifier loads the exclusion code), makes one event of every type with lgt (and
# compat32 where there is one), runs the excluded programs and their controls, runs an exec
# storm (not excluded), stops the agent, and prints for scripts/kernel-matrix to judge:
#   LG-STATES <type>=<active|reduced|absent> ...   what the agent's start line says
#   LG-CHECK <type> <check> <pass|fail> <detail>   one per check; <type> is the event type
#                                                  the check needs (it must pass where active)
#   LG-AGENT <line>                                the agent's stderr (warnings, start line)
#   LG-DONE                                        the end (missing: the guest died)
# Environment: LG_AGENT, LG_LGT (paths), LG_COMPAT32 (optional), LG_WORK (a scratch dir),
# LG_STORM (execs in the storm, default 2000), LG_LOG_LEVEL (the agent's, default info).
set -u
AGENT=${LG_AGENT:?} LGT=${LG_LGT:?} WORK=${LG_WORK:?} STORM=${LG_STORM:-2000}
COMPAT32=${LG_COMPAT32:-}
EV=$WORK/events.json ERR=$WORK/agent.err
rm -f "$EV" "$ERR"
# shellcheck source=scripts/matrix/exclusions.sh
. "$(dirname "$0")/exclusions.sh"

check() { echo "LG-CHECK $1 $2 $3 $4"; }
# has PATTERN...: some line of the events matches every (fixed-string) pattern.
has() {
	f=$EV
	for p in "$@"; do
		grep -F -e "$p" "$f" > "$WORK/has.$$" || { rm -f "$WORK/has.$$"; return 1; }
		mv "$WORK/has.$$" "$WORK/has.in"
		f=$WORK/has.in
	done
	return 0
}
seen() { # seen TYPE CHECK DETAIL PATTERN...
	t=$1 c=$2 d=$3
	shift 3
	if has "$@"; then
		check "$t" "$c" pass "$d"
	else
		check "$t" "$c" fail "$d"
		# What came closest: events matching the last pattern (the most specific one).
		eval "last=\${$#}"
		grep -F -e "$last" "$EV" | head -3 | cut -c1-700 | sed 's/^/LG-NEAR /'
	fi
}

# A credential file for the file check (the guest's /etc has none).
[ -e /etc/shadow ] || { mkdir -p /etc; echo 'root:*:1::::::' > /etc/shadow; chmod 600 /etc/shadow; }
mkdir -p "$WORK/mnt"
excl_setup "$LGT" "$WORK"
# shellcheck disable=SC2086 # EXCL_ARGS: several words
mkdir -p "$WORK/lgsock"
"$AGENT" watch --log-level "${LG_LOG_LEVEL:-info}" $EXCL_ARGS --watch-connect "default,$WORK/lgsock/" \
	> "$EV" 2> "$ERR" &
agent=$!
# Ready when the start line is out; give up when the agent exits or after 300 s (TCG is slow).
i=0
while ! grep -q 'watching' "$ERR" 2>/dev/null; do
	if ! kill -0 "$agent" 2>/dev/null || [ $i -ge 3000 ]; then
		break
	fi
	sleep 0.1
	i=$((i + 1))
done
echo "LG-READY $((i / 10)).$((i % 10))s"
if ! grep -q 'watching' "$ERR"; then
	sed 's/^/LG-AGENT /' "$ERR"
	wait "$agent"
	echo "LG-AGENT-EXIT $?"
	echo "LG-DONE"
	exit 0
fi
# The start line: `watching: exec=active exit=reduced ...`.
echo "LG-STATES $(grep -m1 'watching' "$ERR" | grep -o '[a-z_0-9]*=\(active\|reduced\|absent\)' | tr '\n' ' ')"

# Every event of the checks below, each with what identifies it.
word=lg-argv-$$
"$LGT" exit 7 "$word" &
exec_pid=$!
wait $exec_pid
fork_child=$("$LGT" fork | sed -n 's/^child=//p')
tcp_port=$("$LGT" tcp | sed -n 's/^port=//p')
"$LGT" setuid &
setuid_pid=$!
wait $setuid_pid
"$LGT" capset &
capset_pid=$!
wait $capset_pid
ptrace_target=$("$LGT" ptrace | sed -n 's/^target=//p')
"$LGT" bpf > /dev/null
"$LGT" memfd
ns_pid=$("$LGT" ns | sed -n 's/^pid=//p')
mount_pid=$("$LGT" mount "$WORK/mnt" | sed -n 's/^pid=//p')
module_pid=$("$LGT" module | sed -n 's/^pid=//p')
dns_pid=$("$LGT" dns | sed -n 's/^pid=//p')
uconnect_pid=$("$LGT" uconnect "$WORK/lgsock/api.sock" | sed -n 's/^pid=//p')
"$LGT" exit 0 < /etc/shadow &
shadow_pid=$!
wait $shadow_pid
if [ -n "$COMPAT32" ]; then
	"$COMPAT32" memfd lg-compat-$$ > /dev/null
fi
excl_run
t0=$(cut -d' ' -f1 /proc/uptime)
"$LGT" storm "$STORM" lg-storm-$$ > "$WORK/storm.out"
t1=$(cut -d' ' -f1 /proc/uptime)
echo "LG-STORM $(cat "$WORK/storm.out") in $(awk "BEGIN{print $t1 - $t0}")s"
sleep 1
kill -INT $agent
wait $agent
echo "LG-AGENT-EXIT $?"
sed 's/^/LG-AGENT /' "$ERR"

seen exec exec-argv "$LGT (path walked) argv [$LGT exit 7 $word]" '"type":"exec"' \
	"\"pid\":$exec_pid," "\"executable\":\"$LGT\"," "\"args\":[\"$LGT\",\"exit\",\"7\",\"$word\"]"
seen exit exit-code "pid $exec_pid exit 7" '"type":"exit"' "\"process\":{\"pid\":$exec_pid," \
	'"exit_code":7,'
seen fork fork "child ${fork_child:-?}" '"type":"fork"' "\"process\":{\"pid\":${fork_child:-x},"
seen connect connect "127.0.0.1:${tcp_port:-?}" '"type":"connect"' \
	"\"destination\":{\"ip\":\"127.0.0.1\",\"port\":${tcp_port:-x}}"
seen accept accept "127.0.0.1:${tcp_port:-?}" '"type":"accept"' \
	"\"destination\":{\"ip\":\"127.0.0.1\",\"port\":${tcp_port:-x}}"
seen setuid setuid "pid $setuid_pid uid 0 -> 65534" '"type":"setuid"' \
	"\"process\":{\"pid\":$setuid_pid," '"new":{"uid":65534,'
seen capset capset "pid $capset_pid" '"type":"capset"' "\"process\":{\"pid\":$capset_pid,"
seen ptrace ptrace-attach "target ${ptrace_target:-?}" '"type":"ptrace"' '"request":"attach"' \
	"\"target\":{\"pid\":${ptrace_target:-x}"
seen bpf_load bpf-prog-load "prog lgt_prog" '"type":"bpf_load"' '"prog_name":"lgt_prog"'
seen memfd memfd-create "memfd lgt_memfd" '"type":"memfd"' '"name":"lgt_memfd"'
seen exec memfd-exec "fileless exec of memfd:lgt_memfd" '"type":"exec"' '"fileless":true' \
	'"exit","0","fileless"]'
seen namespace unshare "pid ${ns_pid:-?} unshare(CLONE_NEWUTS)" '"type":"namespace"' \
	"\"pid\":${ns_pid:-x}," '"action":"unshare"'
seen mount mount-tmpfs "pid ${mount_pid:-?} tmpfs lgt-src" '"type":"mount"' \
	"\"pid\":${mount_pid:-x}," '"source":"lgt-src"' '"fs_type":"tmpfs"'
seen module_load finit-module "pid ${module_pid:-?} finit_module attempt" '"type":"module_load"' \
	"\"pid\":${module_pid:-x}," '"action":"finit_module"'
seen dns dns-question "pid ${dns_pid:-?} A lgt-probe.example" '"type":"dns"' \
	"\"pid\":${dns_pid:-x}," 'lgt-probe.example'
seen file shadow-read "pid $shadow_pid opens /etc/shadow (the shell's redirection)" '"type":"file"' \
	'"path":"/etc/shadow"' '"action":"open"'
seen file unix-connect "pid ${uconnect_pid:-?} connects to $WORK/lgsock/api.sock by a relative name" \
	'"type":"file"' "\"pid\":${uconnect_pid:-x}," '"action":"connect"' "\"path\":\"$WORK/lgsock/api.sock\""
seen connection_close tcp-close "127.0.0.1:${tcp_port:-?} ends" '"type":"connection_close"' \
	"\"port\":${tcp_port:-x},"
if [ -n "$COMPAT32" ]; then
	seen compat int80-memfd "int \$0x80 memfd_create lg-compat-$$" '"type":"memfd"' \
		"\"name\":\"lg-compat-$$\""
fi
n=$(grep -F '"type":"exec"' "$EV" | grep -c -F "\"exit\",\"0\",\"lg-storm-$$\"]")
if [ "$n" -eq "$STORM" ]; then r=pass; else r=fail; fi
check exec storm $r "$n of $STORM execs delivered"
final=$(grep -m1 'final' "$ERR")
if echo "$final" | grep -q 'dropped_kernel=0 dropped_user=0'; then r=pass; else r=fail; fi
check - no-drops $r "$(echo "$final" | grep -o 'dropped_kernel=[0-9]* dropped_user=[0-9]*')"
excl_checks "$EV" "$ERR"
echo "LG-DONE"
