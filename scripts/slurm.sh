#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, as root (docs/slurm.md): bash scripts/slurm.sh
# start|stop|status. Needs the packages scripts/provision.sh installs (slurm-wlm, slurmdbd,
# munge, mariadb-server). `start` is idempotent: it writes the configs once, starts only the
# daemons that are down and waits until the node takes jobs. `stop` stops, by pid, only the
# daemons that `start` started (a MariaDB or munged that was already running stays).
#
# Accounting (slurmdbd on MariaDB) is part of it: submitit learns a job's end from `sacct`, and a
# job that ends without writing its result (scancel, time limit, SIGKILL) is waited for forever
# when sacct fails.
set -euo pipefail

HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
STATE=/run/pipeline-slurm # pid files of the daemons this script started
LOGS=/var/log/pipeline-slurm
MARK="# Written by the pipeline's scripts/slurm.sh: a one-node cluster on $HOST."
SOCKET=/run/mysqld/mysqld.sock
# SLURM 22.05 binds each daemon's port (and srun's) to the address gethostname() resolves to when
# CommunicationParameters has NoCtldInAddrAny (slurmctld) and NoInAddrAny (the others), to
# 0.0.0.0 without them; SlurmctldHost's "(address)", NodeAddr and DbdAddr do not change the bind.
# So the daemons listen on loopback only, as docs/slurm.md says, where this host's name resolves
# to a loopback address (a "127.0.0.1 <host>" line in /etc/hosts); the addresses the daemons
# connect to are that same one.
ADDR=$(getent ahostsv4 "$(hostname)" | awk '{print $1; exit}' || true)
PORTS="6817 6818 6819" # slurmctld, slurmd, slurmdbd: SLURM's defaults, which the configs keep

