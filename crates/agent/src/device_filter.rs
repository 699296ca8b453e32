//! A container's device rules (`linux.resources.devices`), enforced in the guest.
//!
//! Under cgroup v2 the kernel asks a BPF program attached to a cgroup (type
//! `BPF_PROG_TYPE_CGROUP_DEVICE`) whether a process in it may create (mknod), read or write a
//! device node. libcontainer builds such a program only with its `cgroupsv2_devices` feature,
//! which links libbpf and libelf (C libraries we do not build for the static guest), so the
//! runner builds and attaches it itself, right after libcontainer created the container and
//! before its process runs anything of its own.
//!
//! Semantics (as runc and youki apply the runtime spec's list): the spec's rules, then the
//! runtime's default allowances ([`DEFAULT_ALLOWED`]), apply in order; for each access a
//! request asks for (mknod, read, write), the last rule that matches the device and names that
//! access decides; with none, it is denied. The program is attached without
//! `BPF_F_ALLOW_OVERRIDE`/`BPF_F_ALLOW_MULTI`, so nothing in the container's cgroup subtree can
//! attach a program of its own in its place.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use libcontainer::oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// `bpf_cgroup_dev_ctx.access_type` bits (linux/bpf.h `BPF_DEVCG_ACC_*`), upper 16 bits.
pub const MKNOD: u8 = 1;
pub const READ: u8 = 2;
pub const WRITE: u8 = 4;
const ALL_ACCESS: u8 = MKNOD | READ | WRITE;

/// Device kind as the kernel reports it (`BPF_DEVCG_DEV_BLOCK`, `BPF_DEVCG_DEV_CHAR`), lower
/// 16 bits of `access_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Block = 1,
    Char = 2,
}

/// One rule: `None` matches any kind, major or minor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: Option<Kind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// [`MKNOD`] | [`READ`] | [`WRITE`].
    pub access: u8,
}

impl Rule {
    const fn allow(kind: Kind, major: Option<u32>, minor: Option<u32>, access: u8) -> Rule {
        Rule { allow: true, kind: Some(kind), major, minor, access }
    }

    #[cfg(test)]
    fn matches(&self, kind: Kind, major: u32, minor: u32) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }
}

