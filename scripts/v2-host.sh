#!/usr/bin/env bash
# Runs the node agent's end-to-end tests on a pure cgroup v2 host: these machines mount the
# v1 hierarchies plus a v2 one, so the tests boot Debian's kernel in qemu with
# `cgroup_no_v1=all` (every controller on the one v2 hierarchy). The guest sees this machine's
# files read-only over 9p, with a tmpfs on top, and runs the already built test binary.
# qemu emulates the CPU (nested KVM does not work on these machines): slower, but the tests
# take a few minutes.
#
# Usage: scripts/v2-host.sh <test binary> [test filters...]   (scripts/test.sh calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
binary=$(realpath "$1")
shift
filters=${*:-"agent:: join::"}
# Controller logic the host run already covers, and slow under emulation (two agents; a
# CronJob's minute): left out here so the guest stays within its time.
skips="--skip join::a_drained_or_silent_node_loses_its_pods_to_the_other_node --skip agent::jobs_run_pods_to_completion_or_failure_and_a_cronjob_starts_one_each_minute"

work=target/v2-host
mkdir -p "$work"
if ! command -v qemu-system-x86_64 >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y qemu-system-x86 cpio || { apt-get update && apt-get install -y qemu-system-x86 cpio; }
fi
command -v cpio >/dev/null || apt-get install -y cpio

# Debian's current kernel, unpacked (not installed): its image and the modules the guest
# needs to reach the shared files (virtio, 9p) and to give containers overlay roots.
if [ ! -f "$work/kernel/vmlinuz" ]; then
    package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    rm -rf "$work/deb" && mkdir -p "$work/deb"
    (cd "$work/deb" && apt-get download "$package" 2>/dev/null)
    dpkg-deb -x "$work"/deb/*.deb "$work/deb/x"
    mkdir -p "$work/kernel/mods"
    cp "$work"/deb/x/boot/vmlinuz-* "$work/kernel/vmlinuz"
    modules=$(echo "$work"/deb/x/lib/modules/*/kernel)
    for m in drivers/virtio/virtio drivers/virtio/virtio_ring drivers/virtio/virtio_pci_legacy_dev \
        drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci fs/netfs/netfs \
        fs/fscache/fscache net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p fs/overlayfs/overlay; do
        cp "$modules/$m.ko" "$work/kernel/mods/" 2>/dev/null || true
    done
    rm -rf "$work/deb"
fi

# The guest's first process: modules, the shared files under a tmpfs overlay, a v2-only
# cgroup mount, then the tests.
initrd=$work/initrd
rm -rf "$initrd" && mkdir -p "$initrd"/{bin,dev,proc,sys,newroot,lower,upper}
cp /usr/bin/busybox "$initrd/bin/"
for applet in sh mount insmod mkdir switch_root echo cat poweroff; do
    ln -sf busybox "$initrd/bin/$applet"
done
cp -r "$work/kernel/mods" "$initrd/mods"
cat > "$initrd/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
# The script to run is named on the kernel command line (read before /proc moves).
for arg in $(cat /proc/cmdline); do
    case $arg in
        skiff.script=*) script=${arg#skiff.script=} ;;
        skiff.keep=*) keep="$keep ${arg#skiff.keep=}" ;;
    esac
done
[ -n "$script" ] || { echo "V2-EXIT=no-script"; poweroff -f; }
for pass in 1 2; do
    for m in virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs \
        fscache 9pnet 9pnet_virtio 9p overlay; do
        [ -f /mods/$m.ko ] && insmod /mods/$m.ko 2>/dev/null
    done
done
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000,ro hostroot /lower \
    || { echo "V2-EXIT=mount-9p"; poweroff -f; }
mount -t tmpfs -o size=3g tmpfs /upper; mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot \
    || { echo "V2-EXIT=mount-overlay"; poweroff -f; }
# Where the tests write: plain tmpfs (an overlay upper can't be on an overlay).
for d in tmp run var/lib; do mount -t tmpfs tmpfs /newroot/$d; done
# The repository and the build, if they live under one of those, are bound back.
for k in $keep; do
    case $k in
        /tmp/*|/run/*|/var/lib/*) mkdir -p /newroot$k; mount --bind /lower$k /newroot$k ;;
    esac
done
mount --move /dev /newroot/dev; mount --move /proc /newroot/proc; mount --move /sys /newroot/sys
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts -o ptmxmode=0666,newinstance
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
exec switch_root /newroot /bin/sh -c "sh $script; echo V2-EXIT=\$?; poweroff -f"
EOF
chmod +x "$initrd/init"
(cd "$initrd" && find . | cpio -o -H newc 2>/dev/null | gzip) > "$work/initrd.gz"

# What the guest runs, from the shared (read-only) repository.
script=$repo/$work/guest.sh
cat > "$script" <<EOF
ip link set lo up
hostname skiff-v2
echo "cgroup controllers: \$(cat /sys/fs/cgroup/cgroup.controllers); v1 hierarchies: \$(grep -c ' cgroup ' /proc/mounts)"
cd $repo/tests
TMPDIR=/tmp HOME=/tmp $binary --test-threads 2 $filters $skips
EOF

# What the guest must see where the host has it (the paths have no spaces: kernel arguments).
keep=""
for path in "$repo" "$(realpath "$work")" "$(dirname "$binary")"; do
    keep="$keep skiff.keep=$path"
done

log=$work/guest.log
timeout 1200 qemu-system-x86_64 -accel tcg -cpu max -m 4096 -smp 2 -nographic -no-reboot \
    -kernel "$work/kernel/vmlinuz" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 cgroup_no_v1=all quiet panic=-1 skiff.script=$script $keep" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -nic none > "$log" 2>&1 || true
grep -E "^cgroup controllers|^test |^test result|panicked|V2-EXIT" "$log" | sed 's/\x1b\[[0-9;]*m//g' || true
if ! grep -q "V2-EXIT=0" "$log"; then
    echo "the tests on a pure cgroup v2 host failed; the guest's console is in $log" >&2
    exit 1
fi
