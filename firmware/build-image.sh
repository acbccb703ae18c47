#!/bin/bash
# Builds the device image's root filesystem: Debian bookworm for arm64 with
# edge installed in A/B slot a, the recipe of this folder installed, and proof
# that it runs there: `edge --version` and a few fast unit tests, run inside
# the new root under qemu user emulation. Packs it as
# firmware/out/edge-rootfs-arm64-BOARD.tar.gz.
#
# Run as root by `make image` (which installs debootstrap, qemu-user-static
# and binfmt-support first). Settings, from the environment:
#   APT_PACKAGES  the runtime Debian packages (the Makefile's APT_RUNTIME)
#   BOARD         desk-phone or intercom: which sound card ALSA's default is
#   MIRROR        the Debian mirror (deb.debian.org)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tree=$(dirname "$here")
board=${BOARD:-desk-phone}
mirror=${MIRROR:-http://deb.debian.org/debian}
packages=${APT_PACKAGES:?APT_PACKAGES: the runtime Debian packages}
out="$here/out"
root="$out/rootfs"
image="$out/edge-rootfs-arm64-$board.tar.gz"
# Run in the image only, never installed: the fast tests of codecs and wire.
checks=(tests/test_wire_codec.py tests/test_stun_codec.py tests/test_media_g711.py)
# The image's own packages besides the runtime ones: an init and udev for the
# units and rules, certificates for pip and the login server's TLS.
base=(systemd systemd-sysv udev ca-certificates python3)

say() { printf '== %s %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

# Everything mounted below $root, deepest first; lazily, so a process that
# emulation left behind cannot keep /dev or /proc mounted in a tree the next
# run deletes.
unmount_all() {
    local mounts
    mounts=$(awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts |
        sort -r)
    for m in $mounts; do umount -l "$m" || true; done
}

in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "${pip_env[@]}" "$@"
}

check_host() {
    [[ $(id -u) == 0 ]] || die "run as root (debootstrap and chroot need it)"
    case "$board" in desk-phone | intercom) ;; *) die "BOARD: desk-phone or intercom, not $board" ;; esac
    command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
    command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static is missing (apt-get install qemu-user-static)"
}

# The kernel runs arm64 programs through qemu once binfmt_misc knows it;
# without the F flag it looks the interpreter up inside the chroot, so that
# path gets a copy of the static qemu.
setup_emulation() {
    if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
        update-binfmts --enable qemu-aarch64
    fi
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || die "binfmt_misc has no qemu-aarch64 entry"
}

copy_emulator() {
    local interpreter
    interpreter=$(awk '$1 == "interpreter" { print $2 }' /proc/sys/fs/binfmt_misc/qemu-aarch64)
    install -D -m 755 "$(command -v qemu-aarch64-static)" "$root/usr/bin/qemu-aarch64-static"
    if [[ -n "$interpreter" && "$interpreter" != /usr/bin/qemu-aarch64-static ]]; then
        install -D -m 755 "$(command -v qemu-aarch64-static)" "$root$interpreter"
        emulator_copies+=("$interpreter")
    fi
}

mount_system() {
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
}

bootstrap() {
    say "debootstrap, first stage (downloads)"
    unmount_all
    [[ -z $(awk -v r="$root" 'index($2, r) == 1' /proc/self/mounts) ]] || die "$root: still mounted"
    rm -rf "$root"
    mkdir -p "$root"
    debootstrap --arch=arm64 --foreign --variant=minbase bookworm "$root" "$mirror"
    copy_emulator
    say "debootstrap, second stage (under emulation)"
    chroot "$root" /debootstrap/debootstrap --second-stage
    mount_system
}

install_packages() {
    say "apt: ${base[*]} $packages"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    in_root apt-get update -qq
    # shellcheck disable=SC2086 # the package list is words
    in_root apt-get install -y -qq --no-install-recommends "${base[@]}" $packages
    in_root apt-get clean
}

# pip inside reaches the same index as the host's: its configuration files,
# its PIP_* settings, the host's certificates (which may hold a proxy's CA),
# and what those name on the host's disk: files (a constraints file, a CA
# bundle) copied, folders (find-links, file:// indexes) mounted read-only.
pip_env=()
share_pip_setup() {
    local files=() f path
    for f in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" \
        "${PIP_CONFIG_FILE:-}"; do
        [[ -n "$f" && -f "$f" ]] || continue
        files+=("$f")
        borrow_file "$f"
    done
    # The image's own bundle is put back before packing.
    cp -a "$root/etc/ssl/certs/ca-certificates.crt" "$root/etc/ssl/certs/ca-certificates.crt.image"
    install -m 644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    while IFS='=' read -r name value; do
        [[ $name == PIP_* ]] && pip_env+=("$name=$value")
    done < <(env)
    for path in $( (
        grep -hv '^[[:space:]]*[#;]' "${files[@]}" /dev/null
        printf '%s\n' "${pip_env[@]#*=}"
    ) | grep -oE '(file://)?/[^[:space:],]+' | sed 's|^file://||' | sort -u); do
        if [[ -f "$path" ]]; then
            borrow_file "$path"
        elif [[ -d "$path" ]]; then
            # A local index's pages link to the files beside its simple/.
            [[ $(basename "$path") == simple ]] && path=$(dirname "$path")
            mkdir -p "$root$path"
            mount --bind "$path" "$root$path"
            mount -o remount,bind,ro "$root$path"
        fi
    done
}