/// What every container may do besides its spec's rules (the set runc and youki add): create
/// any device node, and use the null, zero, full, random and urandom devices, its terminal
/// (tty, console, ptmx and the pts), and tun.
pub const DEFAULT_ALLOWED: [Rule; 12] = [
    Rule::allow(Kind::Char, None, None, MKNOD),
    Rule::allow(Kind::Block, None, None, MKNOD),
    Rule::allow(Kind::Char, Some(1), Some(3), ALL_ACCESS),
    Rule::allow(Kind::Char, Some(1), Some(5), ALL_ACCESS),
    Rule::allow(Kind::Char, Some(1), Some(7), ALL_ACCESS),
    Rule::allow(Kind::Char, Some(1), Some(8), ALL_ACCESS),
    Rule::allow(Kind::Char, Some(1), Some(9), ALL_ACCESS),
    Rule::allow(Kind::Char, Some(5), Some(0), ALL_ACCESS),
    Rule::allow(Kind::Char, Some(5), Some(1), ALL_ACCESS),
    Rule::allow(Kind::Char, Some(5), Some(2), ALL_ACCESS),
    Rule::allow(Kind::Char, Some(136), None, ALL_ACCESS),
    Rule::allow(Kind::Char, Some(10), Some(200), ALL_ACCESS),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device rule {index}: {what}")]
    BadRule { index: usize, what: String },
    #[error("{op} failed: {source}{log}")]
    Bpf { op: &'static str, source: std::io::Error, log: String },
    #[error("opening the container's cgroup {path}: {source}")]
    Cgroup { path: String, source: std::io::Error },
    #[error("the container's device rules need {0} BPF instructions, more than a jump can span")]
    TooLong(usize),
}

/// The rules a container gets: its spec's, in order, then [`DEFAULT_ALLOWED`].
pub fn rules(spec: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, Error> {
    let mut out = Vec::with_capacity(spec.len() + DEFAULT_ALLOWED.len());
    for (index, d) in spec.iter().enumerate() {
        let bad = |what: String| Error::BadRule { index, what };
        let kind = match d.typ() {
            None | Some(LinuxDeviceType::A) => None,
            Some(LinuxDeviceType::B) => Some(Kind::Block),
            Some(LinuxDeviceType::C | LinuxDeviceType::U) => Some(Kind::Char),
            Some(other) => return Err(bad(format!("type {other:?} is not a device kind a rule can name (a, b, c)"))),
        };
        // Negative numbers are kata's and the CRI's way of writing "any".
        let number = |n: Option<i64>, name: &str| match n {
            None => Ok(None),
            Some(n) if n < 0 => Ok(None),
            Some(n) => u32::try_from(n).map(Some).map_err(|_| bad(format!("{name} {n} is out of range"))),
        };
        let (major, minor) = (number(d.major(), "major")?, number(d.minor(), "minor")?);
        // Without an access string a rule is about every access (as "a" in cgroup v1).
        let access = match d.access().as_deref() {
            None | Some("") => ALL_ACCESS,
            Some(text) => text.chars().try_fold(0u8, |acc, c| match c {
                'm' => Ok(acc | MKNOD),
                'r' => Ok(acc | READ),
                'w' => Ok(acc | WRITE),
                _ => Err(bad(format!("access {text:?}: only r, w and m are accesses"))),
            })?,
        };
        out.push(Rule { allow: d.allow(), kind, major, minor, access });
    }
    out.extend(DEFAULT_ALLOWED);
    Ok(out)
}

/// Whether `rules` let a process do `access` to the device: the semantics the BPF program
/// implements, in plain Rust; the tests hold the program to it.
#[cfg(test)]
pub fn allowed(rules: &[Rule], kind: Kind, major: u32, minor: u32, access: u8) -> bool {
    [MKNOD, READ, WRITE].into_iter().filter(|bit| access & bit != 0).all(|bit| {
        rules.iter().rev().find(|r| r.access & bit != 0 && r.matches(kind, major, minor)).is_some_and(|r| r.allow)
    })
}

/// One eBPF instruction (linux/bpf.h `struct bpf_insn`): opcode, destination register in the
/// low and source register in the high nibble, jump offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// Opcodes used here (linux/bpf_common.h, linux/bpf.h): class | operation | source.
pub mod op {
    /// `dst = *(u32 *)(src + off)`: BPF_LDX | BPF_MEM | BPF_W.
    pub const LDX_W: u8 = 0x61;
    /// `dst = src` (32-bit): BPF_ALU | BPF_MOV | BPF_X.
    pub const MOV32_REG: u8 = 0xbc;
    /// `dst &= imm` (32-bit): BPF_ALU | BPF_AND | BPF_K.
    pub const AND32_IMM: u8 = 0x54;
    /// `dst >>= imm` (32-bit): BPF_ALU | BPF_RSH | BPF_K.
    pub const RSH32_IMM: u8 = 0x74;
    /// `dst = imm`: BPF_ALU64 | BPF_MOV | BPF_K.
    pub const MOV64_IMM: u8 = 0xb7;
    /// `goto +off`: BPF_JMP | BPF_JA.
    pub const JA: u8 = 0x05;
    /// `if dst == imm goto +off`: BPF_JMP | BPF_JEQ | BPF_K.
    pub const JEQ_IMM: u8 = 0x15;
    /// `if dst != imm goto +off`: BPF_JMP | BPF_JNE | BPF_K.
    pub const JNE_IMM: u8 = 0x55;
    /// `return r0`: BPF_JMP | BPF_EXIT.
    pub const EXIT: u8 = 0x95;
}

/// Registers the program keeps the request in.
const CTX: u8 = 1;
const ACCESS: u8 = 2;
const KIND: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const SCRATCH: u8 = 6;

/// A forward-jump assembler: jumps name labels, bound to positions later.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, usize)>,
}

impl Asm {
    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: (src << 4) | dst, off, imm });
    }

    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }

    fn jump(&mut self, code: u8, dst: u8, imm: i32, label: usize) {
        self.fixups.push((self.insns.len(), label));
        self.emit(code, dst, 0, 0, imm);
    }

    fn used(&self, label: usize) -> bool {
        self.fixups.iter().any(|&(_, l)| l == label)
    }

    fn finish(mut self) -> Result<Vec<Insn>, Error> {
        for &(at, label) in &self.fixups {
            let target = self.labels[label].expect("every jumped-to label is bound");
            let off = i16::try_from(target as i64 - at as i64 - 1).map_err(|_| Error::TooLong(self.insns.len()))?;
            self.insns[at].off = off;
        }
        Ok(self.insns)
    }
}

