//! The cgroup2 device allow-list: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`.
//!
//! cgroup2 has no `devices.allow`; instead the kernel runs the BPF programs attached (type
//! `BPF_CGROUP_DEVICE`) to a process's cgroup and its ancestors on every open and mknod of a
//! device node, and refuses with EPERM unless all of them return 1. The kernel calls
//! `devcgroup_check_permission`, which runs the BPF check before the v1 `devices` controller's,
//! so a program attached to a directory of the unified hierarchy also works on a v1 hybrid host.
//!
//! [`device_filter_program`] is pure (it only assembles instructions, and is tested with a small
//! interpreter); [`attach_device_filter`] loads it and attaches it with `BPF_F_ALLOW_MULTI`.
//! The two raw `bpf(2)` calls are the only `unsafe` code of the cgroup module, in the section
//! marked below.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use tracing::debug;

use super::{CgroupError, DeviceRule, Result};

// `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`, with
// `access_type = (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

// Opcodes (class | op | source) of the few instructions the program uses.
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
const ALU64_AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K: dst &= imm
const ALU64_RSH_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K: dst >>= imm
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
const ALU64_MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X: dst = src
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K: if dst != imm goto pc + off
const JMP_JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X: if dst != src goto pc + off
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT: return r0

// Registers: r0 return value, r1 context on entry; r2..r5 hold the decoded context.
const R0: u8 = 0;
const R1: u8 = 1;
const R_TYPE: u8 = 2;
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    /// `dst_reg:4, src_reg:4` bit-fields, in the target's bit-field order.
    regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl BpfInsn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        #[cfg(target_endian = "little")]
        let regs = (src << 4) | (dst & 0x0f);
        #[cfg(target_endian = "big")]
        let regs = (dst << 4) | (src & 0x0f);
        BpfInsn { code, regs, off, imm }
    }

    pub fn dst(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs & 0x0f
        } else {
            self.regs >> 4
        }
    }

    pub fn src(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0x0f
        }
    }
}

/// Assembles the device program for an allow-list: a device access is allowed (the program
/// returns 1) when some rule matches its type, major, minor and covers every requested access
/// bit; anything else is denied (returns 0). A rule of kind `'a'` allows everything.
pub fn device_filter_program(rules: &[DeviceRule]) -> Result<Vec<BpfInsn>> {
    let mut prog = vec![
        BpfInsn::new(LDX_MEM_W, R_TYPE, R1, 0, 0),
        BpfInsn::new(ALU64_AND_K, R_TYPE, 0, 0, 0xffff),
        BpfInsn::new(LDX_MEM_W, R_ACCESS, R1, 0, 0),
        BpfInsn::new(ALU64_RSH_K, R_ACCESS, 0, 0, 16),
        BpfInsn::new(LDX_MEM_W, R_MAJOR, R1, 4, 0),
        BpfInsn::new(LDX_MEM_W, R_MINOR, R1, 8, 0),
    ];
    let allow = [
        BpfInsn::new(ALU64_MOV_K, R0, 0, 0, 1),
        BpfInsn::new(JMP_EXIT, 0, 0, 0, 0),
    ];
    for rule in rules {
        rule.validate()?;
        let dev_type = match rule.kind {
            'b' => DEV_BLOCK,
            'c' => DEV_CHAR,
            _ => {
                // Allows everything: whatever followed would be unreachable, which the
                // verifier rejects.
                prog.extend(allow);
                return Ok(prog);
            }
        };
        // Each check jumps to the end of this rule's block when it fails.
        let mut checks = vec![BpfInsn::new(JMP_JNE_K, R_TYPE, 0, 0, dev_type)];
        let access = access_bits(&rule.access);
        if access != ACC_ALL {
            // r1 = requested & allowed; requested must be a subset of allowed.
            checks.push(BpfInsn::new(ALU64_MOV_X, R1, R_ACCESS, 0, 0));
            checks.push(BpfInsn::new(ALU64_AND_K, R1, 0, 0, access));
            checks.push(BpfInsn::new(JMP_JNE_X, R1, R_ACCESS, 0, 0));
        }
        for (reg, number) in [(R_MAJOR, rule.major), (R_MINOR, rule.minor)] {
            if let Some(n) = number {
                // validate() bounds majors and minors far below i32::MAX.
                let imm = i32::try_from(n).map_err(|_| rule.invalid("device number too large"))?;
                checks.push(BpfInsn::new(JMP_JNE_K, reg, 0, 0, imm));
            }
        }
        let block_len = checks.len() + allow.len();
        for (i, insn) in checks.iter_mut().enumerate() {
            if insn.code == JMP_JNE_K || insn.code == JMP_JNE_X {
                insn.off = i16::try_from(block_len - i - 1).map_err(|_| rule.invalid("rule too long"))?;
            }
        }
        prog.extend(checks);
        prog.extend(allow);
    }
    prog.extend([
        BpfInsn::new(ALU64_MOV_K, R0, 0, 0, 0),
        BpfInsn::new(JMP_EXIT, 0, 0, 0, 0),
    ]);
    Ok(prog)
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |bits, c| match c {
        'm' => bits | ACC_MKNOD,
        'r' => bits | ACC_READ,
        'w' => bits | ACC_WRITE,
        _ => bits,
    })
}

