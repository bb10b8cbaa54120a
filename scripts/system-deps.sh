#!/usr/bin/env bash
# Installs and starts what the tests need from the operating system:
# MariaDB (server running, root over the socket), Debian's chromium, debootstrap
# for the real-Asterisk chroots (built by 'make asterisk'), and systemd-nspawn and ssh
# for the Debian 12 hosts the Ansible tests boot (testbed/hosts.py), and wrk for the benchmark.
# As root it installs what is missing; otherwise it names what is missing and fails.
set -euo pipefail

need_pkgs=()
[ -x /usr/sbin/mariadbd ] || need_pkgs+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || command -v mysql >/dev/null 2>&1 || need_pkgs+=(mariadb-client)
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
# the real-Asterisk tier: Debian's Asterisk debootstrapped into a cached chroot
[ -x /usr/sbin/debootstrap ] || need_pkgs+=(debootstrap)
command -v unshare >/dev/null 2>&1 || need_pkgs+=(util-linux)
# the Ansible tier: Debian 12 hosts booted with systemd-nspawn, reached over ssh
command -v systemd-nspawn >/dev/null 2>&1 || need_pkgs+=(systemd-container)
{ command -v ssh && command -v ssh-keygen; } >/dev/null 2>&1 || need_pkgs+=(openssh-client)
# the benchmark's load generator (bench/widget_bench.py; make test runs the bench at tiny sizes)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)

if [ "${#need_pkgs[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing system packages: ${need_pkgs[*]} -- run 'sudo apt-get install ${need_pkgs[*]}' or run 'make test' as root" >&2
        exit 1
    fi
    echo "installing system packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

mysql_cli=$(command -v mariadb || command -v mysql)
if ! "$mysql_cli" -uroot --connect-timeout=3 -e 'SELECT 1' >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "MariaDB is not answering on its socket as root -- start it (as root: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd)" >&2
        exit 1
    fi
    echo "starting MariaDB"
    install -d -o mysql -g mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    start-stop-daemon --start --oknodo --background --chuid mysql --exec /usr/sbin/mariadbd
    for _ in $(seq 1 60); do
        "$mysql_cli" -uroot --connect-timeout=2 -e 'SELECT 1' >/dev/null 2>&1 && break
        sleep 0.5
    done
    "$mysql_cli" -uroot --connect-timeout=2 -e 'SELECT 1' >/dev/null \
        || { echo "MariaDB did not start within 30 s -- see /var/log/mysql/error.log" >&2; exit 1; }
fi
echo "system dependencies ready: MariaDB $("$mysql_cli" -uroot -N -e 'SELECT VERSION()'), $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium')"
