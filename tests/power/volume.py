"""The power-cut filesystem's state and rules, without FUSE (lazyfs.py serves it).

A `Volume` answers every filesystem operation from memory and the inode store, and writes to the
backing directory only what a disk would keep after a power cut: a file's data when the file is
fsynced, a directory's names when the directory is fsynced (or at once with `eager` metadata).
Every method may raise OSError(errno); the caller holds `Volume.lock`.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import time

PAGE = 4096
ROOT = 1
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Inode:
    """A file or directory as the mounted filesystem shows it, and what of it is durable."""

    __slots__ = (
        "ino", "is_dir", "mode", "uid", "gid", "atime", "mtime", "ctime",
        "entries", "durable", "size", "pages", "floor", "nlink", "opens", "fd", "host_ino",
    )

    def __init__(self, ino: int, is_dir: bool, mode: int, uid: int = 0, gid: int = 0):
        now = time.time_ns()
        self.ino = ino
        self.is_dir = is_dir
        self.mode = mode
        self.uid, self.gid = uid, gid
        self.atime = self.mtime = self.ctime = now
        # Directories: the names as seen now, and as a power cut would leave them.
        self.entries: dict[str, int] | None = {} if is_dir else None
        self.durable: dict[str, int] | None = {} if is_dir else None
        # Files: the size as seen now; written pages not yet synced (page number -> PAGE bytes);
        # the lowest size a truncate set since the last sync (synced bytes at or past it are gone
        # from the view); how many names and open handles the file has.
        self.size = 0
        self.pages: dict[int, bytearray] = {}
        self.floor: int | None = None
        self.nlink = 0
        self.opens = 0
        self.fd: int | None = None
        self.host_ino = 0


class Volume:
    """The filesystem's state and rules, without FUSE: every method may raise OSError(errno).

    All calls must hold `lock`; the FUSE adapter and the control socket take it.
    """

    def __init__(self, backing: str, store: str, metadata: str = "strict"):
        if metadata not in ("strict", "eager"):
            raise ValueError(f"metadata must be strict or eager, not {metadata!r}")
        self.backing = os.path.abspath(backing)
        self.store = os.path.abspath(store)
        self.eager = metadata == "eager"
        self.lock = threading.RLock()
        self.inodes: dict[int, Inode] = {}
        self.handles: dict[int, int] = {}
        self.next_ino = ROOT
        self.next_fh = 1
        # Cross-directory renames not yet durable: (from dir, name, to dir, name).
        self.pending_renames: list[tuple[int, str, int, str]] = []
        self.crashed = False
        self.stats = {k: 0 for k in (
            "reads", "writes", "bytes_written", "fsync", "fdatasync", "fsyncdir", "bytes_synced",
        )}
        self._load()

    # ---- loading (a mount after a power cut sees exactly the backing directory) ----

    def _load(self) -> None:
        if os.path.lexists(self.store):
            shutil.rmtree(self.store)
        os.makedirs(self.store)
        os.makedirs(self.backing, exist_ok=True)
        root = self._new_inode(True, stat.S_IFDIR | (os.stat(self.backing).st_mode & 0o7777))
        assert root.ino == ROOT
        by_host: dict[int, Inode] = {}

        def walk(dnode: Inode, dpath: str) -> None:
            with os.scandir(dpath) as it:
                for e in sorted(it, key=lambda e: e.name):
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        child = self._new_inode(True, st.st_mode)
                        walk(child, e.path)
                    elif stat.S_ISREG(st.st_mode):
                        child = by_host.get(st.st_ino)
                        if child is None:
                            child = self._new_inode(False, st.st_mode, store_file=False)
                            try:
                                os.link(e.path, self._store_path(child.ino))
                            except OSError as err:
                                raise SystemExit(
                                    f"lazyfs: cannot hard-link {e.path} into {self.store} ({err}); "
                                    "the store must be on the same filesystem as the backing dir"
                                ) from err
                            child.host_ino = st.st_ino
                            child.size = st.st_size
                            by_host[st.st_ino] = child
                        child.nlink += 1
                    else:
                        raise SystemExit(
                            f"lazyfs: {e.path}: only regular files and directories are supported"
                        )
                    dnode.entries[e.name] = child.ino
                    dnode.durable[e.name] = child.ino

        walk(root, self.backing)

    def _store_path(self, ino: int) -> str:
        return os.path.join(self.store, str(ino))

    def _new_inode(self, is_dir: bool, mode: int, store_file: bool = True) -> Inode:
        node = Inode(self.next_ino, is_dir, mode)
        self.next_ino += 1
        self.inodes[node.ino] = node
        if not is_dir and store_file:
            fd = os.open(self._store_path(node.ino), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            node.fd = fd
            node.host_ino = os.fstat(fd).st_ino
        return node

    def _fd(self, node: Inode) -> int:
        if node.fd is None:
            node.fd = os.open(self._store_path(node.ino), os.O_RDWR)
        return node.fd

    # ---- names ----

    def alive(self) -> None:
        if self.crashed:
            raise fail(errno.EIO)

    @staticmethod
    def _parts(path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    def lookup(self, path: str) -> Inode:
        node = self.inodes[ROOT]
        for part in self._parts(path):
            if not node.is_dir:
                raise fail(errno.ENOTDIR)
            ino = node.entries.get(part)
            if ino is None:
                raise fail(errno.ENOENT)
            node = self.inodes[ino]
        return node

    def node(self, path: str | None, fh: int | None) -> Inode:
        """The inode of handle `fh` if it is one of ours, else of `path`."""
        if fh is not None and fh in self.handles:
            return self.inodes[self.handles[fh]]
        if path is None:
            raise fail(errno.EBADF)
        return self.lookup(path)

    def _parent(self, path: str) -> tuple[Inode, str]:
        parts = self._parts(path)
        if not parts:
            raise fail(errno.EBUSY)
        parent = self.lookup("/".join(parts[:-1]))
        if not parent.is_dir:
            raise fail(errno.ENOTDIR)
        return parent, parts[-1]

    def _touch_dir(self, d: Inode) -> None:
        d.mtime = d.ctime = time.time_ns()

    def _names_changed(self, *dirs: Inode) -> None:
        if self.eager:
            for d in dirs:
                self._commit_dir(d)
            self._reconcile()

    def mkdir(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise fail(errno.EEXIST)
        child = self._new_inode(True, stat.S_IFDIR | (mode & 0o7777))
        child.uid, child.gid = uid, gid
        parent.entries[name] = child.ino
        self._touch_dir(parent)
        self._names_changed(parent)

    def rmdir(self, path: str) -> None:
        parent, name = self._parent(path)
        ino = parent.entries.get(name)
        if ino is None:
            raise fail(errno.ENOENT)
        node = self.inodes[ino]
        if not node.is_dir:
            raise fail(errno.ENOTDIR)
        if node.entries:
            raise fail(errno.ENOTEMPTY)
        del parent.entries[name]
        self._touch_dir(parent)
        self._names_changed(parent)

    def create(self, path: str, mode: int, flags: int, uid: int = 0, gid: int = 0) -> int:
        parent, name = self._parent(path)
        ino = parent.entries.get(name)
        if ino is not None:
            if flags & os.O_EXCL:
                raise fail(errno.EEXIST)
            return self.open(path, flags)
        node = self._new_inode(False, stat.S_IFREG | (mode & 0o7777))
        node.uid, node.gid = uid, gid
        node.nlink = 1
        parent.entries[name] = node.ino
        self._touch_dir(parent)
        self._names_changed(parent)
        return self._handle(node)

    def mknod(self, path: str, mode: int, uid: int = 0, gid: int = 0) -> None:
        if not stat.S_ISREG(mode):
            raise fail(errno.EPERM)
        fh = self.create(path, mode, os.O_EXCL, uid, gid)
        self.release(fh)

    def unlink(self, path: str) -> None:
        parent, name = self._parent(path)
        ino = parent.entries.get(name)
        if ino is None:
            raise fail(errno.ENOENT)
        node = self.inodes[ino]
        if node.is_dir:
            raise fail(errno.EISDIR)
        del parent.entries[name]
        node.nlink -= 1
        node.ctime = time.time_ns()
        self._touch_dir(parent)
        self._forget_if_gone(node)
        self._names_changed(parent)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if flags & RENAME_EXCHANGE or flags & ~RENAME_NOREPLACE:
            raise fail(errno.EINVAL)
        src_dir, src_name = self._parent(old)
        dst_dir, dst_name = self._parent(new)
        ino = src_dir.entries.get(src_name)
        if ino is None:
            raise fail(errno.ENOENT)
        node = self.inodes[ino]
        if node.is_dir:
            # A directory may not move under itself.
            probe = self._parts(new)
            if probe[: len(self._parts(old))] == self._parts(old) and old != new:
                raise fail(errno.EINVAL)
        victim_ino = dst_dir.entries.get(dst_name)
        if victim_ino == ino:
            return
        if victim_ino is not None:
            if flags & RENAME_NOREPLACE:
                raise fail(errno.EEXIST)
            victim = self.inodes[victim_ino]
            if victim.is_dir and not node.is_dir:
                raise fail(errno.EISDIR)
            if node.is_dir and not victim.is_dir:
                raise fail(errno.ENOTDIR)
            if victim.is_dir and victim.entries:
                raise fail(errno.ENOTEMPTY)
        del src_dir.entries[src_name]
        dst_dir.entries[dst_name] = ino
        if victim_ino is not None:
            victim = self.inodes[victim_ino]
            if not victim.is_dir:
                victim.nlink -= 1
                self._forget_if_gone(victim)
        if src_dir is not dst_dir:
            self.pending_renames.append((src_dir.ino, src_name, dst_dir.ino, dst_name))
        self._touch_dir(src_dir)
        self._touch_dir(dst_dir)
        node.ctime = time.time_ns()
        self._names_changed(src_dir, dst_dir)

    def readdir(self, node: Inode) -> list[tuple[str, Inode]]:
        if not node.is_dir:
            raise fail(errno.ENOTDIR)
        return [(name, self.inodes[ino]) for name, ino in sorted(node.entries.items())]

    # ---- file data ----

    def _handle(self, node: Inode) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node.ino
        if not node.is_dir:
            node.opens += 1
        return fh

    def open(self, path: str, flags: int) -> int:
        node = self.lookup(path)
        if node.is_dir:
            raise fail(errno.EISDIR)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            self.truncate(node, 0)
        return self._handle(node)

    def opendir(self, path: str) -> int:
        node = self.lookup(path)
        if not node.is_dir:
            raise fail(errno.ENOTDIR)
        return self._handle(node)

    def release(self, fh: int) -> None:
        ino = self.handles.pop(fh, None)
        if ino is None:
            return
        node = self.inodes[ino]
        if not node.is_dir:
            node.opens -= 1
            self._forget_if_gone(node)

    def _forget_if_gone(self, node: Inode) -> None:
        """A file no name or handle reaches can never be read again: drop its unsynced pages (its
        synced data stays, a durable name may still point at it)."""
        if node.nlink <= 0 and node.opens <= 0:
            node.pages.clear()
            node.floor = None
            if node.fd is not None:
                os.close(node.fd)
                node.fd = None

    def _page(self, node: Inode, p: int) -> bytearray:
        """Page `p` as the file shows it now: unsynced if written, else the synced bytes below the
        truncation floor, zeros elsewhere."""
        page = node.pages.get(p)
        if page is not None:
            return page
        buf = bytearray(PAGE)
        start = p * PAGE
        visible = PAGE if node.floor is None else max(0, min(PAGE, node.floor - start))
        if visible:
            data = os.pread(self._fd(node), visible, start)
            buf[: len(data)] = data
        return buf

    def read(self, node: Inode, size: int, offset: int) -> bytes:
        self.stats["reads"] += 1
        end = min(offset + size, node.size)
        if offset >= end:
            return b""
        if not node.pages and node.floor is None:
            data = os.pread(self._fd(node), end - offset, offset)
            return data + bytes(end - offset - len(data))
        out = bytearray()
        p = offset // PAGE
        while p * PAGE < end:
            start = p * PAGE
            page = self._page(node, p)
            out += page[max(offset, start) - start : min(end, start + PAGE) - start]
            p += 1
        return bytes(out)

    def write(self, node: Inode, data: bytes, offset: int) -> int:
        self.stats["writes"] += 1
        self.stats["bytes_written"] += len(data)
        view = memoryview(data)
        pos = 0
        while pos < len(data):
            at = offset + pos
            p, lo = divmod(at, PAGE)
            take = min(PAGE - lo, len(data) - pos)
            page = node.pages.get(p)
            if page is None:
                page = bytearray(PAGE) if take == PAGE else self._page(node, p)
                node.pages[p] = page
            page[lo : lo + take] = view[pos : pos + take]
            pos += take
        node.size = max(node.size, offset + len(data))
        node.mtime = node.ctime = time.time_ns()
        return len(data)

    def truncate(self, node: Inode, length: int) -> None:
        if node.is_dir:
            raise fail(errno.EISDIR)
        if length < node.size:
            for p in [p for p in node.pages if p * PAGE >= length]:
                del node.pages[p]
            p, lo = divmod(length, PAGE)
            page = node.pages.get(p)
            if page is not None:
                page[lo:] = bytes(PAGE - lo)
            node.floor = length if node.floor is None else min(node.floor, length)
        node.size = length
        node.mtime = node.ctime = time.time_ns()

    def fallocate(self, node: Inode, mode: int, offset: int, length: int) -> None:
        FALLOC_FL_KEEP_SIZE = 1
        if mode & ~FALLOC_FL_KEEP_SIZE:
            raise fail(errno.EOPNOTSUPP)
        if not mode & FALLOC_FL_KEEP_SIZE and offset + length > node.size:
            self.truncate(node, offset + length)

    def fsync(self, node: Inode, datasync: bool) -> None:
        """The file's data and size become durable (its name does not: that is `fsyncdir`)."""
        self.stats["fdatasync" if datasync else "fsync"] += 1
        if node.is_dir:
            self.fsyncdir(node)
            return
        if not node.pages and node.floor is None and node.fd is not None:
            if os.fstat(node.fd).st_size == node.size:
                return
        fd = self._fd(node)
        if node.floor is not None and node.floor < os.fstat(fd).st_size:
            os.ftruncate(fd, node.floor)
        for p in sorted(node.pages):
            start = p * PAGE
            n = min(PAGE, node.size - start)
            if n > 0:
                os.pwrite(fd, memoryview(node.pages[p])[:n], start)
                self.stats["bytes_synced"] += n
        os.ftruncate(fd, node.size)
        node.pages.clear()
        node.floor = None

    def fsyncdir(self, node: Inode) -> None:
        """The directory's names as they are now become durable."""
        self.stats["fsyncdir"] += 1
        self._commit_dir(node)
        self._reconcile()

    def _commit_dir(self, d: Inode) -> None:
        d.durable = dict(d.entries)
        still = []
        for rename in self.pending_renames:
            src, src_name, dst, dst_name = rename
            if d.ino not in (src, dst):
                still.append(rename)
                continue
            # A rename is one step: its other directory's side becomes durable with it.
            other, name = (dst, dst_name) if d.ino == src else (src, src_name)
            o = self.inodes[other]
            now = o.entries.get(name)
            if now is None:
                o.durable.pop(name, None)
            else:
                o.durable[name] = now
        self.pending_renames = still

    def _reconcile(self) -> None:
        """Makes the backing directory hold the durable names, each a hard link to its inode file."""
        desired: dict[str, Inode] = {}
        seen: set[int] = set()

        def walk(d: Inode, rel: str) -> None:
            if d.ino in seen:
                return
            seen.add(d.ino)
            for name, ino in d.durable.items():
                path = os.path.join(rel, name) if rel else name
                child = self.inodes[ino]
                desired[path] = child
                if child.is_dir:
                    walk(child, path)

        walk(self.inodes[ROOT], "")
        actual: dict[str, int | None] = {}
        for dirpath, dirnames, filenames in os.walk(self.backing):
            rel = os.path.relpath(dirpath, self.backing)
            rel = "" if rel == "." else rel
            for name in dirnames:
                actual[os.path.join(rel, name) if rel else name] = None
            for name in filenames:
                path = os.path.join(rel, name) if rel else name
                actual[path] = os.lstat(os.path.join(self.backing, path)).st_ino
        for path in sorted(actual, key=lambda p: -p.count(os.sep)):
            want, have = desired.get(path), actual[path]
            if want is not None and (
                want.is_dir if have is None else (not want.is_dir and want.host_ino == have)
            ):
                continue
            full = os.path.join(self.backing, path)
            if have is None:
                shutil.rmtree(full, ignore_errors=True)
            elif os.path.lexists(full):
                os.unlink(full)
        for path in sorted(desired, key=lambda p: p.count(os.sep)):
            full = os.path.join(self.backing, path)
            node = desired[path]
            if node.is_dir:
                if not os.path.isdir(full):
                    os.mkdir(full, node.mode & 0o7777)
            elif not os.path.lexists(full):
                os.link(self._store_path(node.ino), full)

    # ---- attributes ----

    def attrs(self, node: Inode) -> dict:
        if node.is_dir:
            subdirs = sum(1 for ino in node.entries.values() if self.inodes[ino].is_dir)
            nlink, size = 2 + subdirs, PAGE
        else:
            nlink, size = node.nlink, node.size
        return {
            "st_ino": node.ino, "st_mode": node.mode, "st_nlink": nlink, "st_size": size,
            "st_uid": node.uid, "st_gid": node.gid, "st_blksize": PAGE,
            "st_blocks": (size + 511) // 512,
            "st_atime": node.atime, "st_mtime": node.mtime, "st_ctime": node.ctime,
        }

    def chmod(self, node: Inode, mode: int) -> None:
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        node.ctime = time.time_ns()

    def statfs(self) -> dict:
        sv = os.statvfs(self.backing)
        return {k: getattr(sv, k) for k in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
            "f_favail", "f_flag", "f_namemax",
        )}

    # ---- the plug ----

    def _paths(self) -> dict[int, list[str]]:
        paths: dict[int, list[str]] = {}

        def walk(d: Inode, rel: str) -> None:
            for name, ino in d.entries.items():
                path = f"{rel}/{name}"
                paths.setdefault(ino, []).append(path)
                if self.inodes[ino].is_dir:
                    walk(self.inodes[ino], path)

        paths[ROOT] = ["/"]
        walk(self.inodes[ROOT], "")
        return paths

    def unsynced(self) -> dict:
        """What a power cut now would lose: file data not synced, names not durable."""
        paths = self._paths()
        files, names = [], []
        for node in self.inodes.values():
            where = paths.get(node.ino, [f"(unlinked inode {node.ino})"])
            if node.is_dir:
                for name in sorted(set(node.entries) | set(node.durable)):
                    now, durable = node.entries.get(name), node.durable.get(name)
                    if now == durable:
                        continue
                    path = f"{where[0].rstrip('/')}/{name}"
                    if durable is None:
                        names.append({"path": path, "change": "created, not durable"})
                    elif now is None:
                        names.append({"path": path, "change": "removed, not durable"})
                    else:
                        names.append({"path": path, "change": "replaced, not durable"})
            elif node.pages or node.floor is not None or (
                node.fd is not None and os.fstat(node.fd).st_size != node.size
            ):
                if node.nlink <= 0 and node.opens <= 0:
                    continue
                durable = os.fstat(self._fd(node)).st_size
                files.append({
                    "path": where[0], "size": node.size, "synced_size": durable,
                    "unsynced_bytes": sum(
                        min(PAGE, node.size - p * PAGE) for p in node.pages if p * PAGE < node.size
                    ),
                })
        files.sort(key=lambda f: f["path"])
        names.sort(key=lambda n: n["path"])
        return {"unsynced_files": files, "pending_names": names}

    def durable_tree(self) -> dict[str, int]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.backing):
            rel = os.path.relpath(dirpath, self.backing)
            for name in dirnames:
                out["/" + os.path.normpath(os.path.join(rel, name)) + "/"] = 0
            for name in filenames:
                path = os.path.join(dirpath, name)
                out["/" + os.path.normpath(os.path.join(rel, name))] = os.lstat(path).st_size
        return dict(sorted(out.items()))

    def crash(self) -> dict:
        """Pulls the plug: every operation fails from now on; the backing dir is what survived."""
        lost = self.unsynced()
        self.crashed = True
        lost["survived"] = self.durable_tree()
        lost["stats"] = dict(self.stats)
        return lost
