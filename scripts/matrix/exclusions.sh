# scripts/matrix/exclusions.sh: the kernel matrix's checks of the in-kernel exclusions
# (`--exclude exe:PATH,uid:N`; bpf/sensor.bpf.c `exclusion()`), sourced (POSIX sh, busybox ash
# in the guests) by checks.sh (the x86_64 rows and the host's) and by the arm64 guest's init
# (scripts/kernel-matrix-arm64), so every row's verifier loads the exclusion code and every row
# sees it work. Three steps:
#   excl_setup LGT WORK   before the agent starts: copies lgt to WORK/lgx (the excluded
#                         executable: another inode, so lgt itself and the storm stay watched)
#                         and sets EXCL_ARGS, the arguments `watch` needs (the exclusions, and
#                         a stats event at the end: --stats-interval)
#   excl_run              while it watches: the excluded runs and their controls
#   excl_checks EV ERR    after it stopped (EV its stdout, ERR its stderr): LG-CHECK lines
# What is run (TAG is unique per run; every run's exit status is checked, so a run that did
# not happen cannot pass as a filtered one):
#   - lgx (excluded) EXCL_RUNS times, and lgt (the control) as often: `exit 3 TAG-exe|ctl`;
#   - a tree under lgx: `lgx spawn lgt spawn lgt exit 4 TAG-tree` (lgx forks a child that
#     executes lgt, not excluded, which forks one more): every exec, fork and exit of it stays
#     out (the mark is inherited at fork and kept across exec); the same tree under lgt is the
#     control;
#   - `lgt asuid EXCL_UID lgt exit 5 TAG-uid` EXCL_RUNS times: setuid to the excluded uid, then
#     an exec and an exit under it; `lgt asuid EXCL_CTL_UID ...` is the control.
# The uids are no other check's (setuid uses 65534); nothing else runs lgx.
EXCL_UID=4242
EXCL_CTL_UID=4243
EXCL_RUNS=5

excl_setup() { # LGT WORK
	EXCL_LGT=$1 EXCL_WORK=$2 EXCL_EXE=$2/lgx EXCL_TAG=lg-excl-$$
	cp "$EXCL_LGT" "$EXCL_EXE" && chmod 755 "$EXCL_EXE"
	EXCL_ARGS="--exclude uid:$EXCL_UID,exe:$EXCL_EXE --stats-interval 86400"
}

# The child pids a `lgt spawn` chain printed (child=PID lines), space-separated.
excl_children() { sed -n 's/^child=//p' | tr '\n' ' '; }

excl_run() {
	x_rcs="" c_rcs="" c_pids="" u_rcs="" u_pids=""
	i=0
	while [ $i -lt $EXCL_RUNS ]; do
		"$EXCL_EXE" exit 3 "$EXCL_TAG-exe"
		x_rcs="$x_rcs $?"
		"$EXCL_LGT" exit 3 "$EXCL_TAG-ctl" &
		p=$!
		wait $p
		c_rcs="$c_rcs $?" c_pids="$c_pids $p"
		"$EXCL_LGT" asuid $EXCL_UID "$EXCL_LGT" exit 5 "$EXCL_TAG-uid" &
		p=$!
		wait $p
		u_rcs="$u_rcs $?" u_pids="$u_pids $p"
		i=$((i + 1))
	done
	x_tree=$("$EXCL_EXE" spawn "$EXCL_LGT" spawn "$EXCL_LGT" exit 4 "$EXCL_TAG-tree")
	x_tree_rc=$?
	c_tree=$("$EXCL_LGT" spawn "$EXCL_LGT" spawn "$EXCL_LGT" exit 4 "$EXCL_TAG-ctltree")
	c_tree_rc=$?
	x_tree=$(echo "$x_tree" | excl_children) c_tree=$(echo "$c_tree" | excl_children)
	"$EXCL_LGT" asuid $EXCL_CTL_UID "$EXCL_LGT" exit 5 "$EXCL_TAG-uidctl" &
	uc_pid=$!
	wait $uc_pid
	uc_rc=$?
}

# excl_n EV PATTERN...: how many lines of EV contain every (fixed-string) pattern.
excl_n() {
	f=$1
	shift
	for p in "$@"; do
		grep -F -e "$p" "$f" > "$EXCL_WORK/excl.out"
		mv "$EXCL_WORK/excl.out" "$EXCL_WORK/excl.in"
		f=$EXCL_WORK/excl.in
	done
	wc -l < "$f" | tr -d ' '
}

# excl_all_rc WANT RCS: every exit status in RCS is WANT.
excl_all_rc() {
	for r in $2; do [ "$r" = "$1" ] || return 1; done
	return 0
}

excl_check() { # TYPE CHECK OK(0|1) DETAIL...
	t=$1 c=$2 r=fail
	[ "$3" = 1 ] && r=pass
	shift 3
	echo "LG-CHECK $t $c $r $*"
}