/// The BPF program for `rules` (see the module's semantics). It has no unreachable
/// instruction, which the kernel's verifier would refuse.
pub fn program(rules: &[Rule]) -> Result<Vec<Insn>, Error> {
    let mut a = Asm::default();
    // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
    a.emit(op::LDX_W, ACCESS, CTX, 0, 0);
    a.emit(op::MOV32_REG, KIND, ACCESS, 0, 0);
    a.emit(op::AND32_IMM, KIND, 0, 0, 0xffff);
    a.emit(op::RSH32_IMM, ACCESS, 0, 0, 16);
    a.emit(op::LDX_W, MAJOR, CTX, 4, 0);
    a.emit(op::LDX_W, MINOR, CTX, 8, 0);
    let deny = a.label();
    for bit in [MKNOD, READ, WRITE] {
        let next_bit = a.label();
        a.emit(op::MOV32_REG, SCRATCH, ACCESS, 0, 0);
        a.emit(op::AND32_IMM, SCRATCH, 0, 0, i32::from(bit));
        a.jump(op::JEQ_IMM, SCRATCH, 0, next_bit);
        let mut decided = false;
        for rule in rules.iter().rev().filter(|r| r.access & bit != 0) {
            let next_rule = a.label();
            let tests = [(KIND, rule.kind.map(|k| k as u32)), (MAJOR, rule.major), (MINOR, rule.minor)];
            for (reg, want) in tests {
                if let Some(want) = want {
                    // Device numbers fit in 32 bits (12-bit major, 20-bit minor); the
                    // immediate is compared as a sign-extended 64-bit value.
                    a.jump(op::JNE_IMM, reg, want as i32, next_rule);
                }
            }
            a.jump(op::JA, 0, 0, if rule.allow { next_bit } else { deny });
            if !a.used(next_rule) {
                // Matches every device: the rules before it are never asked.
                decided = true;
                break;
            }
            a.bind(next_rule);
        }
        if !decided {
            a.jump(op::JA, 0, 0, deny);
        }
        a.bind(next_bit);
    }
    a.emit(op::MOV64_IMM, 0, 0, 0, 1);
    a.emit(op::EXIT, 0, 0, 0, 0);
    if a.used(deny) {
        a.bind(deny);
        a.emit(op::MOV64_IMM, 0, 0, 0, 0);
        a.emit(op::EXIT, 0, 0, 0, 0);
    }
    a.finish()
}

/// bpf(2) commands, program and attach types (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`.
#[repr(C)]
#[derive(Default)]
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

/// The leading fields of `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialized `#[repr(C)]` prefix of `union bpf_attr` for `cmd`
    // and the size passed is its own; the kernel reads (and for the log, writes) only memory
    // the attribute's pointers name, which the caller keeps alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads the program for `insns` into the kernel; on a refusal the verifier's log is in the
/// error.
pub fn load(insns: &[Insn]) -> Result<OwnedFd, Error> {
    // Without a log first: writing the verifier's log of every instruction it walks
    // (log_level 1) costs more than the check (a load took 25 ms with it, 7 ms without, in
    // a pod VM under TCG). Only a refused program is loaded again, with the log, to say why.
    match load_with_log(insns, None) {
        Ok(fd) => Ok(fd),
        Err(_) => {
            let mut log = vec![0u8; 64 * 1024];
            load_with_log(insns, Some(&mut log))
        }
    }
}