# A host file copied to the same path inside, removed again before packing;
# one the image has already (the CA bundle) is left alone.
borrow_file() {
    [[ -e "$root$1" ]] && return 0
    install -D -m 644 "$1" "$root$1"
    copied+=("$1")
}

copy_source() {
    rm -rf "$root/tmp/edge-src"
    mkdir -p "$root/tmp/edge-src"
    tar -C "$tree" --exclude=__pycache__ -cf - pyproject.toml README.md edge tests |
        tar -C "$root/tmp/edge-src" -xf -
}

install_edge() {
    say "pip: edge into /opt/edge/slot-a (under emulation)"
    in_root python3 -m venv /opt/edge/slot-a
    in_root /opt/edge/slot-a/bin/pip install -q /tmp/edge-src
    # The tests below import edge as installed, not the source beside them.
    rm -rf "$root/tmp/edge-src/edge"
    ln -sfn slot-a "$root/opt/edge/current"
    ln -sfn /opt/edge/current/bin/edge "$root/usr/bin/edge"
}

install_recipe() {
    say "recipe: boot fragments, ALSA, udev, units"
    install -d "$root/usr/share/edge/boot" "$root/usr/share/edge/hw" "$root/usr/lib/edge"
    install -m 644 "$here"/boot/config-*.txt "$root/usr/share/edge/boot/"
    install -m 644 "$tree"/hw/*.toml "$root/usr/share/edge/hw/"
    sed "s/^pcm.!default .*/pcm.!default edge_${board//-/_}/" "$here/alsa/asound.conf" \
        >"$root/etc/asound.conf"
    install -m 644 "$here"/udev/*.rules "$root/etc/udev/rules.d/"
    install -m 755 "$here/first-boot.sh" "$root/usr/lib/edge/first-boot.sh"
    install -m 644 "$tree"/systemd/*.service "$here/edge-first-boot.service" \
        "$root/etc/systemd/system/"
    # The agent's unit asks for both groups; plain Debian has audio only.
    in_root groupadd -f --system gpio
    in_root groupadd -f --system audio
    in_root systemctl enable edge-first-boot.service
}

run_checks() {
    say "checks: edge --version and ${checks[*]} (under emulation)"
    in_root /usr/bin/edge --version
    # The test tools live in a throw-away venv that sees the slot's packages,
    # so the slot holds only what the device runs.
    local site
    site=$(in_root /opt/edge/slot-a/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    in_root python3 -m venv /tmp/edge-check
    in_root /tmp/edge-check/bin/pip install -q pytest hypothesis
    in_root /tmp/edge-check/bin/python -c \
        "import sysconfig, pathlib; pathlib.Path(sysconfig.get_path('purelib'), 'slot.pth').write_text('$site\n')"
    in_root sh -c "cd /tmp/edge-src && /tmp/edge-check/bin/python -m pytest -q -p no:cacheprovider ${checks[*]}"
}

# What the build borrowed from the host leaves before packing.
clean_up() {
    rm -rf "$root/tmp/edge-src" "$root/tmp/edge-check" "$root/root/.cache"
    for f in "${copied[@]}"; do rm -f "$root$f"; done
    for f in "${emulator_copies[@]}"; do rm -f "$root$f"; done
    rm -f "$root/usr/bin/qemu-aarch64-static"
    mv "$root/etc/ssl/certs/ca-certificates.crt.image" "$root/etc/ssl/certs/ca-certificates.crt"
    : >"$root/etc/resolv.conf"
}

pack() {
    say "packing $image"
    unmount_all
    tar -C "$root" --numeric-owner --one-file-system -czf "$image.part" .
    mv "$image.part" "$image"
    say "done: $image ($(du -h "$image" | cut -f1))"
}

copied=()
emulator_copies=()
check_host
trap unmount_all EXIT
setup_emulation
bootstrap
install_packages
share_pip_setup
copy_source
install_edge
install_recipe
run_checks
clean_up
pack
