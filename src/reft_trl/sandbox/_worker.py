"""Sandbox worker: a namespace "keeper" plus a pre-imported "zygote" that runs one program per child process.

Started by :mod:`reft_trl.sandbox.pool` as ``python -I -S -B -X utf8 <this file> <config>`` with an empty
environment, fd 0 = command pipe, fd 1 = result pipe, fd 2 = /dev/null; the config is a hex-encoded marshal of
a dict of plain values, written by the (trusted) parent. This file is standalone (stdlib + ctypes; sympy/numpy
only in the "heavy" flavour): workers never import ``reft_trl`` or any training code.

Process tree of one worker (threat model: ``docs/sandbox.md``)::

    trainer (parent) -- keeper: oom_score_adj 1000; unshare(user, net, mount, ipc, uts); private tmpfs for
                        |         scratch; unshare(pid); fork; then waits for the zygote and mirrors its exit.
                        |         Dies with the trainer (parent-death signal) and kills the zygote when the
                        |         command pipe hangs up (see _die_with_parent, _keep)
                        +-- zygote: pid 1 of the worker's pid namespace, so every program dies with it; dies with
                            |       the keeper (parent-death signal); /proc remounted; imports; compiler
                            |       warm-up; rlimits, no_new_privs, non-dumpable, Landlock + seccomp layers,
                            |       empty environ; gc.freeze(); serves jobs
                            +-- child (one per program): clone(CLONE_NEWPID | CLONE_PIDFD) with cwd = a scratch
                                slot, so pid 1 of its own pid namespace; RLIMIT_CPU, Landlock (its slot),
                                close_range, capabilities dropped; exec(code) + solution() + conversion; write
                                fd 3; _exit. (Other modes when the kernel lacks something: see Zygote.)
                                Up to ``pure_batch`` programs that ``is_pure`` accepts share one child, one after
                                the other, each in a fresh namespace (see Zygote._start_children).

Wire protocol (all integers little-endian). Every frame is ``u32 length`` + body.
parent -> zygote: ``b"J" u32 job_id f64 timeout_s program_utf8`` (a job) or ``b"Q"`` (quit when the queue is done).
End of file (the parent closed the pool, or died): kill every program, start no other, exit.
zygote -> parent: ``b"H" json`` (hello: isolation report), ``b"K" json`` (from the keeper: zygote pid),
``b"R" u32 job_id u8 status f64 seconds value`` with value ``b"F" f64`` | ``b"S" utf8`` | ``b"N"``.
child -> zygote (one private pipe per child, read only after the child has exited):
``b"F" f64`` | ``b"S" utf8`` | ``b"N"`` (returned a non-answer) | ``b"E"`` (raised). Anything else is a crash.
A child running several pure programs writes one frame per program, ``u32 length`` + ``f64 end time`` + value,
read at its exit or at a deadline (each program's deadline counts from the end of the one before).
Nothing crossing a process boundary is ever unpickled.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import json
import marshal
import os
import resource
import select
import signal
import struct
import sys
import time
from collections import deque

# ---------------------------------------------------------------------------------------------------------------
# Constants shared with sandbox.py (kept in sync by tests/test_sandbox.py::test_protocol_constants_in_sync).
ST_OK, ST_ERROR, ST_TIMEOUT, ST_CRASH, ST_SETUP = 0, 1, 2, 3, 4
SETUP_EXIT_CODE = 111
_HDR = struct.Struct("<I")
_JOB = struct.Struct("<Id")
_RES = struct.Struct("<IBd")
_F64 = struct.Struct("<d")
MAX_FRAME = 64 << 20
MAX_CHILD_PAYLOAD = 1 + 4 * 100_000  # generous upper bound; the real cap is max_output_chars

# Linux constants.
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
CLONE_THREAD, CLONE_PIDFD = 0x00010000, 0x00001000
CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWCGROUP = 0x08000000, 0x04000000, 0x02000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 4, 38, 22
SECCOMP_MODE_FILTER = 2
SYS_CLOSE_RANGE, SYS_LL_CREATE, SYS_LL_ADD_RULE, SYS_LL_RESTRICT = 436, 444, 445, 446
LL_CREATE_RULESET_VERSION = 1
LL_RULE_PATH_BENEATH = 1
# Landlock filesystem rights (ABI 1..5).
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
LL_REMOVE_DIR, LL_REMOVE_FILE, LL_MAKE_DIR, LL_MAKE_REG, LL_TRUNCATE = 1 << 4, 1 << 5, 1 << 7, 1 << 8, 1 << 14
LL_FS_ABI1 = (1 << 13) - 1
LL_REFER, LL_IOCTL_DEV = 1 << 13, 1 << 15
LL_NET_BIND_TCP, LL_NET_CONNECT_TCP = 1, 2
LL_SCOPE_ABSTRACT_UNIX, LL_SCOPE_SIGNAL = 1, 2
O_PATH = getattr(os, "O_PATH", 0o10000000)

# Per-architecture syscall numbers. "zygote" syscalls are denied to the zygote and so to every program;
# "child" ones are additionally denied to programs; "signal_self" ones are allowed to programs only towards their
# own pid. arm64 uses the asm-generic numbering. A wrong number silently allows a syscall: where libseccomp is
# installed, tests/test_sandbox.py::test_syscall_numbers_match_libseccomp checks every one, for both architectures.
# fmt: off
_ARCH = {
    "x86_64": {
        "audit": 0xC000003E,
        "x32_bit": 0x40000000,
        "clone": 56,
        "clone3": 435,
        "capset": 126,
        "prlimit64": 302,
        "fcntl": 72,
        "ioctl": 16,
        "zygote": dict(
            socket=41, socketpair=53, fork=57, vfork=58, execve=59, ptrace=101, personality=135, pivot_root=155,
            chroot=161, acct=163, mount=165, umount2=166, swapon=167, swapoff=168, reboot=169, init_module=175,
            delete_module=176, quotactl=179, kexec_load=246, add_key=248, request_key=249, keyctl=250,
            unshare=272, setns=308, process_vm_readv=310, process_vm_writev=311, kcmp=312, finit_module=313,
            kexec_file_load=320, bpf=321, execveat=322, userfaultfd=323, perf_event_open=298, io_uring_setup=425,
            io_uring_enter=426, io_uring_register=427, open_tree=428, move_mount=429, fsopen=430, fsconfig=431,
            fsmount=432, fspick=433, pidfd_getfd=438, mount_setattr=442,
            # SysV IPC and POSIX message queues outlive a program (in the worker's IPC namespace): no channel
            # from one program to the next.
            shmget=29, shmat=30, shmctl=31, semget=64, semop=65, semctl=66, shmdt=67, msgget=68, msgsnd=69,
            msgrcv=70, msgctl=71, semtimedop=220, mq_open=240, mq_unlink=241, mq_timedsend=242,
            mq_timedreceive=243, mq_notify=244, mq_getsetattr=245,
        ),
        "child": dict(tkill=200, pidfd_send_signal=424, pidfd_open=434),
        "signal_self": dict(kill=62, tgkill=234, rt_sigqueueinfo=129, rt_tgsigqueueinfo=297),
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "x32_bit": None,
        "clone": 220,
        "clone3": 435,
        "capset": 91,
        "prlimit64": 261,
        "fcntl": 25,
        "ioctl": 29,
        "zygote": dict(
            socket=198, socketpair=199, execve=221, ptrace=117, personality=92, pivot_root=41, chroot=51, acct=89,
            mount=40, umount2=39, swapon=224, swapoff=225, reboot=142, init_module=105, delete_module=106,
            quotactl=60, kexec_load=104, add_key=217, request_key=218, keyctl=219, unshare=97, setns=268,
            process_vm_readv=270, process_vm_writev=271, kcmp=272, finit_module=273, kexec_file_load=294, bpf=280,
            execveat=281, userfaultfd=282, perf_event_open=241, io_uring_setup=425, io_uring_enter=426,
            io_uring_register=427, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432,
            fspick=433, pidfd_getfd=438, mount_setattr=442,
            mq_open=180, mq_unlink=181, mq_timedsend=182, mq_timedreceive=183, mq_notify=184, mq_getsetattr=185,
            msgget=186, msgctl=187, msgrcv=188, msgsnd=189, semget=190, semctl=191, semtimedop=192, semop=193,
            shmget=194, shmctl=195, shmat=196, shmdt=197,
        ),
        "child": dict(tkill=130, pidfd_send_signal=424, pidfd_open=434),
        "signal_self": dict(kill=129, tgkill=131, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240),
    },
}
# fmt: on

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
# Without errno bookkeeping, for the few calls a child makes before its program (fewer pages touched).
_libc_no_errno = ctypes.CDLL(None)
_libc_no_errno.syscall.restype = ctypes.c_long
_libc_no_errno.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
# PyDLL keeps the GIL across the call: required for a raw clone() so that the child resumes Python safely.
_libc_keep_gil = ctypes.PyDLL(None, use_errno=True)
_libc_keep_gil.syscall.restype = ctypes.c_long
_libc_keep_gil_no_errno = ctypes.PyDLL(None)
_libc_keep_gil_no_errno.syscall.restype = ctypes.c_long


def _oserr(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def _unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        raise _oserr("unshare")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if _libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise _oserr(f"mount {target}")


def _prctl(option: int, arg: int = 0) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        raise _oserr(f"prctl({option})")


# ---------------------------------------------------------------------------------------------------------------
# Landlock


class _LLRulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _LLPathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """Landlock ABI version of the running kernel, or 0 when unsupported."""
    v = _libc.syscall(SYS_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(LL_CREATE_RULESET_VERSION))
    return max(int(v), 0)


class Landlock:
    """Ruleset factory: read-only access to the interpreter's files, read-write access to one scratch dir."""

    def __init__(self, abi: int, read_paths: list[str], dev_paths: list[str]):
        self.abi = abi
        fs = LL_FS_ABI1
        if abi >= 2:
            fs |= LL_REFER
        if abi >= 3:
            fs |= LL_TRUNCATE
        if abi >= 5:
            fs |= LL_IOCTL_DEV
        self.handled_fs = fs
        self.handled_net = (LL_NET_BIND_TCP | LL_NET_CONNECT_TCP) if abi >= 4 else 0
        self.scoped = (LL_SCOPE_ABSTRACT_UNIX | LL_SCOPE_SIGNAL) if abi >= 6 else 0
        self.attr_size = 8 if abi < 4 else (16 if abi < 6 else 24)
        self.ro: list[tuple[int, int]] = []  # (O_PATH fd, rights), opened once in the zygote
        ro_dir, ro_file = LL_READ_FILE | LL_READ_DIR, LL_READ_FILE
        for p in read_paths:
            self._add_fixed(p, ro_dir if os.path.isdir(p) else ro_file)
        for p in dev_paths:  # /dev/null: read + write (the fds 0-2 already point there)
            self._add_fixed(p, LL_READ_FILE | LL_WRITE_FILE)

    def _add_fixed(self, path: str, rights: int) -> None:
        try:
            fd = os.open(path, O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        self.ro.append((fd, rights & self.handled_fs))

    def ruleset(self, rw_dirs: list[str]) -> int:
        """A ruleset fd: the read-only rules plus read-write access beneath each of ``rw_dirs``."""
        attr = _LLRulesetAttr(self.handled_fs, self.handled_net, self.scoped)
        rfd = _libc.syscall(SYS_LL_CREATE, ctypes.byref(attr), ctypes.c_size_t(self.attr_size), ctypes.c_uint32(0))
        if rfd < 0:
            raise _oserr("landlock_create_ruleset")
        rw = LL_READ_FILE | LL_READ_DIR | LL_WRITE_FILE | LL_REMOVE_DIR | LL_REMOVE_FILE | LL_MAKE_DIR | LL_MAKE_REG
        if self.abi >= 3:
            rw |= LL_TRUNCATE
        fds = [os.open(d, O_PATH | os.O_CLOEXEC) for d in rw_dirs]
        try:
            for fd, rights in [*self.ro, *((fd, rw) for fd in fds)]:
                rule = _LLPathBeneath(rights, fd)
                r = _libc.syscall(
                    SYS_LL_ADD_RULE,
                    ctypes.c_int(rfd),
                    ctypes.c_int(LL_RULE_PATH_BENEATH),
                    ctypes.byref(rule),
                    ctypes.c_uint32(0),
                )
                if r != 0:
                    raise _oserr("landlock_add_rule")
        finally:
            for fd in fds:
                os.close(fd)
        os.set_inheritable(rfd, False)
        return int(rfd)


def _landlock_restrict(ruleset_fd: int) -> None:
    if _libc.syscall(SYS_LL_RESTRICT, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)) != 0:
        raise _oserr("landlock_restrict_self")