fn load_with_log(insns: &[Insn], mut log: Option<&mut [u8]>) -> Result<OwnedFd, Error> {
    const LICENSE: &[u8] = b"Apache-2.0\0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        ..Default::default()
    };
    if let Some(log) = log.as_deref_mut() {
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    attr.prog_name[..7].copy_from_slice(b"devices");
    let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|source| {
        let text = log.map(|log| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            String::from_utf8_lossy(&log[..end]).trim().to_owned()
        });
        let log = match text {
            Some(t) if !t.is_empty() => format!("; verifier: {t}"),
            _ => String::new(),
        };
        Error::Bpf { op: "loading the device filter (BPF_PROG_LOAD)", source, log }
    })?;
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Builds the program for `rules` and attaches it to the cgroup directory `cgroup`. The
/// attachment keeps the program for the cgroup's life.
pub fn attach(cgroup: &Path, rules: &[Rule]) -> Result<(), Error> {
    let prog = load(&program(rules)?)?;
    let dir =
        std::fs::File::open(cgroup).map_err(|source| Error::Cgroup { path: cgroup.display().to_string(), source })?;
    let mut attr = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|source| Error::Bpf {
        op: "attaching the device filter (BPF_PROG_ATTACH)",
        source,
        log: String::new(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::oci_spec::runtime::LinuxDeviceCgroupBuilder;

    /// Runs `insns` on a request the way the kernel's interpreter would, for the opcodes
    /// [`program`] emits.
    fn run(insns: &[Insn], kind: Kind, major: u32, minor: u32, access: u8) -> u64 {
        let ctx = [(u32::from(access) << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = insns[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            let jump = |pc: usize| (pc as i64 + i64::from(i.off)) as usize;
            match i.code {
                op::LDX_W => {
                    assert_eq!(src, CTX as usize, "only the context is read");
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                op::MOV32_REG => r[dst] = r[src] & 0xffff_ffff,
                op::AND32_IMM => r[dst] = (r[dst] as u32 & i.imm as u32).into(),
                op::RSH32_IMM => r[dst] = (r[dst] as u32 >> i.imm).into(),
                op::MOV64_IMM => r[dst] = i.imm as i64 as u64,
                op::JA => pc = jump(pc),
                op::JEQ_IMM if r[dst] == i.imm as i64 as u64 => pc = jump(pc),
                op::JNE_IMM if r[dst] != i.imm as i64 as u64 => pc = jump(pc),
                op::JEQ_IMM | op::JNE_IMM => {}
                op::EXIT => return r[0],
                other => panic!("opcode {other:#x} not emitted by program()"),
            }
        }
    }

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).typ(typ).access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().expect("rule")
    }

    /// containerd's default (deny everything), as `ctr run` and the CRI give it.
    fn deny_all() -> LinuxDeviceCgroup {
        LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().expect("rule")
    }

    /// Every access to a spread of devices: those the defaults and the rules name, and others.
    fn requests() -> Vec<(Kind, u32, u32, u8)> {
        let mut out = Vec::new();
        for kind in [Kind::Char, Kind::Block] {
            for (major, minor) in
                [(1, 3), (1, 5), (1, 1), (5, 2), (136, 0), (136, 7), (10, 200), (254, 0), (8, 0), (8, 16)]
            {
                for access in 1..=ALL_ACCESS {
                    out.push((kind, major, minor, access));
                }
            }
        }
        out
    }

    fn check_program(rules: &[Rule]) {
        let insns = program(rules).expect("program");
        for (kind, major, minor, access) in requests() {
            let want = allowed(rules, kind, major, minor, access);
            assert_eq!(
                run(&insns, kind, major, minor, access) == 1,
                want,
                "{kind:?} {major}:{minor} access {access:#b} under {rules:?}"
            );
        }
    }

    #[test]
    fn a_default_container_uses_only_the_usual_devices() {
        let rules = rules(&[deny_all()]).expect("rules");
        assert!(allowed(&rules, Kind::Char, 1, 3, READ | WRITE), "/dev/null");
        assert!(allowed(&rules, Kind::Char, 136, 4, READ | WRITE), "a pts");
        assert!(allowed(&rules, Kind::Block, 254, 0, MKNOD), "creating a node is allowed");
        assert!(!allowed(&rules, Kind::Block, 254, 0, READ), "reading the disk is not");
        assert!(!allowed(&rules, Kind::Block, 254, 0, MKNOD | READ));
        assert!(!allowed(&rules, Kind::Char, 1, 1, READ), "/dev/mem");
        check_program(&rules);
    }

    #[test]
    fn the_last_rule_naming_an_access_decides_it() {
        let spec = [
            deny_all(),
            rule(true, LinuxDeviceType::B, Some(254), Some(0), "r"),
            rule(true, LinuxDeviceType::B, Some(254), None, "w"),
            rule(false, LinuxDeviceType::B, Some(254), Some(1), "rw"),
        ];
        let rules = rules(&spec).expect("rules");
        assert!(allowed(&rules, Kind::Block, 254, 0, READ | WRITE), "r and w from two rules");
        assert!(!allowed(&rules, Kind::Block, 254, 1, READ), "the later deny");
        assert!(allowed(&rules, Kind::Block, 254, 2, WRITE));
        assert!(!allowed(&rules, Kind::Block, 254, 2, READ));
        assert!(!allowed(&rules, Kind::Char, 254, 0, READ), "a block rule is not about char devices");
        check_program(&rules);
    }

    #[test]
    fn a_privileged_container_may_use_every_device() {
        let all = LinuxDeviceCgroupBuilder::default().allow(true).access("rwm").build().expect("rule");
        let rules = rules(&[deny_all(), all]).expect("rules");
        for (kind, major, minor, access) in requests() {
            assert!(allowed(&rules, kind, major, minor, access));
        }
        // Nothing can be denied: the program has no deny branch (the verifier refuses dead code).
        let insns = program(&rules).expect("program");
        assert!(!insns.iter().any(|i| i.code == op::MOV64_IMM && i.imm == 0));
        check_program(&rules);
    }

    #[test]
    fn no_rules_at_all_still_denies_what_the_defaults_do_not_allow() {
        let rules = rules(&[]).expect("rules");
        assert!(!allowed(&rules, Kind::Block, 8, 0, READ));
        check_program(&rules);
    }

    #[test]
    fn negative_numbers_mean_any_and_bad_rules_are_errors() {
        let rules = rules(&[deny_all(), rule(true, LinuxDeviceType::C, Some(-1), Some(-1), "rw")]).expect("rules");
        assert!(allowed(&rules, Kind::Char, 99, 99, READ | WRITE));
        assert!(!allowed(&rules, Kind::Block, 99, 99, READ));
        check_program(&rules);

        let fifo = rule(true, LinuxDeviceType::P, None, None, "rw");
        assert!(super::rules(&[fifo]).unwrap_err().to_string().contains("rule 0"));
        let huge = rule(true, LinuxDeviceType::C, Some(1 << 40), None, "r");
        assert!(super::rules(&[huge]).unwrap_err().to_string().contains("out of range"));
        let bad = rule(true, LinuxDeviceType::C, Some(1), None, "rx");
        assert!(super::rules(&[deny_all(), bad]).unwrap_err().to_string().contains("rule 1"));
    }

    #[test]
    fn the_kernel_verifier_accepts_the_programs() {
        // The build host's kernel checks the programs as the guest's (6.12) will.
        let privileged = LinuxDeviceCgroupBuilder::default().allow(true).access("rwm").build().expect("rule");
        for spec in [vec![deny_all()], vec![deny_all(), privileged], vec![]] {
            let insns = program(&rules(&spec).expect("rules")).expect("program");
            load(&insns).unwrap_or_else(|e| panic!("{e}"));
        }
        // The check has teeth: the deny-all program with an instruction after its last exit.
        let mut dead = program(&rules(&[deny_all()]).expect("rules")).expect("program");
        dead.push(Insn { code: op::MOV64_IMM, regs: 0, off: 0, imm: 1 });
        let err = load(&dead).expect_err("a program with dead code").to_string();
        assert!(err.contains("verifier"), "{err}");
    }
}