excl_checks() { # EV ERR
	src=$1 err=$2
	# The lines any check below can count, in one pass (the storm's thousands are not among
	# them; a grep per count over the whole output cost seconds under TCG).
	set -- -e "$EXCL_TAG" -e "$EXCL_EXE" -e '"type":"stats"' -e "\"real_user\":{\"id\":\"$EXCL_UID\"}"
	for p in $x_tree $c_pids $c_tree $u_pids $uc_pid; do
		set -- "$@" -e "\"pid\":$p,"
	done
	ev=$EXCL_WORK/excl.ev
	grep -F "$@" "$src" > "$ev"
	# Execs: none of the excluded program's, its tree's or the excluded uid's; all controls'.
	xe=$(excl_n "$ev" '"type":"exec"' "\"$EXCL_TAG-exe\"]")
	xt=$(excl_n "$ev" "\"$EXCL_TAG-tree\"]")
	xa=$(excl_n "$ev" "\"executable\":\"$EXCL_EXE\"")
	ce=$(excl_n "$ev" '"type":"exec"' "\"$EXCL_TAG-ctl\"]")
	ct=$(excl_n "$ev" '"type":"exec"' "\"$EXCL_TAG-ctltree\"]")
	ok=0
	if excl_all_rc 3 "$x_rcs" && [ "$x_tree_rc" = 4 ] && [ "$xe$xt$xa" = 000 ] &&
		[ "$ce" = "$EXCL_RUNS" ] && [ "$ct" = 3 ]; then ok=1; fi
	excl_check exec excl-exe-exec $ok "excluded $EXCL_EXE (exit$x_rcs; tree exit $x_tree_rc):" \
		"$xe exec events, $xt of its tree, $xa lines naming it; control lgt: $ce of" \
		"$EXCL_RUNS exec events, $ct of 3 of its tree"
	# Exits: none of the excluded runs (their executable) or of the tree's children.
	xx=$(excl_n "$ev" '"type":"exit"' "\"executable\":\"$EXCL_EXE\"")
	for p in $x_tree; do
		xx=$((xx + $(excl_n "$ev" '"type":"exit"' "\"process\":{\"pid\":$p,")))
	done
	cx=0 cn=0
	for p in $c_pids; do
		cn=$((cn + 1))
		cx=$((cx + $(excl_n "$ev" '"type":"exit"' "\"process\":{\"pid\":$p," '"exit_code":3,')))
	done
	for p in $c_tree; do
		cn=$((cn + 1))
		cx=$((cx + $(excl_n "$ev" '"type":"exit"' "\"process\":{\"pid\":$p," '"exit_code":4,')))
	done
	ok=0
	if [ "$xx" = 0 ] && [ "$cx" = "$cn" ] && [ -n "$x_tree" ]; then ok=1; fi
	excl_check exit excl-exe-exit $ok "excluded runs and tree children ($x_tree): $xx exit" \
		"events; control: $cx of $cn"
	# Forks made inside the excluded tree (the fork event's process is the new child).
	xf=0 cf=0 cn=0
	for p in $x_tree; do
		xf=$((xf + $(excl_n "$ev" '"type":"fork"' "\"process\":{\"pid\":$p,")))
	done
	for p in $c_tree; do
		cn=$((cn + 1))
		cf=$((cf + $(excl_n "$ev" '"type":"fork"' "\"process\":{\"pid\":$p,")))
	done
	ok=0
	if [ "$xf" = 0 ] && [ "$cf" = "$cn" ] && [ "$cn" = 2 ]; then ok=1; fi
	excl_check fork excl-tree-fork $ok "forks inside the excluded tree ($x_tree): $xf events;" \
		"control tree ($c_tree): $cf of $cn"
	# uid: nothing of a task whose real uid is the excluded one; the control uid's are seen.
	xu=$(excl_n "$ev" "\"real_user\":{\"id\":\"$EXCL_UID\"}")
	xw=$(excl_n "$ev" "\"args\":[\"$EXCL_LGT\",\"exit\",\"5\",\"$EXCL_TAG-uid\"]")
	xx=0
	for p in $u_pids; do
		xx=$((xx + $(excl_n "$ev" '"type":"exit"' "\"process\":{\"pid\":$p,")))
	done
	cu=$(excl_n "$ev" '"type":"exec"' "\"$EXCL_TAG-uidctl\"]" "\"real_user\":{\"id\":\"$EXCL_CTL_UID\"}")
	cx=$(excl_n "$ev" '"type":"exit"' "\"process\":{\"pid\":$uc_pid," '"exit_code":5,')
	ok=0
	if excl_all_rc 5 "$u_rcs" && [ "$xu$xw$xx" = 000 ] && [ "$uc_rc" = 5 ] &&
		[ "$cu" = 1 ] && [ "$cx" = 1 ]; then ok=1; fi
	excl_check exec excl-uid $ok "uid $EXCL_UID (exit$u_rcs): $xu events of it, $xw execs," \
		"$xx exits; control uid $EXCL_CTL_UID (exit $uc_rc): $cu exec, $cx exit"
	# The counts: the final stats event's per-filter counters, and the stats line's total.
	st=$(grep -F '"type":"stats"' "$ev" | tail -1)
	fe=$(echo "$st" | sed -n 's/.*"filtered_kernel_by_filter":{[^}]*"exe":\([0-9]*\).*/\1/p')
	fu=$(echo "$st" | sed -n 's/.*"filtered_kernel_by_filter":{[^}]*"uid":\([0-9]*\).*/\1/p')
	fc=$(echo "$st" | sed -n 's/.*"filtered_kernel_by_filter":{[^}]*"cgroup":\([0-9]*\).*/\1/p')
	ft=$(grep -m1 'final' "$err" | sed -n 's/.* filtered_kernel=\([0-9]*\).*/\1/p')
	# At least: per excluded run an exec and an exit; the tree's 3 execs, 2 forks, 3 exits.
	we=$((2 * EXCL_RUNS + 8)) wu=$((2 * EXCL_RUNS))
	ok=0
	if [ -n "$fe" ] && [ -n "$fu" ] && [ -n "$fc" ] && [ -n "$ft" ] && [ "$fe" -ge $we ] &&
		[ "$fu" -ge $wu ] && [ "$fc" = 0 ] && [ "$ft" = $((fe + fu + fc)) ]; then ok=1; fi
	excl_check - excl-counted $ok "stats.filtered_kernel_by_filter exe=${fe:-?} (at least $we)" \
		"uid=${fu:-?} (at least $wu) cgroup=${fc:-?}; final line filtered_kernel=${ft:-?}"
}
