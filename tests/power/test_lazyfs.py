#!/usr/bin/env python3
"""Tests of the power-cut filesystem (lazyfs.py): that a "reboot" keeps exactly what was synced.

The model tests drive the `Volume` (volume.py) without FUSE and reboot by loading a new one over the same
backing directory. The mounted tests go through a real FUSE mount and the control socket, the way
the drill uses it, and include the control experiment of issue 14: SQLite with synchronous=FULL
(WAL mode, or DELETE mode at synchronous=EXTRA) keeps every committed row across a power cut, so
a store that loses rows on this filesystem loses them on its own account.

Run: python tests/power/test_lazyfs.py -v   (the mounted tests need /dev/fuse and fuse3)
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lazyfs  # noqa: E402
import volume  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lazyfs.py")


class Disk:
    """A backing directory and the volumes mounted over it, one "boot" after another."""

    def __init__(self, test: unittest.TestCase, metadata: str = "strict"):
        self.tmp = tempfile.TemporaryDirectory()
        test.addCleanup(self.tmp.cleanup)
        self.backing = os.path.join(self.tmp.name, "backing")
        self.store = os.path.join(self.tmp.name, "backing.inodes")
        self.metadata = metadata
        self.vol = volume.Volume(self.backing, self.store, metadata)

    def reboot(self) -> volume.Volume:
        self.vol.crash()
        self.vol = volume.Volume(self.backing, self.store, self.metadata)
        return self.vol

    def write(self, path: str, data: bytes, offset: int = 0, sync: bool = False) -> None:
        v = self.vol
        try:
            fh = v.open(path, os.O_RDWR)
        except OSError:
            fh = v.create(path, 0o644, os.O_RDWR)
        node = v.node(path, fh)
        v.write(node, data, offset)
        if sync:
            v.fsync(node, datasync=True)
        v.release(fh)

    def read(self, path: str) -> bytes:
        node = self.vol.lookup(path)
        return self.vol.read(node, node.size + 1, 0)

    def syncdir(self, path: str = "/") -> None:
        self.vol.fsyncdir(self.vol.lookup(path))

    def exists(self, path: str) -> bool:
        try:
            self.vol.lookup(path)
            return True
        except OSError:
            return False


class ModelTests(unittest.TestCase):
    def test_synced_data_and_names_survive(self):
        d = Disk(self)
        d.write("/a", b"hello", sync=True)
        d.syncdir()
        d.reboot()
        self.assertEqual(d.read("/a"), b"hello")

    def test_unsynced_data_is_dropped_and_reads_saw_it_before(self):
        d = Disk(self)
        d.write("/a", b"durable", sync=True)
        d.syncdir()
        d.write("/a", b"LOST!!!", offset=7)
        self.assertEqual(d.read("/a"), b"durableLOST!!!")
        d.reboot()
        self.assertEqual(d.read("/a"), b"durable")

    def test_a_synced_file_whose_directory_was_not_synced_is_gone(self):
        d = Disk(self)
        d.write("/new", b"data", sync=True)
        d.reboot()
        self.assertFalse(d.exists("/new"))

    def test_a_durable_name_of_a_never_synced_file_is_an_empty_file(self):
        d = Disk(self)
        d.write("/empty", b"never synced")
        d.syncdir()
        d.reboot()
        self.assertEqual(d.read("/empty"), b"")

    def test_eager_metadata_makes_names_durable_at_once(self):
        d = Disk(self, "eager")
        d.write("/conf", b"not synced")
        d.reboot()
        self.assertTrue(d.exists("/conf"))
        self.assertEqual(d.read("/conf"), b"")

    def test_rename_over_an_existing_file_is_durable_only_with_its_directory(self):
        d = Disk(self)
        d.write("/current", b"old", sync=True)
        d.syncdir()
        d.write("/tmp", b"new", sync=True)
        d.vol.rename("/tmp", "/current")
        self.assertEqual(d.read("/current"), b"new")
        d.reboot()
        self.assertEqual(d.read("/current"), b"old")
        self.assertFalse(d.exists("/tmp"))
        d.write("/tmp", b"new", sync=True)
        d.vol.rename("/tmp", "/current")
        d.syncdir()
        d.reboot()
        self.assertEqual(d.read("/current"), b"new")
        self.assertFalse(d.exists("/tmp"))

    def test_truncate_then_extend_reads_zeros_and_syncs_that(self):
        d = Disk(self)
        d.write("/f", b"x" * 10000, sync=True)
        d.syncdir()
        node = d.vol.lookup("/f")
        d.vol.truncate(node, 100)
        d.vol.truncate(node, 9000)
        self.assertEqual(d.read("/f"), b"x" * 100 + bytes(8900))
        d.reboot()
        self.assertEqual(d.read("/f"), b"x" * 10000)
        node = d.vol.lookup("/f")
        d.vol.truncate(node, 100)
        d.vol.write(node, b"y", 5000)
        d.vol.fsync(node, datasync=False)
        d.reboot()
        self.assertEqual(d.read("/f"), b"x" * 100 + bytes(4900) + b"y")

    def test_sparse_writes_far_out_and_large_files(self):
        d = Disk(self)
        big = os.urandom(3 * 1024 * 1024 + 123)
        d.write("/big", big, offset=0)
        d.write("/big", b"tail", offset=1 << 30)
        node = d.vol.lookup("/big")
        self.assertEqual(node.size, (1 << 30) + 4)
        self.assertEqual(d.vol.read(node, 8, (1 << 30) - 4), bytes(4) + b"tail")
        d.vol.fsync(node, datasync=True)
        d.syncdir()
        d.reboot()
        node = d.vol.lookup("/big")
        self.assertEqual(d.vol.read(node, len(big), 0), big)
        self.assertEqual(d.vol.read(node, 8, (1 << 30) - 4), bytes(4) + b"tail")

    def test_an_unlinked_open_file_keeps_its_durable_name_until_the_directory_is_synced(self):
        d = Disk(self)
        d.write("/log", b"v1", sync=True)
        d.syncdir()
        fh = d.vol.open("/log", os.O_RDWR)
        node = d.vol.node(None, fh)
        d.vol.unlink("/log")
        d.vol.write(node, b"v2", 0)
        d.vol.fsync(node, datasync=True)
        self.assertEqual(d.vol.read(node, 10, 0), b"v2")
        d.reboot()
        self.assertEqual(d.read("/log"), b"v2")
        d.vol.unlink("/log")
        d.syncdir()
        d.reboot()
        self.assertFalse(d.exists("/log"))

    def test_a_new_directory_needs_its_parent_synced_and_its_files_need_it_synced(self):
        d = Disk(self)
        d.vol.mkdir("/sub", 0o755)
        d.write("/sub/f", b"data", sync=True)
        d.syncdir("/sub")
        d.reboot()
        self.assertFalse(d.exists("/sub"), "the parent was never synced")
        d.vol.mkdir("/sub", 0o755)
        d.syncdir("/")
        d.write("/sub/f", b"data", sync=True)
        d.reboot()
        self.assertTrue(d.exists("/sub"))
        self.assertFalse(d.exists("/sub/f"), "/sub was never synced")
        d.write("/sub/f", b"data", sync=True)
        d.syncdir("/sub")
        d.reboot()
        self.assertEqual(d.read("/sub/f"), b"data")

    def test_a_rename_between_directories_is_one_step(self):
        d = Disk(self)
        d.vol.mkdir("/a", 0o755)
        d.vol.mkdir("/b", 0o755)
        d.syncdir("/")
        d.write("/a/f", b"data", sync=True)
        d.syncdir("/a")
        d.vol.rename("/a/f", "/b/f")
        d.syncdir("/b")
        d.reboot()
        self.assertTrue(d.exists("/b/f"))
        self.assertFalse(d.exists("/a/f"), "syncing /b made the whole rename durable")

    def test_rmdir_and_rename_rules(self):
        d = Disk(self)
        d.vol.mkdir("/a", 0o755)
        d.write("/a/f", b"")
        with self.assertRaises(OSError) as e:
            d.vol.rmdir("/a")
        self.assertEqual(e.exception.errno, errno.ENOTEMPTY)
        with self.assertRaises(OSError) as e:
            d.vol.rename("/a", "/a/inner")
        self.assertEqual(e.exception.errno, errno.EINVAL)
        d.write("/g", b"")
        with self.assertRaises(OSError) as e:
            d.vol.rename("/g", "/a/f", volume.RENAME_NOREPLACE)
        self.assertEqual(e.exception.errno, errno.EEXIST)

    def test_after_the_cut_everything_fails(self):
        d = Disk(self)
        d.write("/a", b"x")
        lost = d.vol.crash()
        self.assertEqual([f["path"] for f in lost["unsynced_files"]], ["/a"])
        self.assertEqual(lost["pending_names"], [{"path": "/a", "change": "created, not durable"}])
        with self.assertRaises(OSError) as e:
            d.vol.alive()
        self.assertEqual(e.exception.errno, errno.EIO)


class Mount:
    """A real mount of lazyfs.py over a backing directory, as the drill runs it."""

    def __init__(self, root: str, metadata: str = "strict"):
        self.backing = os.path.join(root, "backing")
        self.mnt = os.path.join(root, "mnt")
        self.sock = os.path.join(root, "ctl.sock")
        self.metadata = metadata
        os.makedirs(self.mnt, exist_ok=True)
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            [sys.executable, SCRIPT, "mount", "--backing", self.backing, "--mountpoint", self.mnt,
             "--control", self.sock, "--metadata", self.metadata],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if lazyfs.ctl(self.sock, "ping")["ok"]:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"lazyfs exited: {self.proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise RuntimeError("lazyfs did not mount within 20s")
            time.sleep(0.02)

    def crash(self) -> dict:
        return lazyfs.ctl(self.sock, "crash")

    def __exit__(self, *exc):
        for _ in range(100):
            if subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        else:
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        self.proc.wait(timeout=20)
        self.proc.stderr.close()


@unittest.skipIf(lazyfs.check(), "FUSE is not usable here: " + "; ".join(lazyfs.check()))
class MountedTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, m: Mount, name: str) -> str:
        return os.path.join(m.mnt, name)

    def test_syscalls_keep_what_was_synced(self):
        with Mount(self.root) as m:
            fd = os.open(self.path(m, "kept"), os.O_CREAT | os.O_RDWR, 0o644)
            os.pwrite(fd, b"synced", 0)
            os.fdatasync(fd)
            os.pwrite(fd, b" and not", 6)
            with open(self.path(m, "kept"), "rb") as f:
                self.assertEqual(f.read(), b"synced and not")
            dfd = os.open(m.mnt, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)
            with open(self.path(m, "unsynced-name"), "wb") as f:
                f.write(b"x")
                os.fsync(f.fileno())
            lost = m.crash()
            os.close(fd)
            self.assertIn("/unsynced-name", [n["path"] for n in lost["pending_names"]])
        with Mount(self.root) as m:
            self.assertEqual(sorted(os.listdir(m.mnt)), ["kept"])
            with open(self.path(m, "kept"), "rb") as f:
                self.assertEqual(f.read(), b"synced")
            st = os.statvfs(m.mnt)
            self.assertGreater(st.f_bsize, 0)
            m.crash()

    def test_locks_work(self):
        with Mount(self.root) as m:
            with open(self.path(m, "db"), "wb") as a, open(self.path(m, "db"), "rb") as b:
                fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
                with self.assertRaises(BlockingIOError):
                    fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
            m.crash()

    def test_rename_unlink_open_truncate_through_the_kernel(self):
        with Mount(self.root) as m:
            os.mkdir(self.path(m, "d"))
            with open(self.path(m, "d/tmp"), "wb") as f:
                f.write(b"abc" * 5000)
                f.truncate(10)
                f.flush()
                os.fsync(f.fileno())
            os.rename(self.path(m, "d/tmp"), self.path(m, "d/final"))
            fd = os.open(self.path(m, "d/final"), os.O_RDWR)
            os.unlink(self.path(m, "d/final"))
            os.ftruncate(fd, 3)
            self.assertEqual(os.pread(fd, 100, 0), b"abc")
            os.close(fd)
            self.assertEqual(os.listdir(self.path(m, "d")), [])
            m.crash()

    def sqlite_rows_after_a_cut(self, journal: str, synchronous: str) -> int:
        """Commits 200 rows one transaction each, starts a 201st, cuts the power, counts."""
        root = os.path.join(self.root, f"{journal}-{synchronous}")
        os.makedirs(root)
        with Mount(root) as m:
            db = sqlite3.connect(self.path(m, "orders.db"), isolation_level=None)
            db.execute(f"PRAGMA journal_mode={journal}")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, body TEXT)")
            for i in range(200):
                db.execute("INSERT INTO orders (body) VALUES (?)", (f"order {i}" * 20,))
            db.execute("BEGIN")
            db.execute("INSERT INTO orders (body) VALUES ('never committed')")
            lost = m.crash()
            self.assertTrue(lost["unsynced_files"] or lost["pending_names"], lost)
            # The power is off: closing can only fail, but it lets the mount go.
            try:
                db.close()
            except sqlite3.Error:
                pass
        with Mount(root) as m:
            db = sqlite3.connect(self.path(m, "orders.db"))
            try:
                self.assertEqual(db.execute("PRAGMA integrity_check").fetchone(), ("ok",))
                return db.execute("SELECT count(*) FROM orders").fetchone()[0]
            finally:
                db.close()
                m.crash()

    def test_sqlite_keeps_every_committed_row_when_it_syncs_what_it_must(self):
        # The control experiment: a store that fsyncs its files and directories loses nothing.
        self.assertEqual(self.sqlite_rows_after_a_cut("WAL", "FULL"), 200)
        self.assertEqual(self.sqlite_rows_after_a_cut("DELETE", "EXTRA"), 200)

    def test_sqlite_delete_journal_at_full_loses_its_last_commit_as_documented(self):
        # SQLite's documentation of synchronous=EXTRA: FULL in DELETE mode does not sync the
        # directory after unlinking the journal, so a power cut right after a commit rolls it
        # back. This filesystem shows exactly that: names need their directory synced.
        self.assertEqual(self.sqlite_rows_after_a_cut("DELETE", "FULL"), 199)

    def test_writes_without_fsync_are_lost_even_when_the_writer_closed_the_file(self):
        with Mount(self.root, metadata="eager") as m:
            with open(self.path(m, "conf"), "wb") as f:
                f.write(b"written, closed, never synced")
            m.crash()
        with Mount(self.root, metadata="eager") as m:
            self.assertEqual(os.path.getsize(self.path(m, "conf")), 0)
            m.crash()


if __name__ == "__main__":
    unittest.main()
