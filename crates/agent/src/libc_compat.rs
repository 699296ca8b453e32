//! Link shim for the static libseccomp the musl agent is built with.
//!
//! The agent links Debian's `libseccomp.a` (built against glibc) into a static musl binary.
//! Of glibc's symbols it needs only `__fprintf_chk`, referenced solely by libseccomp's PFC
//! text export (`seccomp_export_pfc`), which neither the agent nor libcontainer calls. This
//! definition satisfies the linker and writes nothing; every other symbol libseccomp uses
//! exists in musl under the same name and ABI.

/// glibc's fortified `fprintf`; extra variadic arguments are ignored (sysv x86-64 ABI), and
/// the result says "nothing written".
#[no_mangle]
pub extern "C" fn __fprintf_chk() -> libc::c_int {
    -1
}