/// Builds the program for `rules`, loads it and attaches it to the cgroup2 directory
/// `cgroup_dir` (type `BPF_CGROUP_DEVICE`, flag `BPF_F_ALLOW_MULTI`). The attachment keeps the
/// program alive; it goes away with the cgroup.
pub fn attach_device_filter(cgroup_dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    let prog = device_filter_program(rules)?;
    let dir = File::open(cgroup_dir).map_err(|source| CgroupError::Open {
        path: cgroup_dir.to_owned(),
        source,
    })?;
    let prog_fd = prog_load(&prog).map_err(|(source, log)| CgroupError::Bpf {
        op: "BPF_PROG_LOAD",
        path: cgroup_dir.to_owned(),
        source,
        log,
    })?;
    prog_attach(dir.as_raw_fd(), prog_fd.as_raw_fd()).map_err(|source| CgroupError::Bpf {
        op: "BPF_PROG_ATTACH",
        path: cgroup_dir.to_owned(),
        source,
        log: String::new(),
    })?;
    debug!(dir = %cgroup_dir.display(), rules = rules.len(), insns = prog.len(), "device filter attached");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Raw bpf(2). Everything unsafe in the cgroup module is in this section.
// ---------------------------------------------------------------------------------------------

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 1 << 1;
const LOG_SIZE: usize = 64 * 1024;

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to `expected_attach_type`. Passing a
/// shorter attr than the kernel's is allowed: the kernel zero-fills the rest.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` member of `union bpf_attr`, up to `replace_bpf_fd`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The attr types `sys_bpf` may be called with: plain `repr(C)` mirrors of `union bpf_attr`
/// members, whose pointers (if any) point to live buffers for the duration of the call.
trait BpfAttr {}
impl BpfAttr for ProgLoadAttr {}
impl BpfAttr for ProgAttachAttr {}

fn sys_bpf<A: BpfAttr>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    let size = std::mem::size_of::<A>();
    // SAFETY: `attr` is an exclusive reference to a fully initialised `repr(C)` mirror of a
    // `union bpf_attr` member (guaranteed by the private `BpfAttr` trait) and `size` is exactly
    // its size, so the kernel reads and writes only memory we own. The pointers inside it (the
    // instructions, license and log buffer) are borrowed by the caller and outlive this call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Loads the program; on failure returns the error and the verifier's log.
fn prog_load(prog: &[BpfInsn]) -> std::result::Result<OwnedFd, (io::Error, String)> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"corral_dev");
    let insn_cnt =
        u32::try_from(prog.len()).map_err(|_| (io::Error::from(io::ErrorKind::InvalidInput), String::new()))?;
    let mut log = vec![0u8; LOG_SIZE];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    let fd = match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(first) => {
            // Load again with the verifier's log, to say why.
            attr.log_level = 1;
            attr.log_size = LOG_SIZE as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            match sys_bpf(BPF_PROG_LOAD, &mut attr) {
                Ok(fd) => fd,
                Err(_) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
                    let text = if text.is_empty() {
                        text
                    } else {
                        format!(" (verifier: {text})")
                    };
                    return Err((first, text));
                }
            }
        }
    };
    let fd = RawFd::try_from(fd).map_err(|_| (io::Error::from(io::ErrorKind::InvalidData), String::new()))?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn prog_attach(cgroup_fd: RawFd, prog_fd: RawFd) -> io::Result<()> {
    let as_u32 = |fd: RawFd| u32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let mut attr = ProgAttachAttr {
        target_fd: as_u32(cgroup_fd)?,
        attach_bpf_fd: as_u32(prog_fd)?,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    sys_bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// End of the unsafe section.
// ---------------------------------------------------------------------------------------------

/// A tiny interpreter for the instructions [`device_filter_program`] emits, so that tests can
/// check the program's verdicts without a kernel.
#[cfg(test)]
pub(super) fn interpret(prog: &[BpfInsn], kind: char, major: u32, minor: u32, access: &str) -> u64 {
    const CTX: u64 = 0xc0_ffee_0000;
    let dev_type = if kind == 'b' { DEV_BLOCK } else { DEV_CHAR };
    let ctx = [((access_bits(access) << 16) | dev_type) as u32, major, minor];
    let mut regs = [0u64; 11];
    regs[1] = CTX;
    let mut pc = 0usize;
    for _ in 0..10_000 {
        let insn = prog[pc];
        let (dst, src) = (usize::from(insn.dst()), usize::from(insn.src()));
        let imm = insn.imm as i64 as u64;
        pc += 1;
        match insn.code {
            LDX_MEM_W => {
                assert_eq!(regs[src], CTX, "load from a register that is not the context");
                regs[dst] = u64::from(ctx[usize::try_from(insn.off).expect("offset") / 4]);
            }
            ALU64_AND_K => regs[dst] &= imm,
            ALU64_RSH_K => regs[dst] >>= imm,
            ALU64_MOV_K => regs[dst] = imm,
            ALU64_MOV_X => regs[dst] = regs[src],
            JMP_JNE_K | JMP_JNE_X => {
                let other = if insn.code == JMP_JNE_K { imm } else { regs[src] };
                if regs[dst] != other {
                    pc += usize::try_from(insn.off).expect("forward jump");
                }
            }
            JMP_EXIT => return regs[0],
            code => panic!("unexpected opcode {code:#x}"),
        }
    }
    panic!("program does not terminate")
}
