#!/usr/bin/env bash
# Provision the system components that the system tests need, on Debian, as root (CI runs this
# from .ci/run). Idempotent: installs only the packages that are missing, starts only what is
# down. Tests never install anything: without these components they skip locally, saying what
# to run, and fail under CI=true. One line per component says what was done.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
	echo "provision: needs root: sudo bash $0" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -o DPkg::Lock::Timeout=300 -qq) # another apt-get may hold the lock for a while
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# ensure PACKAGE...: apt-get update (once) and install the missing ones; apt's output only if it
# fails. Sets $state to say what it did.
updated=false
ensure() {
	local missing=() package
	for package in "$@"; do installed "$package" || missing+=("$package"); done
	state="already installed"
	((${#missing[@]} > 0)) || return 0
	if ! $updated; then
		"${APT[@]}" update >"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }
		updated=true
	fi
	"${APT[@]}" install -y --no-install-recommends "${missing[@]}" >"$LOG" 2>&1 \
		|| { tail -n 30 "$LOG" >&2; exit 1; }
	state="installed"
}

# PostgreSQL (tests/test_tracking_server.py): the package, a cluster (its postinst creates one;
# made again if it was dropped), and that cluster running. pipeline.tracking_server finds it
# with pg_lsclusters and uses the first online one.
ensure postgresql
if [[ -z $(pg_lsclusters --no-header) ]]; then
	version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
	pg_createcluster "$version" main >"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }
fi
online=$(pg_lsclusters --no-header | awk '$4 == "online" {print $1 "/" $2 " on port " $3; exit}')
if [[ -n $online ]]; then
	echo "provision: PostgreSQL: $state; cluster $online already running"
else
	read -r version name port _ < <(pg_lsclusters --no-header)
	pg_ctlcluster "$version" "$name" start >"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }
	echo "provision: PostgreSQL: $state; cluster $version/$name started on port $port"
fi

# Chromium + ChromeDriver (tests/test_ui.py drives /usr/bin/chromium through /usr/bin/chromedriver).
ensure chromium chromium-driver
echo "provision: Chromium + ChromeDriver: $state ($(dpkg-query -W -f='${Version}' chromium-driver))"

# Fashion-MNIST (Debian's dataset-fashion-mnist: its four IDX files, found by data=fashion_mnist
# without data.root; tests/test_data.py reads them).
ensure dataset-fashion-mnist
echo "provision: Fashion-MNIST: $state in $(dirname "$(dpkg -L dataset-fashion-mnist | grep -m1 '\.gz$')")"

# SLURM (tests/test_slurm.py): the daemons, munge, and accounting (slurmdbd on MariaDB: submitit
# reads job states with sacct). scripts/slurm.sh start makes and starts the one-node cluster.
ensure slurm-wlm slurmdbd munge mariadb-server
echo "provision: SLURM + accounting: $state ($(dpkg-query -W -f='${Version}' slurm-wlm)); start it with: bash scripts/slurm.sh start"