# ---------------------------------------------------------------------------------------------------------------
# seccomp-bpf (deny-list with argument checks; default allow)

_BPF_LD_W_ABS, _BPF_JEQ, _BPF_JGE, _BPF_JSET, _BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS, _RET_EPERM, _RET_ENOSYS = (
    0x7FFF0000,
    0x80000000,
    0x00050000 | errno.EPERM,
    0x00050000 | errno.ENOSYS,
)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def build_seccomp(arch: str, layer: str, self_pid: int = 0):
    """Compile one seccomp layer (a deny-list with argument checks; anything else is allowed).

    Every layer: EPERM for socket/socketpair (no networking, not even AF_UNIX), fork/vfork (glibc forks with
    clone), execve, ptrace and cross-process memory access, namespace, mount, keyring, bpf, perf, io_uring, SysV
    IPC, mqueue, module and kexec syscalls, and for F_SETOWN/FIOSETOWN (SIGIO to another process); ENOSYS for
    clone3 (its flags are in memory BPF cannot read; glibc falls back to clone); foreign syscall ABIs (i386 via
    int 0x80, x32) kill the process. Then:

    - "zygote": nothing more (the zygote and, inherited, programs that add the "child" layer).
    - "child": clone without CLONE_THREAD is refused (threads are allowed: they die with the process), as are
      tkill and pidfd signalling; kill/tgkill/rt_(tg)sigqueueinfo only towards ``self_pid``.
    - "pidns" (the zygote when every program is pid 1 of its own pid namespace, so one filter serves all): clone
      only with CLONE_THREAD, or with CLONE_NEWPID but not CLONE_NEWUSER (programs hold no capabilities, so only
      the zygote can do that); signals only to pid 1, i.e. to oneself; tkill refused. The zygote kills through
      pidfds. No per-program filter is needed: installing one costs a child 0.2-0.4 ms (JIT, mitigations).
    """
    spec = _ARCH[arch]
    prog: list[list] = []  # [code, jt, jf, k]; jt/jf may be label names (forward jumps only)
    labels: dict[str, int] = {}

    def emit(code, k, jt=0, jf=0):
        prog.append([code, jt, jf, k])

    emit(_BPF_LD_W_ABS, 4)  # seccomp_data.arch
    emit(_BPF_JEQ, spec["audit"], jt=0, jf="kill")
    emit(_BPF_LD_W_ABS, 0)  # seccomp_data.nr
    if spec["x32_bit"]:
        emit(_BPF_JGE, spec["x32_bit"], jt="kill", jf=0)
    emit(_BPF_JEQ, spec["clone3"], jt="enosys", jf=0)
    if layer in ("zygote", "pidns"):
        for nr in spec["zygote"].values():
            emit(_BPF_JEQ, nr, jt="deny", jf=0)
        emit(_BPF_JEQ, spec["fcntl"], jt="fcntl", jf=0)
        emit(_BPF_JEQ, spec["ioctl"], jt="ioctl", jf=0)
    if layer in ("child", "pidns"):
        emit(_BPF_JEQ, spec["clone"], jt="clone", jf=0)
        for nr in spec["signal_self"].values():
            emit(_BPF_JEQ, nr, jt="self_only", jf=0)
        for name, nr in spec["child"].items():
            if layer == "child" or name == "tkill":
                emit(_BPF_JEQ, nr, jt="deny", jf=0)
    emit(_BPF_RET, _RET_ALLOW)
    if layer in ("zygote", "pidns"):
        labels["fcntl"] = len(prog)
        emit(_BPF_LD_W_ABS, 24)  # args[1], low 32 bits: command
        emit(_BPF_JEQ, 8, jt="deny", jf=0)  # F_SETOWN
        emit(_BPF_JEQ, 15, jt="deny", jf="allow")  # F_SETOWN_EX
        labels["ioctl"] = len(prog)
        emit(_BPF_LD_W_ABS, 24)  # args[1], low 32 bits: request
        emit(_BPF_JEQ, 0x8901, jt="deny", jf=0)  # FIOSETOWN
        emit(_BPF_JEQ, 0x8902, jt="deny", jf="allow")  # SIOCSPGRP
    if layer in ("child", "pidns"):
        labels["clone"] = len(prog)
        emit(_BPF_LD_W_ABS, 16)  # args[0], low 32 bits: clone flags
        if layer == "child":
            emit(_BPF_JSET, CLONE_THREAD, jt="allow", jf="deny")
        else:
            emit(_BPF_JSET, CLONE_THREAD, jt="allow", jf=0)
            emit(_BPF_JSET, CLONE_NEWUSER, jt="deny", jf=0)
            emit(_BPF_JSET, CLONE_NEWPID, jt="allow", jf="deny")
        labels["self_only"] = len(prog)
        emit(_BPF_LD_W_ABS, 16)  # args[0], low 32 bits: pid / tgid
        emit(_BPF_JEQ, (1 if layer == "pidns" else self_pid) & 0xFFFFFFFF, jt="allow", jf="deny")
    labels["deny"] = len(prog)
    emit(_BPF_RET, _RET_EPERM)
    labels["enosys"] = len(prog)
    emit(_BPF_RET, _RET_ENOSYS)
    labels["kill"] = len(prog)
    emit(_BPF_RET, _RET_KILL_PROCESS)
    labels["allow"] = len(prog)
    emit(_BPF_RET, _RET_ALLOW)
    arr = (_SockFilter * len(prog))()
    for i, (code, jt, jf, k) in enumerate(prog):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        if not (0 <= jt < 256 and 0 <= jf < 256):
            raise ValueError("seccomp program too long for 8-bit jumps")
        arr[i] = _SockFilter(code, jt, jf, k)
    fprog = _SockFprog(len(prog), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    self_idx = labels["self_only"] + 1 if layer == "child" else -1
    return fprog, arr, self_idx  # keep ``arr`` alive as long as ``fprog``; arr[self_idx].k is the own pid


def _seccomp_install(fprog) -> None:
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise _oserr("seccomp")


# ---------------------------------------------------------------------------------------------------------------
# Keeper: namespaces, then fork the zygote as pid 1 of a new pid namespace.


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _setup_namespaces(cfg: dict, isolation: dict, missing: dict) -> None:
    disabled = set(cfg.get("disable", ()))
    uid, gid = os.getuid(), os.getgid()
    namespaces = (
        "user_namespace",
        "network_namespace",
        "mount_namespace",
        "ipc_namespace",
        "uts_namespace",
        "pid_namespace",
    )
    for key in (*namespaces, "private_tmpfs"):
        isolation[key] = False
    if "namespaces" in disabled:
        for key in namespaces:
            missing[key] = "disabled by caller"
        return
    mapped = True
    try:
        _unshare(CLONE_NEWUSER)
        isolation["user_namespace"] = True
    except OSError as e:  # userns disabled (sysctl, AppArmor, container policy...): root may still unshare below
        missing["user_namespace"] = str(e)
    if isolation["user_namespace"]:
        try:
            with contextlib.suppress(OSError):
                _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
            _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError as e:
            # E.g. uid 0 without CAP_SETFCAP (Linux >= 5.12 refuses to map host root). We keep the namespace
            # (and our capabilities inside it), but files we create on a filesystem owned by it would have no
            # owner (EOVERFLOW): scratch space then stays on the host filesystem.
            mapped = False
            missing["private_tmpfs"] = f"uid/gid map refused ({e})"
    for key, flag in (
        ("network_namespace", CLONE_NEWNET),
        ("mount_namespace", CLONE_NEWNS),
        ("ipc_namespace", CLONE_NEWIPC),  # SysV shm/sem/msg and POSIX mqueues of the host are out of reach
        ("uts_namespace", CLONE_NEWUTS),
    ):
        isolation[key] = False
        try:
            _unshare(flag)
            isolation[key] = True
        except OSError as e:
            missing[key] = str(e)
    with contextlib.suppress(OSError):  # hides the host's cgroup paths; nothing depends on it
        _unshare(CLONE_NEWCGROUP)
    if isolation["mount_namespace"]:
        try:
            _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
            if mapped:
                size = int(cfg.get("tmpfs_mb", 64))
                _mount("tmpfs", cfg["scratch"], "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={size}m,mode=0700")
                isolation["private_tmpfs"] = True
        except OSError as e:
            missing["private_tmpfs"] = str(e)
    try:
        _unshare(CLONE_NEWPID)
        isolation["pid_namespace"] = True
    except OSError as e:
        missing["pid_namespace"] = str(e)


def _send(fd: int, body: bytes) -> None:
    _send_raw(fd, _frame(body))


def main() -> None:
    cfg = marshal.loads(bytes.fromhex(sys.argv[1]))  # written by the (trusted) parent
    # Started with -S (no site: .pth hooks would cost ~2.4 MB per zygote, and fork time grows with memory): the
    # parent tells us where site-packages is. Our own directory is not on sys.path.
    sys.path[:] = [p for p in sys.path if p != os.path.dirname(os.path.abspath(__file__))]
    sys.path.extend(p for p in cfg.get("sys_path", []) if p not in sys.path)
    # Native thread pools must stay single-threaded: unshare(CLONE_NEWUSER) and our raw clone() need that.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = "1"
    # Move the pipes away from 0/1 (a program's stdin/stdout must never be the control channel).
    cmd_fd, out_fd = 10, 11  # free at start-up (the parent passes no other descriptor)
    os.dup2(0, cmd_fd, inheritable=False)
    os.dup2(1, out_fd, inheritable=False)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2, 3):  # fd 3 stays a placeholder: a child's result pipe is always dup2'ed onto it
        os.dup2(null, fd, inheritable=True)
    os.close(null)
    _die_with_parent(cfg)
    isolation: dict = {"process_per_program": True, "rlimits": True, "wall_clock_timeout": True}
    missing: dict = {}
    # If memory runs out, the kernel's OOM killer should take a sandbox process, never the trainer. Raising
    # one's own oom_score_adj needs no privilege; zygote and programs inherit it.
    with contextlib.suppress(OSError):
        _write_file("/proc/self/oom_score_adj", "1000")
    _setup_namespaces(cfg, isolation, missing)
    _die_with_parent(cfg)  # again: a change of credentials (the user namespace) may clear the parent-death signal
    gc.collect()
    with contextlib.suppress(AttributeError):
        _libc.malloc_trim(0)  # free heap left by start-up: the zygote (forked next) should not inherit it
    if isolation["pid_namespace"]:
        lifeline_r, lifeline_w = os.pipe()  # the keeper holds the write end until it dies
        pid = os.fork()
        if pid:
            os.close(lifeline_r)
            _keep(pid, cmd_fd, out_fd)  # never returns
        os.close(lifeline_w)
        # The zygote dies with the keeper, and with it its whole pid namespace: every program. getppid() is 0 for
        # the init of a pid namespace, so the race with a keeper that died before the prctl is closed by the
        # lifeline pipe: EOF there means the keeper is gone.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([lifeline_r], [], [], 0)[0]:
            os._exit(0)
        os.close(lifeline_r)
    else:
        _send(out_fd, b"K" + _json({"zygote_pid": os.getpid()}))
    try:
        Zygote(cfg, cmd_fd, out_fd, isolation, missing).serve()
    except BaseException as e:  # report, then die: the parent scores pending jobs None and restarts us
        with contextlib.suppress(OSError):
            _send(out_fd, b"H" + _json({"fatal": f"{type(e).__name__}: {e}"}))
        os._exit(70)
    os._exit(0)


