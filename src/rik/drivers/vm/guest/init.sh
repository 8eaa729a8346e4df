# RIK guest init: PID 1 of a VM booted from an OCI image, run as `/.rik/busybox sh /.rik/init`.
#
# Reads the instance's configuration from the second disk (/dev/vdb, a tar holding config.sh written by the
# riklet), configures the network, runs the image's entrypoint with its environment and working directory,
# reaps orphans, turns SIGTERM (or the ACPI power button) into a SIGTERM to the entrypoint, and powers off
# when the entrypoint exits, printing "RIK-EXIT <status>" on the console.
PATH=/.rik/bin
export PATH
umask 022

log() { echo "rik-init: $*"; }

mounted() { grep -q " $1 " /proc/mounts 2>/dev/null; }

mkdir -p /proc /sys /dev
mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mounted /dev/shm || mount -t tmpfs -o mode=1777 shm /dev/shm
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr

rm -rf /.rik/run
mkdir -p /.rik/run
if ! tar -xf /dev/vdb -C /.rik/run config.sh; then
    log "cannot read the instance configuration from /dev/vdb"
    echo "RIK-EXIT 255"
    sync
    reboot -f
fi
# Sets RIK_HOSTNAME, RIK_ADDRESS, RIK_PREFIX, RIK_GATEWAY, RIK_WORKDIR and the positional parameters:
# `env -i` arguments (NAME=value…, then the command line).
. /.rik/run/config.sh

hostname "$RIK_HOSTNAME"
ip link set lo up
if [ -n "$RIK_ADDRESS" ]; then
    ip link set eth0 up
    ip addr add "$RIK_ADDRESS/$RIK_PREFIX" dev eth0
    ip route add default via "$RIK_GATEWAY"
fi
if [ -d /etc ] && [ ! -L /etc ]; then
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n' \
        "${RIK_ADDRESS:-127.0.1.1}" "$RIK_HOSTNAME" > /etc/hosts
fi

child=""
stopping=""
on_term() {
    stopping=1
    log "stopping"
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}
trap on_term TERM INT

# The ACPI power button (QMP system_powerdown) stops the instance like SIGTERM.
for device in /dev/input/event*; do
    [ -c "$device" ] || continue
    (dd if="$device" of=/dev/null bs=24 count=1 2>/dev/null && kill -TERM 1) &
done

cd "$RIK_WORKDIR" 2>/dev/null || cd /
echo "RIK-ENTRYPOINT-START"
env -i "$@" &
child=$!
cd /
while :; do
    wait "$child"
    status=$?
    if [ "$status" -gt 128 ] && kill -0 "$child" 2>/dev/null; then
        continue
    fi
    break
done
[ -n "$stopping" ] && log "entrypoint stopped"
echo "RIK-EXIT $status"
kill -TERM -1 2>/dev/null
sync
reboot -f