say() { echo "slurm: $*"; }
die() {
	echo "slurm: $*" >&2
	exit 1
}
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds.
wait_for() {
	local seconds=$1 what=$2
	shift 2
	for ((i = 0; i < seconds * 5; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	die "$what did not come up within ${seconds}s (logs: $LOGS)"
}

# write_conf FILE MODE: FILE from stdin, unless someone else's FILE is there.
write_conf() {
	if [[ -e $1 ]] && ! grep -qxF "$MARK" "$1"; then
		die "$1 exists and was not written by this script: not overwriting it"
	fi
	install -m "$2" /dev/stdin "$1"
}

configure() {
	mkdir -p /etc/slurm "$STATE" "$LOGS" /var/spool/slurmctld /var/spool/slurmd
	# The node as slurmd sees it (CPUs, sockets, cores, threads, memory in MB).
	local node
	node=$(slurmd -C | head -n 1)
	write_conf "$CONF" 644 <<-EOF
		$MARK
		ClusterName=local
		# Every daemon and srun listen on $ADDR only (see ADDR in scripts/slurm.sh).
		SlurmctldHost=$HOST($ADDR)
		CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
		SlurmUser=root
		AuthType=auth/munge
		StateSaveLocation=/var/spool/slurmctld
		SlurmdSpoolDir=/var/spool/slurmd
		SlurmctldPidFile=$STATE/slurmctld.pid
		SlurmdPidFile=$STATE/slurmd.pid
		SlurmctldLogFile=$LOGS/slurmctld.log
		SlurmdLogFile=$LOGS/slurmd.log
		# No cgroups in containers: processes are tracked by parent pid, tasks not confined.
		ProctrackType=proctrack/linuxproc
		TaskPlugin=task/none
		MpiDefault=none
		ReturnToService=2
		SchedulerType=sched/backfill
		SelectType=select/cons_tres
		SelectTypeParameters=CR_Core
		# scancel: SIGTERM, then SIGKILL after KillWait seconds (a stopping run needs a few).
		KillWait=30
		JobAcctGatherType=jobacct_gather/linux
		AccountingStorageType=accounting_storage/slurmdbd
		AccountingStorageHost=$ADDR
		$node NodeAddr=$ADDR
		PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
	EOF
	local password
	password=$(sed -n 's/^StoragePass=//p' "$DBD_CONF" 2>/dev/null || true)
	[[ -n $password ]] || password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
	write_conf "$DBD_CONF" 600 <<-EOF
		$MARK
		DbdHost=$HOST
		DbdAddr=$ADDR
		CommunicationParameters=NoInAddrAny
		SlurmUser=root
		PidFile=$STATE/slurmdbd.pid
		LogFile=$LOGS/slurmdbd.log
		StorageType=accounting_storage/mysql
		StorageHost=localhost
		StorageUser=slurm
		StoragePass=$password
		StorageLoc=slurm_acct_db
	EOF
	DB_PASSWORD=$password
}

start_munge() {
	if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
		say "munged: already running"
		return
	fi
	[[ -s /etc/munge/munge.key ]] || mungekey -c -k /etc/munge/munge.key
	chown munge:munge /etc/munge/munge.key
	chmod 400 /etc/munge/munge.key
	mkdir -p /run/munge
	chown munge:munge /run/munge
	su -s /bin/sh munge -c /usr/sbin/munged
	wait_for 20 munged sh -c 'munge -n | unmunge'
	cp /run/munge/munged.pid "$STATE/munged.pid"
	say "munged: started"
}

start_mariadb() {
	if mariadb-admin --socket="$SOCKET" ping >/dev/null 2>&1; then
		say "MariaDB: already running"
	else
		mkdir -p /run/mysqld
		chown mysql:mysql /run/mysqld
		# Its Unix socket only: slurmdbd on this host is its one client.
		setsid mariadbd --user=mysql --socket="$SOCKET" --pid-file=/run/mysqld/mysqld.pid \
			--skip-networking >>"$LOGS/mariadb.log" 2>&1 </dev/null &
		wait_for 60 MariaDB mariadb-admin --socket="$SOCKET" ping
		cp /run/mysqld/mysqld.pid "$STATE/mariadb.pid"
		say "MariaDB: started"
	fi
	# root connects by its Unix socket (Debian's default); slurmdbd has its own user.
	mariadb --socket="$SOCKET" <<-EOF
		CREATE DATABASE IF NOT EXISTS slurm_acct_db;
		CREATE USER IF NOT EXISTS 'slurm'@'localhost';
		ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
		GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
	EOF
}

# start_daemon NAME READY...: start NAME unless its pid file names a live process.
start_daemon() {
	local name=$1
	shift
	if alive "$STATE/$name.pid"; then
		say "$name: already running"
		return
	fi
	"/usr/sbin/$name"
	wait_for 60 "$name" "$@"
	say "$name: started"
}

# listeners: "address:port" of each TCP socket listening on SLURM's ports, from /proc/net/tcp and
# tcp6 (no iproute2 needed). An IPv6 address is printed as its 32 hex digits.
listeners() {
	local file _ local_address state _rest hex port
	for file in /proc/net/tcp /proc/net/tcp6; do
		[[ -r $file ]] || continue
		while read -r _ local_address _ state _rest; do
			[[ $state == 0A ]] || continue # LISTEN
			hex=${local_address%:*}
			port=$((16#${local_address##*:}))
			[[ " $PORTS " == *" $port "* ]] || continue
			if ((${#hex} == 8)); then # IPv4, in host (little-endian) byte order
				hex="$((16#${hex:6:2})).$((16#${hex:4:2})).$((16#${hex:2:2})).$((16#${hex:0:2}))"
			fi
			echo "$hex:$port"
		done < <(tail -n +2 "$file")
	done
}

# check_loopback: one line per listener that is not on 127.0.0.0/8; status 1 if there is one.
check_loopback() {
	local bad
	bad=$(listeners | grep -v '^127\.' || true)
	[[ -z $bad ]] && return 0
	say "listening beyond loopback: $(echo $bad)"
	return 1
}

node_state() { sinfo -h -n "$HOST" -o %t; }

start() {
	[[ $(id -u) -eq 0 ]] || die "needs root: sudo bash $0 start"
	for program in slurmctld slurmd slurmdbd munged mariadbd; do
		command -v "$program" >/dev/null || [[ -x /usr/sbin/$program ]] \
			|| die "$program is missing: sudo bash scripts/provision.sh"
	done
	[[ -n $ADDR ]] || die "$(hostname) does not resolve: add '127.0.0.1 $(hostname)' to /etc/hosts"
	if [[ $ADDR != 127.* ]]; then
		say "warning: $(hostname) resolves to $ADDR, so the daemons will listen there, not on" \
			"loopback only; to keep them on loopback, put '127.0.0.1 $(hostname)' first in /etc/hosts"
	fi
	configure
	start_munge
	start_mariadb
	start_daemon slurmdbd sacctmgr -n show cluster
	start_daemon slurmctld scontrol ping
	start_daemon slurmd sh -c "sinfo -h -n $HOST -o %t | grep -qv -e unk -e down"
	# A node left down (e.g. by an earlier unclean stop) takes jobs again.
	if node_state | grep -q -e down -e drain; then
		scontrol update nodename="$HOST" state=resume
	fi
	wait_for 60 "the node" sh -c "sinfo -h -n $HOST -o %t | grep -qx -e idle -e mix -e alloc"
	wait_for 60 accounting sacct -n -X -S now
	say "node $HOST: $(node_state) ($(sinfo -h -n "$HOST" -o '%c CPUs, %m MB'))"
	say "listening on: $(echo $(listeners))"
}

# stop_daemon NAME: SIGTERM by pid, wait for it to exit.
stop_daemon() {
	local file=$STATE/$1.pid pid
	if ! alive "$file"; then
		rm -f "$file"
		return
	fi
	pid=$(cat "$file")
	kill "$pid"
	for ((i = 0; i < 150; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	kill -0 "$pid" 2>/dev/null && die "$1 (pid $pid) did not stop"
	rm -f "$file"
	say "$1: stopped"
}

stop() {
	[[ $(id -u) -eq 0 ]] || die "needs root: sudo bash $0 stop"
	# The pid files under $STATE are of daemons this script started: others are left alone.
	for name in slurmd slurmctld slurmdbd mariadb munged; do stop_daemon "$name"; done
}

status() {
	for name in munged mariadb slurmdbd slurmctld slurmd; do
		if alive "$STATE/$name.pid"; then
			say "$name: running (pid $(cat "$STATE/$name.pid"))"
		else
			say "$name: not started by this script"
		fi
	done
	say "listening on: $(echo $(listeners))"
	sinfo 2>&1 || true
	check_loopback # status 1 when a daemon listens beyond loopback
}

case ${1:-} in
start | stop | status) "$1" ;;
*) die "usage: $0 start|stop|status" ;;
esac