def _die_with_parent(cfg: dict) -> None:
    """Keeper (or zygote without a pid namespace): die with the trainer, whatever it dies of.

    The parent-death signal fires when the parent *thread* that spawned us exits, so the parent asks for it only
    when that thread is its main thread (whose exit is the process's). In every case the trainer's death also
    closes the command pipe, which the zygote (end of file) and the keeper (hang-up, see _keep) act on. A parent
    that died before the prctl has already handed us to another process: getppid() tells.
    """
    if cfg.get("pdeathsig"):
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if cfg.get("parent_pid") and os.getppid() != cfg["parent_pid"]:
        os._exit(0)


def _keep(pid: int, cmd_fd: int, out_fd: int) -> None:
    """The keeper's life after forking the zygote: report its pid as seen by the parent, then wait for it and
    mirror its exit. When every writer of the command pipe is gone (the trainer died, or closed the pool), kill the
    zygote at once, and with it its pid namespace, even if the zygote is busy; the zygote stops on end of file too.
    """
    with contextlib.suppress(OSError):
        _send(out_fd, b"K" + _json({"zygote_pid": pid}))
    os.close(out_fd)
    signal.signal(signal.SIGTERM, lambda *_: (os.kill(pid, signal.SIGKILL), os._exit(143)))
    poller = select.poll()
    poller.register(cmd_fd, 0)  # no POLLIN (the zygote reads the commands): only POLLHUP, when no writer is left
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):  # Linux >= 5.3
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    while True:
        events = poller.poll(None if pidfd is not None else 500)
        if any(fd == cmd_fd for fd, _ev in events):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            break
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


# ---------------------------------------------------------------------------------------------------------------
# Zygote

# What the zygotes import before forking. Every resident page makes clone() and exit() dearer (about +10% per
# program for the handful of small stdlib modules programs occasionally use), so the lean zygote preloads only
# ``math``; other imports happen inside the child (Landlock lets it read the stdlib) and cost ~1-10 ms there.
LEAN_PRELOAD = ("math",)
HEAVY_PRELOAD = ("math", "fractions", "decimal", "numpy", "sympy")

