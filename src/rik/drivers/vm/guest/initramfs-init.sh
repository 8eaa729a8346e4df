#!/bin/busybox sh
# RIK guest initramfs (/init): load the virtio drivers, mount the root disk, hand over to RIK's guest init.
/bin/busybox mkdir -p /proc /sys /dev /newroot /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /etc/rik-modules); do
    insmod "/lib/modules/$module.ko" || echo "rik-initramfs: cannot load $module"
done
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    rik.probe=1) echo "RIK-PROBE-OK"; reboot -f ;;
    esac
done
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 1000 ]; do sleep 0.01; i=$((i + 1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
    echo "rik-initramfs: cannot mount the root disk /dev/vda"
    echo "RIK-EXIT 255"
    reboot -f
fi
for dir in dev proc sys; do
    mkdir -p "/newroot/$dir" && mount --move "/$dir" "/newroot/$dir"
done
exec switch_root /newroot /.rik/busybox sh /.rik/init
