#!/usr/bin/env python3
"""A FUSE filesystem that forgets whatever was not synced: the disk of a power-loss drill.

After Jepsen's LazyFS. It mirrors a backing directory. Reads see every write at once (the page
cache), but the backing directory only ever holds what a disk would still hold after the power
went out:

- A file's data reaches the backing file only when that file is fsynced or fdatasynced (both
  write the file's data and size; nothing is ever written back lazily, and `sync_file_range` is
  not a sync: the kernel does not pass it to a FUSE filesystem at all).
- A new, removed or renamed name (create, mkdir, unlink, rmdir, rename) is durable only once its
  directory is fsynced (`fsyncdir`); a rename between two directories is one step, made durable
  by syncing either of them. `--metadata eager` makes names durable at once instead (what a
  filesystem that journals metadata synchronously gives), to tell the two kinds of loss apart.
- "Pulling the plug" (`crash` on the control socket) freezes the filesystem: from then on every
  operation fails with EIO, and what is in the backing directory is what survived. Unmount and
  mount again over the same backing directory to "reboot".

Not modelled: torn or reordered writes within what was synced (everything unsynced is dropped,
nothing of it kept), a sync that fails, hard links and symlinks (refused), xattrs, and the
durability of modes, owners and times (applied at once or kept in memory).

The rules live in volume.py; this file serves them over FUSE, with a control socket and a CLI.
How the durable state is kept: every file has an inode file in a private store directory
(`--store`, beside the backing directory); synced data is written to it. The backing directory
holds hard links to those inode files at their durable names, rebuilt after every `fsyncdir`, so
an inode that was synced but never durably named is not in it. The store is emptied on mount.

Usage:
    lazyfs.py mount --backing DIR --mountpoint DIR --control SOCKET [--metadata strict|eager]
    lazyfs.py ctl SOCKET (ping | crash | stats)
    lazyfs.py check        # can this machine mount it? says what is missing
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import socket
import stat
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from volume import Volume, fail  # noqa: E402

FUSE_CAP_WRITEBACK_CACHE = 1 << 16
log = logging.getLogger("lazyfs")


# ---- the FUSE adapter ----


def serve(volume: Volume, mountpoint: str, control: str) -> None:
    import mfusepy

    class LazyOps(mfusepy.Operations):
        use_ns = True

        def __init__(self):
            self.ready = threading.Event()

        def init_with_config(self, conn, config):
            if conn is not None:
                conn.want &= ~FUSE_CAP_WRITEBACK_CACHE
            self.ready.set()
            log.info("mounted %s over %s (%s metadata)", mountpoint, volume.backing,
                     "eager" if volume.eager else "strict")

        def getattr(self, path, fh=None):
            with volume.lock:
                volume.alive()
                return volume.attrs(volume.node(path, fh))

        def access(self, path, amode):
            with volume.lock:
                volume.alive()
                volume.lookup(path)
                return 0

        def readdir(self, path, fh):
            with volume.lock:
                volume.alive()
                d = volume.node(path, fh)
                out = [(".", volume.attrs(d), 0), ("..", {"st_mode": stat.S_IFDIR}, 0)]
                for name, child in volume.readdir(d):
                    out.append((name, {"st_mode": child.mode, "st_ino": child.ino}, 0))
                return out

        def opendir(self, path):
            with volume.lock:
                volume.alive()
                return volume.opendir(path)

        def releasedir(self, path, fh):
            with volume.lock:
                volume.release(fh)
                return 0

        def fsyncdir(self, path, datasync, fh):
            with volume.lock:
                volume.alive()
                volume.fsyncdir(volume.node(path, fh))
                return 0

        def mkdir(self, path, mode):
            uid, gid, _ = mfusepy.fuse_get_context()
            with volume.lock:
                volume.alive()
                volume.mkdir(path, mode, uid, gid)
                return 0

        def rmdir(self, path):
            with volume.lock:
                volume.alive()
                volume.rmdir(path)
                return 0

        def create(self, path, mode, flags):
            uid, gid, _ = mfusepy.fuse_get_context()
            with volume.lock:
                volume.alive()
                return volume.create(path, mode, flags, uid, gid)

        def mknod(self, path, mode, dev):
            uid, gid, _ = mfusepy.fuse_get_context()
            with volume.lock:
                volume.alive()
                volume.mknod(path, mode, uid, gid)
                return 0

        def open(self, path, flags):
            with volume.lock:
                volume.alive()
                return volume.open(path, flags)

        def read(self, path, size, offset, fh):
            with volume.lock:
                volume.alive()
                return volume.read(volume.node(path, fh), size, offset)

        def write(self, path, data, offset, fh):
            with volume.lock:
                volume.alive()
                return volume.write(volume.node(path, fh), data, offset)

        def truncate(self, path, length, fh=None):
            with volume.lock:
                volume.alive()
                volume.truncate(volume.node(path, fh), length)
                return 0

        def fallocate(self, path, mode, offset, size, fh):
            with volume.lock:
                volume.alive()
                volume.fallocate(volume.node(path, fh), mode, offset, size)
                return 0

        def flush(self, path, fh):
            # Closing a file makes nothing durable, so it never fails, even after the cut.
            return 0

        def release(self, path, fh):
            with volume.lock:
                volume.release(fh)
                return 0

        def fsync(self, path, datasync, fh):
            with volume.lock:
                volume.alive()
                volume.fsync(volume.node(path, fh), bool(datasync))
                return 0

        def unlink(self, path):
            with volume.lock:
                volume.alive()
                volume.unlink(path)
                return 0

        def rename(self, old, new, flags=0):
            with volume.lock:
                volume.alive()
                volume.rename(old, new, flags)
                return 0

        def chmod(self, path, mode, fh=None):
            with volume.lock:
                volume.alive()
                if path is not None or fh is not None:
                    volume.chmod(volume.node(path, fh), mode)
                return 0

        def chown(self, path, uid, gid):
            with volume.lock:
                volume.alive()
                if path is not None:
                    node = volume.lookup(path)
                    node.uid = node.uid if uid == -1 else uid
                    node.gid = node.gid if gid == -1 else gid
                return 0

        def utimens(self, path, times=None):
            with volume.lock:
                volume.alive()
                if path is not None:
                    node = volume.lookup(path)
                    now = time.time_ns()
                    node.atime, node.mtime = times if times else (now, now)
                return 0

        def statfs(self, path):
            with volume.lock:
                volume.alive()
                return volume.statfs()

        def link(self, target, source):
            raise fail(errno.EPERM)

        def symlink(self, target, source):
            raise fail(errno.EPERM)

    class LazyFuse(mfusepy.FUSE):
        """mfusepy drops the file handle of truncate/chmod and the flags of rename under libfuse 3;
        an unlinked open file (hard_remove) has no path, so pass them on."""

        def truncate_fuse_3(self, path, length, fip):
            fh = fip.contents.fh if fip else None
            return self.operations.truncate(
                None if path is None else path.decode(self.encoding, self.errors), length, fh)

        def chmod_fuse_3(self, path, mode, fip):
            fh = fip.contents.fh if fip else None
            return self.operations.chmod(
                None if path is None else path.decode(self.encoding, self.errors), mode, fh)

        def rename_fuse_3(self, old, new, flags):
            return self.operations.rename(
                old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors),
                flags)

    ops = LazyOps()
    threading.Thread(
        target=control_loop, args=(volume, control, ops.ready), name="control", daemon=True
    ).start()
    # One thread: the model is locked anyway, and FUSE requests are then answered in order.
    LazyFuse(ops, mountpoint, foreground=True, nothreads=True, hard_remove=True, use_ino=True,
             fsname="lazyfs", subtype="lazyfs")
    log.info("unmounted %s", mountpoint)


def control_loop(volume: Volume, path: str, ready: threading.Event) -> None:
    """One command a connection, one JSON line back: ping, crash, stats."""
    if os.path.lexists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile("rwb") as f:
            cmd = f.readline().decode().strip()
            if cmd == "ping":
                reply = {"ok": ready.is_set(), "mounted": ready.is_set()}
            elif cmd == "crash":
                with volume.lock:
                    reply = {"ok": True, **volume.crash()}
                log.info("power cut: %s", json.dumps(reply))
            elif cmd == "stats":
                with volume.lock:
                    reply = {"ok": True, "crashed": volume.crashed, "stats": dict(volume.stats),
                             **volume.unsynced()}
            else:
                reply = {"ok": False, "error": f"unknown command {cmd!r}: ping, crash or stats"}
            f.write((json.dumps(reply) + "\n").encode())
            f.flush()


def ctl(path: str, cmd: str) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(cmd.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def check() -> list[str]:
    """What this machine lacks to mount the filesystem, as sentences (empty: nothing)."""
    missing = []
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse does not exist (load the fuse module, or give the container "
                       "--device /dev/fuse)")
    elif not os.access("/dev/fuse", os.R_OK | os.W_OK):
        missing.append("/dev/fuse is not readable and writable by this user")
    if shutil.which("fusermount3") is None:
        missing.append("fusermount3 is not on PATH (apt-get install fuse3)")
    try:
        import mfusepy  # noqa: F401  (loads libfuse3.so.3 through ctypes)
    except Exception as e:  # noqa: BLE001  (any failure here is what to report)
        missing.append(f"the mfusepy binding does not load ({e}); apt-get install fuse3 "
                       "(libfuse3-3) and pip install -r tests/power/requirements.txt")
    return missing


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mount", help="mount in the foreground until unmounted")
    m.add_argument("--backing", required=True)
    m.add_argument("--mountpoint", required=True)
    m.add_argument("--control", required=True, help="unix socket for ping, crash, stats")
    m.add_argument("--store", help="inode store (default: <backing>.inodes beside it)")
    m.add_argument("--metadata", choices=["strict", "eager"], default="strict",
                   help="strict: names durable on fsyncdir; eager: names durable at once")
    c = sub.add_parser("ctl", help="send one command to a mounted filesystem")
    c.add_argument("socket")
    c.add_argument("command", choices=["ping", "crash", "stats"])
    sub.add_parser("check", help="say what this machine lacks to mount it")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="lazyfs %(asctime)s %(levelname)s %(message)s")
    if args.cmd == "check":
        missing = check()
        for line in missing:
            print(line)
        return 1 if missing else 0
    if args.cmd == "ctl":
        print(json.dumps(ctl(args.socket, args.command), indent=2))
        return 0
    store = args.store or os.path.abspath(args.backing).rstrip("/") + ".inodes"
    volume = Volume(args.backing, store, args.metadata)
    os.makedirs(args.mountpoint, exist_ok=True)
    serve(volume, args.mountpoint, args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