_WARMUP = """
import math
def helper(x):
    return x * 2
def solution():
    \"\"\"warm-up\"\"\"
    a = 3.5
    b = [helper(i) for i in range(3)]
    c = {"k": a, "s": f"{a:.2f}"}
    result = math.sqrt(a) + sum(b) + len(c) - (a // 1) % 2 ** 2
    return result
"""


class _LazyModule(type(sys)):
    """``sympy`` in the lean zygote: imported inside the child on first attribute access (slow but correct)."""

    def __getattr__(self, name):
        import importlib

        mod = importlib.import_module(self.__name__)
        return getattr(mod, name)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class _Child:
    # ``jobs``: None for a child running one program; for a child running several pure programs one after the
    # other, their [(job_id, timeout, code), ...], with ``buf`` (what it wrote so far) and ``reported``.
    __slots__ = ("pid", "pidfd", "job_id", "slot", "rfd", "start", "deadline", "killed", "jobs", "buf", "reported")


class Zygote:
    """Pre-imported template process. Runs only trusted code; every program runs in a child it clones.

    Three ways to make a child, chosen at start-up (best first):

    - "pidns" (seccomp, and a user namespace or root for CLONE_NEWPID): ``clone(CLONE_NEWPID | CLONE_PIDFD)``.
      Every program is pid 1 of its own pid namespace, so one seccomp filter, installed once in the zygote and
      inherited, serves all: signals only to pid 1 (oneself), clone only for threads or by the zygote (a
      CLONE_NEWPID needs capabilities, which programs drop). Everything inheritable was set up once in the zygote
      (rlimits, no_new_privs, non-dumpable, Landlock and seccomp layers, empty environ) and the zygote sets the
      child's cwd before the clone; the child itself only sets RLIMIT_CPU, adds its Landlock layer (its scratch
      slot), closes fds and drops its capabilities: four syscalls through pre-built ctypes arguments. This
      matters: on a VM every page a child or the zygote touches after a clone costs a ~3 us copy-on-write fault,
      and installing a seccomp filter per child would cost 0.2-0.4 ms (BPF JIT, speculation mitigations).
    - "filter" (seccomp without CLONE_NEWPID): ``clone(CLONE_PIDFD)``; the zygote drops its capabilities and each
      child adds a second seccomp layer (no fork, signals only to its own pid) instead of dropping capabilities.
    - "plain" (no seccomp): ``clone(CLONE_NEWPID)`` where possible so that whatever a program forks dies with it,
      plus setsid and dropped capabilities; else ``os.fork()`` with RLIMIT_NPROC=0 and process-group kills.
    """

    def __init__(self, cfg: dict, cmd_fd: int, out_fd: int, isolation: dict, missing: dict):
        self.cfg, self.cmd_fd, self.out_fd, self.isolation, self.missing = cfg, cmd_fd, out_fd, isolation, missing
        disabled = set(cfg.get("disable", ()))
        self.max_chars = int(cfg.get("max_output_chars", 1000))
        self.slots_n = max(1, int(cfg.get("slots", 2)))
        self.is_init = os.getpid() == 1 and isolation.get("pid_namespace", False)
        self.arch = os.uname().machine
        spec = _ARCH.get(self.arch, {})
        # Private /proc for the new pid namespace (best effort; Landlock hides /proc from programs anyway).
        isolation["proc_remounted"] = False
        if self.is_init and isolation.get("mount_namespace"):
            try:
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
                isolation["proc_remounted"] = True
            except OSError as e:
                missing["proc_remounted"] = str(e)
        # Imports (the point of a zygote), then compiler warm-up: the first compile() of a process costs ~1 ms.
        kind = cfg.get("kind", "lean")
        preload = cfg.get("preload")
        if preload is None:
            preload = HEAVY_PRELOAD if kind == "heavy" else LEAN_PRELOAD
        for name in preload:
            __import__(name)
        import builtins
        import math
        import warnings

        warnings.simplefilter("ignore")  # compile() warnings about programs must not pile up in the zygote
        self.builtins, self.math = builtins, math
        self.sympy = sys.modules.get("sympy") or _LazyModule("sympy")
        for _ in range(3):
            code = compile(_WARMUP, "<program>", "exec", dont_inherit=True)
            _run_code(code, builtins, math, self.sympy, self.max_chars, warm=True)
            _encode_result("x", self.max_chars)
        # Pure programs (see is_pure) may share a child, up to pure_batch of them; their results travel in
        # frames of at most 16 + 4 * max_chars bytes, all of which must fit in the pipe (64 KiB) unread.
        self.pure_batch = max(1, min(int(cfg.get("pure_batch", 1)), 60_000 // (16 + 4 * self.max_chars)))
        if self.pure_batch > 1:
            import _ast

            self._ast_only = _ast.PyCF_ONLY_AST
            self.builtin_names = frozenset(dir(builtins))
            self.math_names = frozenset(n for n in dir(math) if not n.startswith("_"))
            for _ in range(3):
                is_pure(
                    compile(_WARMUP, "<program>", "exec", self._ast_only, True), self.builtin_names, self.math_names
                )
        os.environ.clear()  # unsetenv() too: children start with an empty environment
        self.scratch_root = cfg["scratch"]
        # Landlock: a zygote layer (read-only system, read-write scratch root) + one layer per child (its slot).
        self.landlock: Landlock | None = None
        isolation["landlock"] = False
        isolation["landlock_abi"] = 0
        if "landlock" in disabled:
            missing["landlock"] = "disabled by caller"
        else:
            abi = landlock_abi()
            isolation["landlock_abi"] = abi
            if abi <= 0:
                missing["landlock"] = "kernel without Landlock (needs Linux >= 5.13 with landlock in the LSM list)"
            else:
                self.landlock = Landlock(abi, _read_paths(cfg.get("read_paths", [])), [os.devnull])
                isolation["landlock"] = True
                if abi < 4:
                    missing["landlock_network"] = f"Landlock ABI {abi} < 4"
                if abi < 6:
                    missing["landlock_signal_scope"] = f"Landlock ABI {abi} < 6"
        isolation["landlock_network"] = bool(self.landlock and self.landlock.handled_net)
        isolation["landlock_signal_scope"] = bool(self.landlock and self.landlock.scoped)
        self.slots = [self._make_slot(i) for i in range(self.slots_n)]
        self.free_slots = list(range(self.slots_n))
        self.capset_nr = spec.get("capset")
        self.cap_hdr = _CapHeader(0x20080522, 0)
        self.cap_data = (_CapData * 2)()
        # Children drop every capability (the zygote needs CAP_SYS_ADMIN in its user namespace for CLONE_NEWPID).
        self._capset_args = None
        if self.capset_nr is not None:
            self._capset_args = (
                ctypes.c_long(self.capset_nr),
                ctypes.byref(self.cap_hdr),
                ctypes.byref(self.cap_data),
            )
        # How children are made (see the class docstring). A raw clone needs a single-threaded zygote.
        self.clone_nr = spec.get("clone")
        self._cpu_args: dict = {}
        raw_ok = self.clone_nr is not None and _thread_count() == 1
        pidns_flags = CLONE_NEWPID | CLONE_PIDFD | signal.SIGCHLD
        pidns_ok = False
        if "pid_namespace_per_program" in disabled or "namespaces" in disabled:
            missing["pid_namespace_per_program"] = "disabled by caller"
        elif not raw_ok:
            missing["pid_namespace_per_program"] = f"raw clone unavailable ({self.arch}, threads: {_thread_count()})"
        else:
            pidns_ok = self._probe_clone(pidns_flags, want_pid1=True)
        self.mode = "plain"  # no seccomp: see the class docstring
        self.use_pidfd = True
        self.seccomp_zygote = self.seccomp_child = None
        isolation["seccomp"] = False
        if "seccomp" in disabled:
            missing["seccomp"] = "disabled by caller"
        elif self.arch not in _ARCH:
            missing["seccomp"] = f"no syscall table for {self.arch}"
        else:
            try:
                if pidns_ok:
                    self.seccomp_zygote = build_seccomp(self.arch, "pidns")
                    self._probe_seccomp("pidns")
                    self.mode = "pidns"
                else:
                    self.seccomp_zygote = build_seccomp(self.arch, "zygote")
                    self.seccomp_child = build_seccomp(self.arch, "child")
                    self._probe_seccomp("filter")
                    self.mode = "filter"
                isolation["seccomp"] = True
            except OSError as e:
                self.seccomp_zygote = self.seccomp_child = None
                missing["seccomp"] = str(e)
        # With seccomp, a child's setup is a few syscalls through the pre-built ctypes arguments (see _child).
        self.prebuilt_child_setup = self.mode != "plain"
        self.per_child_pidns = pidns_ok and self.mode in ("pidns", "plain")
        isolation["pid_namespace_per_program"] = self.per_child_pidns
        if self.per_child_pidns:
            self.clone_flags = pidns_flags
        elif raw_ok and self._probe_clone(CLONE_PIDFD | signal.SIGCHLD):
            self.clone_flags = CLONE_PIDFD | signal.SIGCHLD
        else:
            self.clone_flags = 0  # os.fork()
            self.use_pidfd = hasattr(os, "pidfd_open") and self._probe_pidfd_open()
        self.forks_possible = self.mode == "plain" and not self.per_child_pidns
        # Pre-built ctypes arguments for the syscalls made between clone() and the program (see class docstring).
        if self.clone_flags:
            self._pidfd_box = ctypes.c_int(-1)
            self._clone_args = (
                ctypes.c_long(self.clone_nr),
                ctypes.c_ulong(self.clone_flags),
                None,
                ctypes.byref(self._pidfd_box),
                None,
                None,
            )
        if self.mode == "filter":
            fprog, arr, self_idx = self.seccomp_child
            self._pid_insn = arr[self_idx]  # patched with the child's pid in the child
            self._seccomp_args = tuple(
                t(v)
                for t, v in zip(
                    _libc_no_errno.prctl.argtypes, (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)
                )
            )
        # Limits every child inherits (RLIMIT_CPU is per child), then the zygote's own restrictions.
        self.as_limit = (_vm_size_kb() << 10) + (int(cfg.get("memory_limit_mb", 1024)) << 20)
        fsize = int(cfg.get("file_limit_mb", 16)) << 20
        nofile = max(64, 32 + 4 * self.slots_n)
        for res, lim in (
            (resource.RLIMIT_AS, self.as_limit),
            (resource.RLIMIT_FSIZE, fsize),
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_NOFILE, nofile),
        ):
            soft, hard = resource.getrlimit(res)
            lim = lim if hard == resource.RLIM_INFINITY else min(lim, hard)
            resource.setrlimit(res, (lim, lim))
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _prctl(PR_SET_DUMPABLE, 0)
        if self.landlock is not None:
            _landlock_restrict(self.landlock.ruleset([self.scratch_root]))
        if self.seccomp_zygote is not None:
            _seccomp_install(self.seccomp_zygote[0])
        if not self.per_child_pidns and self._capset_args:  # nothing below needs privileges any more
            _libc_no_errno.syscall(*self._capset_args)
        if self.clone_flags and not self._probe_clone(self.clone_flags, want_pid1=self.per_child_pidns):
            raise OSError(errno.EPERM, "cannot create children under the zygote's own restrictions")
        # Outside a pid namespace of its own (whose init's death would kill them), programs must die with the
        # zygote through their parent-death signal: the zygote enforces their deadlines. A child checks its parent
        # after the prctl (a zygote that died before it has handed the child to another process); the init of
        # its own pid namespace sees 0 as its parent whatever happens, so for it the check is empty.
        self.need_pdeathsig = not isolation.get("pid_namespace", False)
        self.child_ppid = 0 if self.per_child_pidns else os.getpid()
        self._compile = compile
        depends = {
            "landlock_network": "landlock",
            "landlock_signal_scope": "landlock",
            "private_tmpfs": "mount_namespace",
            "proc_remounted": "mount_namespace",
        }
        for key, value in isolation.items():
            if value is False and key not in missing:
                base = depends.get(key)
                missing[key] = f"needs {base}" if base and not isolation.get(base) else "unavailable"
        gc.collect()
        gc.freeze()  # the children's collector never walks (and so never copies) the zygote's objects
        # Hand freed heap pages back to the kernel (compiling this script alone leaves ~2 MB): clone() copies the
        # page tables of every resident page, so a smaller zygote is a cheaper fork.
        with contextlib.suppress(AttributeError):
            _libc.malloc_trim(0)

    # -- setup helpers ------------------------------------------------------------------------------------------
    def _make_slot(self, i: int):
        # A random name: a counter would tell a program how many of its predecessors touched their directory.
        path = os.path.join(self.scratch_root, f"slot{i}-{os.urandom(8).hex()}")
        os.mkdir(path, 0o700)
        ctime = os.stat(path).st_ctime_ns
        if self.landlock is None:
            return (path, -1, None, ctime)
        rfd = self.landlock.ruleset([path])
        return (path, rfd, (ctypes.c_long(SYS_LL_RESTRICT), ctypes.c_int(rfd), ctypes.c_uint32(0)), ctime)

    def _probe_clone(self, flags: int, want_pid1: bool = False) -> bool:
        box = ctypes.c_int(-1)
        pid = _libc_keep_gil.syscall(
            ctypes.c_long(self.clone_nr), ctypes.c_ulong(flags), None, ctypes.byref(box), None, None
        )
        if pid < 0:
            if want_pid1:
                self.missing["pid_namespace_per_program"] = str(_oserr("clone(CLONE_NEWPID)"))
            return False
        if pid == 0:
            os._exit(0 if (os.getpid() == 1 or not want_pid1) else 1)
        if box.value >= 0:
            os.close(box.value)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0

    def _probe_pidfd_open(self) -> bool:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        try:
            os.close(os.pidfd_open(pid))
            return True
        except OSError:
            return False
        finally:
            os.waitpid(pid, 0)

    def _probe_seccomp(self, mode: str) -> None:
        """Install the filters of ``mode`` in a throwaway child, as a program would have them, and check that
        forking and signalling another process are refused while ordinary work is not."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            ok = b""
            try:
                os.close(r)
                _prctl(PR_SET_NO_NEW_PRIVS, 1)
                _seccomp_install(self.seccomp_zygote[0])
                if mode == "filter":
                    fprog, arr, idx = self.seccomp_child
                    arr[idx].k = os.getpid()
                    _seccomp_install(fprog)
                elif self._capset_probe() != 0:
                    os._exit(1)
                for attempt in (
                    os.fork,
                    lambda: os.kill(os.getpid() + 1, 0),
                    lambda: self._raw_clone(CLONE_NEWPID | signal.SIGCHLD),
                    lambda: self._raw_clone(CLONE_NEWUSER | CLONE_NEWPID | signal.SIGCHLD),
                ):
                    try:
                        if attempt() == 0:
                            os._exit(0)  # pragma: no cover - a fork that succeeded: its child leaves at once
                        ok += b"0"
                    except PermissionError:
                        ok += b"1"
                    except OSError:
                        ok += b"0"
                if mode == "filter":
                    os.kill(os.getpid(), 0)  # signalling itself is allowed
                ok += b"1" if os.listdir("/") else b"0"  # ordinary work is
                os.write(w, ok)
            finally:
                os._exit(0)
        os.close(w)
        data = os.read(r, 16)
        os.close(r)
        os.waitpid(pid, 0)
        if data != b"11111":
            raise OSError(errno.EPERM, f"seccomp filters could not be installed or did not take effect ({data!r})")

    def _capset_probe(self) -> int:
        if self.capset_nr is None:
            return -1
        return _libc.syscall(self.capset_nr, ctypes.byref(_CapHeader(0x20080522, 0)), ctypes.byref((_CapData * 2)()))

    def _raw_clone(self, flags: int) -> int:
        pid = _libc_keep_gil.syscall(ctypes.c_long(self.clone_nr), ctypes.c_ulong(flags), None, None, None, None)
        if pid < 0:
            raise _oserr("clone")
        return pid

    def _spawn(self) -> tuple[int, int]:
        """Start a child: (pid, pidfd) in the zygote, (0, -1) in the child. pidfd is -1 when unsupported."""
        if self.clone_flags:
            pid = _libc_keep_gil_no_errno.syscall(*self._clone_args)
            if pid < 0:
                raise OSError(errno.EAGAIN, "clone failed")
            return pid, self._pidfd_box.value
        pid = os.fork()
        if pid == 0 or not self.use_pidfd:
            return pid, -1
        return pid, os.pidfd_open(pid)

    # -- main loop ----------------------------------------------------------------------------------------------
    def serve(self) -> None:
        hello = {
            "pid": os.getpid(),
            "kind": self.cfg.get("kind", "lean"),
            "isolation": self.isolation,
            "missing": self.missing,
            "slots": self.slots_n,
            "as_limit_mb": self.as_limit >> 20,
            "python": sys.version.split()[0],
            "arch": self.arch,
        }
        _send(self.out_fd, b"H" + _json(hello))
        poller = self.poller = select.poll()
        poller.register(self.cmd_fd, select.POLLIN)
        queue: deque = deque()
        self.queue = queue
        running: dict[int, _Child] = {}  # pidfd (or pid without pidfds) -> child
        self.running = running
        self.reaped: dict[int, int] = {}
        self.strays = False
        inbuf = bytearray()
        out: list[bytes] = []
        self.out = out
        self.pending = bytearray()
        self.out_registered = False
        os.set_blocking(self.out_fd, False)
        eof = hup = False
        monotonic = time.monotonic
        while True:
            if hup:  # the parent is gone: no new program, not even one that _finish put back in the queue
                queue.clear()
            elif queue and self.free_slots:
                self._start_children(queue, out)
            if eof and not running:
                break
            self._flush(out)
            timeout = None
            if running:
                timeout = max(0.0, min(c.deadline for c in running.values()) - monotonic())
                timeout = int(timeout * 1000) + 1
                if not self.use_pidfd:
                    timeout = min(timeout, 2)  # no pidfds (Linux < 5.3): poll for exits
            if self.forks_possible and self.is_init:
                self._reap_orphans()
                if self.strays:
                    timeout = 20 if timeout is None else min(timeout, 20)  # keep reaping killed strays
            events = poller.poll(timeout)
            exited = []
            for fd, _ev in events:
                if fd == self.out_fd:
                    self._flush(out)
                elif fd == self.cmd_fd:
                    data = os.read(self.cmd_fd, 1 << 16)
                    if not data:
                        eof = hup = True
                        poller.unregister(self.cmd_fd)
                        for c in running.values():  # parent gone: nobody wants these results
                            self._kill(c)
                        queue.clear()
                        continue
                    inbuf += data
                    eof = self._parse(inbuf, queue) or eof
                else:
                    exited.append(fd)
            if not self.use_pidfd:
                exited = list(running)
            for key in exited:
                self._finish(running[key], out)
            if running:
                now = monotonic()
                for c in running.values():
                    if not c.killed and now >= c.deadline and not (c.jobs and self._extend_deadline(c, now)):
                        self._kill(c)
            elif self.is_init and self.forks_possible:
                # Sweep stragglers (reachable only without seccomp): pid 1 of our namespace survives kill(-1).
                with contextlib.suppress(OSError):
                    os.kill(-1, signal.SIGKILL)
        self._flush(out)
        if self.pending:
            os.set_blocking(self.out_fd, True)
            with contextlib.suppress(OSError):  # the parent may be gone
                _send_raw(self.out_fd, bytes(self.pending))

    def _flush(self, out: list) -> None:
        """Send what we can to the parent without ever blocking: a parent that stops reading for a while must
        not stop us from enforcing deadlines. The rest waits in ``pending`` (bounded by the jobs in flight)."""
        if out:
            self.pending += b"".join(out)
            out.clear()
        if self.pending:
            try:
                del self.pending[: os.write(self.out_fd, self.pending)]
            except BlockingIOError:
                pass
            except BrokenPipeError:  # the parent is gone: EOF on the command pipe follows
                self.pending.clear()
        want = bool(self.pending)
        if want != self.out_registered:
            if want:
                self.poller.register(self.out_fd, select.POLLOUT)
            else:
                self.poller.unregister(self.out_fd)
            self.out_registered = want

    def _parse(self, inbuf: bytearray, queue: deque) -> bool:
        pos, n = 0, len(inbuf)
        quit_ = False
        while n - pos >= 4:
            (length,) = _HDR.unpack_from(inbuf, pos)
            if length > MAX_FRAME:
                raise ValueError("oversized frame from parent")
            if n - pos - 4 < length:
                break
            body = bytes(inbuf[pos + 4 : pos + 4 + length])
            pos += 4 + length
            if body[:1] == b"J":
                job_id, timeout = _JOB.unpack_from(body, 1)
                # Compiled on arrival, all jobs of a read together, not in the child: saves
                # ~180 copy-on-write faults per program. The parser only reads the text; the zygote never runs
                # program code, and it is itself inside the namespaces, Landlock and seccomp.
                pure = False
                try:
                    text = body[1 + _JOB.size :].decode("utf-8")
                    if self.pure_batch > 1:
                        tree = self._compile(text, "<program>", "exec", self._ast_only, True)
                        pure = is_pure(tree, self.builtin_names, self.math_names)
                        code = self._compile(tree, "<program>", "exec", dont_inherit=True)
                    else:
                        code = self._compile(text, "<program>", "exec", dont_inherit=True)
                except Exception:
                    self.out.append(_frame(b"R" + _RES.pack(job_id, ST_ERROR, 0.0) + b"N"))
                    continue
                queue.append((job_id, timeout, code, pure))
            elif body[:1] == b"Q":
                quit_ = True
        del inbuf[:pos]
        return quit_

    def _start_children(self, queue: deque, out: list) -> None:
        """Clone a child for each of the next jobs, as many as there are free slots, then register them."""
        batch = []
        n_free = len(self.free_slots)  # popped below: counted once, so that every free slot gets a job
        while queue and len(batch) < n_free:
            job_id, timeout, code, pure = queue.popleft()
            jobs = None
            if pure and queue and queue[0][3]:
                # Pure programs share a child: as many per child as spreads the queue over the free slots.
                free = n_free - len(batch)
                k = min(self.pure_batch, -(-(len(queue) + 1) // free))
                jobs = [(job_id, timeout, code)]
                while queue and len(jobs) < k and queue[0][3]:
                    jobs.append(queue.popleft()[:3])
                if len(jobs) == 1:
                    jobs = None
            batch.append((job_id, timeout, code, jobs, self.free_slots.pop(), os.pipe()))
        spawned = []
        monotonic = time.monotonic
        for job_id, timeout, code, jobs, slot_idx, (r, w) in batch:
            if jobs is not None:
                code, timeout = [j[2] for j in jobs], jobs[0][1]  # first deadline; see _extend_deadline
            cpu_time = timeout if jobs is None else sum(j[1] for j in jobs)
            cpu_args = self._cpu_limit_args(cpu_time) if self.prebuilt_child_setup else None
            try:
                os.chdir(self.slots[slot_idx][0])  # inherited by the child
                start = monotonic()
                pid, pidfd = self._spawn()
            except OSError:
                os.close(r)
                os.close(w)
                self.free_slots.append(slot_idx)
                for jid, _t, _c in jobs or [(job_id, timeout, code)]:
                    out.append(_frame(b"R" + _RES.pack(jid, ST_CRASH, 0.0) + b"N"))
                continue
            if pid == 0:  # ---- child: never returns
                self._child(code, timeout, self.slots[slot_idx], w, cpu_args)
            spawned.append((pid, pidfd, job_id, timeout, jobs, slot_idx, r, w, start))
        for pid, pidfd, job_id, timeout, jobs, slot_idx, r, w, start in spawned:
            os.close(w)
            c = _Child()
            c.pid, c.pidfd, c.job_id, c.slot, c.rfd = pid, pidfd, job_id, slot_idx, r
            c.start, c.deadline, c.killed = start, start + timeout, False
            c.jobs, c.buf, c.reported = jobs, b"", 0
            if pidfd >= 0:
                self.running[pidfd] = c
                self.poller.register(pidfd, select.POLLIN)
            else:
                self.running[pid] = c

    def _cpu_limit_args(self, timeout: float):
        """Pre-built ``prlimit64(0, RLIMIT_CPU, {timeout + 2 s, timeout + 3 s}, NULL)`` arguments for the child."""
        cpu = int(timeout) + 2
        args = self._cpu_args.get(cpu)
        if args is None:
            limit = (ctypes.c_uint64 * 2)(cpu, cpu + 1)
            nr = ctypes.c_long(_ARCH[self.arch]["prlimit64"])
            args = (nr, ctypes.c_int(0), ctypes.c_int(resource.RLIMIT_CPU), ctypes.byref(limit), None, limit)
            self._cpu_args[cpu] = args
        return args

    def _kill(self, c: _Child) -> None:
        c.killed = True
        with contextlib.suppress(OSError):
            if c.pidfd >= 0:  # (in "pidns" mode the zygote's own filter lets it signal nothing but pid 1)
                signal.pidfd_send_signal(c.pidfd, signal.SIGKILL)
            else:
                os.kill(c.pid, signal.SIGKILL)  # not reaped yet, so the pid cannot have been recycled
        if self.forks_possible:
            with contextlib.suppress(OSError):
                os.killpg(c.pid, signal.SIGKILL)  # the child called setsid(): its group is its own

    def _finish(self, c: _Child, out: list) -> None:
        """Reap ``c`` if it has exited: collect its result, report it, recycle its slot."""
        if c.pid in self.reaped:
            pid, status = c.pid, self.reaped.pop(c.pid)
        else:
            pid, status = os.waitpid(c.pid, os.WNOHANG)
            if pid == 0:
                return  # still running (only without pidfds)
        if c.pidfd >= 0:
            self.poller.unregister(c.pidfd)
            os.close(c.pidfd)
            del self.running[c.pidfd]
        else:
            del self.running[c.pid]
        elapsed = time.monotonic() - c.start
        data = _read_available(c.rfd)
        os.close(c.rfd)
        if self.forks_possible:
            with contextlib.suppress(OSError):
                os.killpg(c.pid, signal.SIGKILL)
            if self.is_init:
                self._reap_orphans()
        if c.jobs is None:
            out.append(_frame(b"R" + self._result(c, status, data, elapsed)))
        else:
            c.buf += data
            last = self._report_shared(c, out)
            rest = c.jobs[c.reported :]
            if rest and c.killed:
                # Our deadline: the program then running had its full timeout to itself (see _extend_deadline).
                out.append(_frame(b"R" + _RES.pack(rest[0][0], ST_TIMEOUT, time.monotonic() - last) + b"N"))
                rest = rest[1:]
            self._requeue(rest)  # anything else unusual: each remaining program gets a process of its own
        self._recycle_slot(c.slot)

    def _reap_orphans(self) -> None:
        """As pid 1 we inherit orphans (only possible without seccomp and the per-program pid namespace): reap
        them all, keeping the status of our own children for :meth:`_finish`."""
        tracked = {c.pid for c in self.running.values()}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no child left at all
                self.strays = False
                return
            if pid == 0:  # some still alive (ours, or strays being killed): check again soon
                self.strays = True
                return
            if pid in tracked:
                self.reaped[pid] = status

    def _result(self, c: _Child, status: int, data: bytes, elapsed: float) -> bytes:
        code = os.waitstatus_to_exitcode(status)
        head = lambda st: _RES.pack(c.job_id, st, elapsed)  # noqa: E731
        if c.killed or code in (-signal.SIGKILL, -signal.SIGXCPU):
            return head(ST_TIMEOUT) + b"N"  # our deadline kill, or RLIMIT_CPU (a pid-1 child only dies of SIGKILL)
        if code == SETUP_EXIT_CODE and not data:
            return head(ST_SETUP) + b"N"
        if code != 0 or not data:
            return head(ST_CRASH) + b"N"
        st = self._payload_status(data)
        return head(st) + (data if st == ST_OK else b"N")

    def _payload_status(self, data: bytes) -> int:
        """ST_OK for a well-formed value (b"F" f64 | b"S" utf8 of at most max_chars | b"N"), ST_ERROR for b"E"."""
        tag = data[:1]
        if (tag == b"F" and len(data) == 9) or (tag == b"N" and len(data) == 1):
            return ST_OK
        if tag == b"E" and len(data) == 1:
            return ST_ERROR
        if tag == b"S":
            try:
                return ST_OK if len(data[1:].decode("utf-8")) <= self.max_chars else ST_CRASH
            except UnicodeDecodeError:
                return ST_CRASH
        return ST_CRASH

    # -- children running several pure programs -----------------------------------------------------------------
    def _report_shared(self, c: _Child, out: list) -> float:
        """Report the programs of ``c`` that finished since the last call (frames ``u32 len, f64 end, value``).

        Returns when the last of them finished (``c.start`` if none has). A program that raised (or wrote
        anything malformed) is not reported but run again in a process of its own, so that sharing a process
        can only ever give a result the program also gives alone.
        """
        buf, pos, last = c.buf, 0, c.start
        i = 0
        while len(buf) - pos >= 12 and c.reported + i < len(c.jobs):
            (length,) = _HDR.unpack_from(buf, pos)
            if length < 9 or len(buf) - pos - 4 < length:
                break
            (end,) = _F64.unpack_from(buf, pos + 4)
            payload = buf[pos + 12 : pos + 4 + length]
            pos += 4 + length
            job = c.jobs[c.reported + i]
            i += 1
            if not (c.start <= end <= time.monotonic()):
                end = time.monotonic()
            elapsed, last = max(0.0, end - last), end
            if self._payload_status(payload) == ST_OK:
                out.append(_frame(b"R" + _RES.pack(job[0], ST_OK, elapsed) + payload))
            else:
                self._requeue([job])
        c.buf = buf[pos:]
        c.reported += i
        return last

    def _extend_deadline(self, c: _Child, now: float) -> bool:
        """At ``c``'s deadline: report what it finished and, if the program it runs now started less than its own
        timeout ago, move the deadline to that program's (True). False: kill it."""
        try:
            c.buf += _read_available(c.rfd)
        except OSError:
            return False
        last = self._report_shared(c, self.out)
        if c.reported >= len(c.jobs):
            c.deadline = now + 1.0  # all done: exiting
            return True
        c.deadline = last + c.jobs[c.reported][1]
        return c.deadline > now

    def _requeue(self, jobs) -> None:
        """Run these again, each in a process of its own, before anything else queued."""
        for job_id, timeout, code in reversed(jobs):
            self.queue.appendleft((job_id, timeout, code, False))

    def _recycle_slot(self, idx: int) -> None:
        """Give the slot to the next program exactly as it was: an empty directory nobody has touched.

        Any change inside a directory (an entry created or removed, chmod, utime, xattrs) updates its ctime. If the
        program changed anything, the directory is deleted and replaced by a fresh one (with a fresh Landlock
        ruleset), so that not even timestamps carry over to the next program.
        """
        slot = self.slots[idx]
        try:
            unchanged = os.stat(slot[0]).st_ctime_ns == slot[3]
        except OSError:
            unchanged = False
        if not unchanged:
            if slot[1] >= 0:
                os.close(slot[1])
            _wipe(slot[0], remove_root=True)
            self.slots[idx] = self._make_slot(idx)
        self.free_slots.append(idx)

    # -- the child ----------------------------------------------------------------------------------------------
    def _child(self, code, timeout: float, slot, w: int, cpu_args) -> None:
        """Runs in the new process (its cwd, the scratch slot, was set by the zygote before the clone)."""
        try:
            if self.prebuilt_child_setup:
                if _libc_no_errno.syscall(*cpu_args[:5]) != 0:
                    raise OSError("prlimit64(RLIMIT_CPU)")
                if slot[2] is not None and _libc_no_errno.syscall(*slot[2]) != 0:
                    raise OSError("landlock_restrict_self")
                os.dup2(w, 3, inheritable=False)
                os.closerange(4, 1 << 30)  # close_range(2): the zygote's pipes, rulesets, pidfds...
                if self.mode == "filter":
                    self._pid_insn.k = os.getpid()
                    if _libc_no_errno.prctl(*self._seccomp_args) != 0:
                        raise OSError("seccomp")
                elif _libc_no_errno.syscall(*self._capset_args) != 0:  # "pidns": without capabilities, no CLONE_NEWPID
                    raise OSError("capset")
                if self.need_pdeathsig and (
                    _libc_no_errno.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0
                    or os.getppid() != self.child_ppid
                ):
                    raise OSError("parent-death signal")
            else:
                os.setsid()
                cpu = int(timeout) + 2
                resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
                if self.forks_possible:
                    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # ignored for real root, sadly
                if slot[1] >= 0:
                    _landlock_restrict(slot[1])
                os.dup2(w, 3, inheritable=False)
                os.closerange(4, 1 << 30)
                if self.capset_nr is not None:
                    _libc.syscall(self.capset_nr, ctypes.byref(self.cap_hdr), ctypes.byref(self.cap_data))
                if self.need_pdeathsig:
                    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                    if os.getppid() != self.child_ppid:
                        raise OSError("the zygote died before the prctl")
        except BaseException:
            os._exit(SETUP_EXIT_CODE)
        if type(code) is list:
            _run_pure(code, self.builtins, self.math, self.sympy, self.max_chars)
        _run_code(code, self.builtins, self.math, self.sympy, self.max_chars)


def _run_code(code, builtins, math, sympy, max_chars: int, warm: bool = False):
    write, exit_ = os.write, os._exit  # bound now: the program may monkey-patch the os module
    try:
        ns = {"__name__": "__main__", "__builtins__": builtins, "math": math, "sympy": sympy}
        exec(code, ns)
        payload = _encode_result(ns["solution"](), max_chars)
    except BaseException:
        payload = b"E"
    if warm:
        return payload
    try:
        write(3, payload)
    finally:
        exit_(0)


def _run_pure(codes, builtins, math, sympy, max_chars: int):
    """Several pure programs (see is_pure) one after the other, each in a fresh namespace; one frame each."""
    write, exit_, pack, hdr, monotonic = os.write, os._exit, _F64.pack, _HDR.pack, time.monotonic
    try:
        for code in codes:
            ns = {"__name__": "__main__", "__builtins__": builtins, "math": math, "sympy": sympy}
            try:
                exec(code, ns)
                payload = _encode_result(ns["solution"](), max_chars)
            except BaseException:
                payload = b"E"
            ns.clear()  # functions refer to their globals: break the cycle, free the program's objects now
            write(3, hdr(8 + len(payload)) + pack(monotonic()) + payload)
    finally:
        exit_(0)


def _encode_result(
    v,
    max_chars: int,
    # Builtins bound at definition time: the program may have replaced them (its own result is all it could
    # spoil, but a program that patched ``int`` should still get its answer through).
    type=type,
    float=float,
    int=int,
    str=str,
    bool=bool,
    isinstance=isinstance,
    getattr=getattr,
    slice=slice,
    pack=_F64.pack,
    modules=sys.modules,
) -> bytes:
    """Plain-value conversion, inside the sandbox: number -> b"F"+f64, str -> b"S"+utf8, anything else -> b"N"."""
    t = type(v)
    if t is float:
        return b"F" + pack(v)
    if t is int:
        return b"F" + pack(float(v))
    if t is str:
        return b"S" + v[:max_chars].encode("utf-8")
    if t is bool or v is None:
        return b"N"
    if isinstance(v, str):
        return b"S" + str.__getitem__(v, slice(0, max_chars)).encode("utf-8")  # subclass: ignore its __str__
    np = modules.get("numpy")
    if np is not None:
        if isinstance(v, np.ndarray):
            if v.ndim != 0:
                return b"N"
            v = v[()]
        if isinstance(v, np.bool_):
            return b"N"
        if isinstance(v, (np.integer, np.floating)):
            return b"F" + pack(float(v))
        if isinstance(v, np.generic) and not isinstance(v, (float, int, str)):
            return b"N"
    if isinstance(v, bool):
        return b"N"
    if isinstance(v, float):
        return b"F" + pack(float.__float__(v))
    if isinstance(v, int):
        return b"F" + pack(float(int.__index__(v)))
    sp = modules.get("sympy")
    if sp is not None and isinstance(v, sp.Basic):
        if isinstance(v, sp.logic.boolalg.BooleanAtom) or not getattr(v, "is_number", False):
            return b"N"
        try:
            f = float(v)
        except TypeError:  # complex (I, zoo, ...)
            return b"N"
        return b"F" + pack(f) if type(f) is float else b"N"
    dec, frac, num = modules.get("decimal"), modules.get("fractions"), modules.get("numbers")
    kinds = tuple(k for k in (dec and dec.Decimal, frac and frac.Fraction, num and num.Real) if isinstance(k, type))
    if kinds and isinstance(v, kinds):
        f = float(v)
        return b"F" + pack(f) if type(f) is float else b"N"
    return b"N"


# ---------------------------------------------------------------------------------------------------------------
# Pure programs: several may share one child process (see Zygote._start_children)

# Builtins a pure program may name: constructors and functions of plain values, none of which reads or changes
# state outside its arguments (no I/O, no introspection, no attribute access, no evaluation of text).
PURE_BUILTINS = frozenset(
    [
        "abs",
        "all",
        "any",
        "bin",
        "bool",
        "chr",
        "complex",
        "dict",
        "divmod",
        "enumerate",
        "filter",
        "float",
        "format",
        "frozenset",
        "hex",
        "int",
        "isinstance",
        "len",
        "list",
        "map",
        "max",
        "min",
        "oct",
        "ord",
        "pow",
        "range",
        "reversed",
        "round",
        "set",
        "slice",
        "sorted",
        "str",
        "sum",
        "tuple",
        "zip",
    ]
)
# AST node types a pure program may contain; every other node (attributes but ``math.<name>``, subscript or
# attribute assignment, del, try, raise, with, class, import but of math, yield, await, ...) disqualifies it.
PURE_NODES = frozenset(
    [
        "Module",
        "Expr",
        "Assign",
        "AugAssign",
        "AnnAssign",
        "Return",
        "If",
        "For",
        "While",
        "Break",
        "Continue",
        "Pass",
        "FunctionDef",
        "Lambda",
        "arguments",
        "arg",
        "Import",
        "ImportFrom",
        "alias",
        "Global",
        "Nonlocal",
        "BoolOp",
        "NamedExpr",
        "BinOp",
        "UnaryOp",
        "IfExp",
        "Dict",
        "Set",
        "ListComp",
        "SetComp",
        "DictComp",
        "GeneratorExp",
        "comprehension",
        "Compare",
        "Call",
        "keyword",
        "FormattedValue",
        "JoinedStr",
        "Constant",
        "Attribute",
        "Subscript",
        "Starred",
        "Name",
        "List",
        "Tuple",
        "Slice",
        "Load",
        "Store",
        "And",
        "Or",
        "Add",
        "Sub",
        "Mult",
        "MatMult",
        "Div",
        "Mod",
        "Pow",
        "LShift",
        "RShift",
        "BitOr",
        "BitXor",
        "BitAnd",
        "FloorDiv",
        "Invert",
        "Not",
        "UAdd",
        "USub",
        "Eq",
        "NotEq",
        "Lt",
        "LtE",
        "Gt",
        "GtE",
        "Is",
        "IsNot",
        "In",
        "NotIn",
    ]
)


def is_pure(tree, builtin_names, math_names) -> bool:
    """True when the program (an AST) provably cannot change anything that outlives its own namespace.

    A pure program reaches no object but its own values, the builtins in ``PURE_BUILTINS`` and the public
    functions and constants of ``math``: it cannot name any other builtin or any dunder, read an attribute of
    anything but ``math``, assign to an attribute or a subscript, delete, import anything but ``math``, or
    define a class. So it cannot monkey-patch a module or a builtin, open a file, or leave anything behind for
    the next program; run in a fresh namespace dict, it sees exactly what it would in a fresh process.
    Conservative by design: anything unusual is "not pure" and simply gets a process of its own.
    """
    stack = [tree]
    pop, push = stack.pop, stack.extend
    while stack:
        node = pop()
        kind = type(node).__name__
        if kind not in PURE_NODES:
            return False
        if kind == "Name":
            if not _pure_name(node.id, builtin_names):
                return False
            continue
        if kind == "Attribute":
            value = node.value
            if (
                type(node.ctx).__name__ != "Load"
                or type(value).__name__ != "Name"
                or value.id != "math"
                or node.attr not in math_names
            ):
                return False
            continue
        if kind == "Subscript":
            if type(node.ctx).__name__ != "Load":
                return False
        elif kind == "FunctionDef":
            if node.decorator_list or not _pure_name(node.name, builtin_names):
                return False
        elif kind == "arg":
            if not _pure_name(node.arg, builtin_names):
                return False
        elif kind in ("Global", "Nonlocal"):
            if not all(_pure_name(n, builtin_names) for n in node.names):
                return False
        elif kind == "Import":
            if any(a.name != "math" for a in node.names):
                return False
        elif kind == "ImportFrom":
            if node.module != "math" or node.level or any(a.name not in math_names for a in node.names):
                return False
        elif kind == "alias":
            if node.asname is not None and not _pure_name(node.asname, builtin_names):
                return False
            continue
        for field in node._fields:
            child = getattr(node, field, None)
            if type(child) is list:
                push(c for c in child if c is not None and not isinstance(c, (str, int)))
            elif child is not None and not isinstance(child, (str, int, float, complex, bytes, bool)):
                push((child,))
    return True


def _pure_name(name: str, builtin_names) -> bool:
    if name.startswith("_") and name != "_":
        return False  # dunders (__builtins__, __import__, __class__...) and private names
    return name not in builtin_names or name in PURE_BUILTINS


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _json(obj) -> bytes:
    return json.dumps(obj, default=repr).encode()


def _read_available(fd: int) -> bytes:
    """What a child's result pipe holds now (up to MAX_CHILD_PAYLOAD), without waiting for more: a still-running
    child, or a surviving descendant holding the write end (no per-child pidns), must not block the zygote."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) <= MAX_CHILD_PAYLOAD:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    return data


def _frame(body: bytes) -> bytes:
    return _HDR.pack(len(body)) + body


def _send_raw(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _vm_size_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 4  # rough fallback


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def _read_paths(extra: list[str]) -> list[str]:
    """What a program may read: the Python installation (stdlib, lib-dynload, site-packages) and shared libraries."""
    paths = set(extra)
    paths.update(p for p in sys.path if p.endswith(("lib-dynload", "site-packages", "dist-packages")))
    paths.update(p for p in sys.path if os.path.isfile(os.path.join(p, "os.py")))  # the stdlib
    paths.update(("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache", "/dev/urandom"))
    return sorted(p for p in paths if os.path.exists(p))


def _wipe(path: str, remove_root: bool = False) -> bool:
    """Empty (and optionally remove) ``path`` whatever the program did to permissions inside it; True on success.

    Failures (a directory nested thousands deep, ...) leave garbage in the worker's private tmpfs; if that ever
    fills up, creating a slot fails, the worker exits and the parent starts a fresh one (with a fresh tmpfs).
    """
    import shutil

    def retry(func, p, _exc):
        os.chmod(os.path.dirname(p), 0o700)
        if func in (os.rmdir, os.unlink, os.remove):
            func(p)
        else:  # could not list or open a directory: make it usable, then remove it
            os.chmod(p, 0o700)
            shutil.rmtree(p)

    try:
        os.chmod(path, 0o700)
        if remove_root:
            shutil.rmtree(path, onerror=retry)
        else:
            for entry in os.scandir(path):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, onerror=retry)
                else:
                    os.unlink(entry.path)
        return True
    except Exception:  # OSError, RecursionError...
        return False


if __name__ == "__main__":
    main()
