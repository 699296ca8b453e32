//! The pids a pod VM started, recorded in its state dir with each process's start time, so
//! that a cleanup without the owning daemon (containerd's `<shim> delete`) kills exactly
//! those processes and never an unrelated one that reused a pid.

use std::path::Path;

/// File in the state dir: one line per process, `<name> <pid> <start time>`.
pub const PIDS_FILE: &str = "pids";

/// Start time of a process in clock ticks since boot (`/proc/<pid>/stat` field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3; field 22 is the 20th from here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Appends a started process to the state dir's pid file.
pub fn record(state_dir: &Path, name: &str, pid: u32) -> std::io::Result<()> {
    use std::io::Write;
    let Some(start) = start_time(pid) else { return Ok(()) };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(state_dir.join(PIDS_FILE))?;
    writeln!(f, "{name} {pid} {start}")
}

/// Whether a process's command line (`/proc/<pid>/cmdline`: arguments separated by NULs)
/// names `dir` itself or a path inside it. Whole path components only: pod `b1`'s state dir is
/// a prefix of pod `b10`'s, whose QEMU and helpers must not match. After the dir's name comes
/// the end of an argument, a `/`, or the `,` that separates QEMU's and vhost-device-vsock's
/// option keys.
pub fn cmdline_names_dir(cmdline: &[u8], dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut needle = dir.as_os_str().as_bytes();
    while needle.len() > 1 && needle.ends_with(b"/") {
        needle = &needle[..needle.len() - 1];
    }
    if needle.is_empty() || cmdline.len() < needle.len() {
        return false;
    }
    cmdline
        .windows(needle.len())
        .enumerate()
        .any(|(at, w)| w == needle && matches!(cmdline.get(at + needle.len()), None | Some(0 | b'/' | b',')))
}

/// SIGKILLs every recorded process that is still the same process (same start time).
/// Returns the names of the processes killed.
pub fn kill_recorded(state_dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(state_dir.join(PIDS_FILE)) else { return Vec::new() };
    let mut killed = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(pid), Some(start)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else { continue };
        if start_time(pid) != Some(start) {
            continue; // exited, or the pid now belongs to another process
        }
        if pid == std::process::id() {
            continue; // the caller itself (a daemon cleaning up what it recorded)
        }
        let Ok(raw) = i32::try_from(pid) else { continue };
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL).is_ok() {
            killed.push(name.to_owned());
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_only_the_recorded_process_with_the_same_start_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        record(dir.path(), "sleeper", child.id()).expect("record");
        // A second line for the same pid with a wrong start time must be ignored.
        let text = std::fs::read_to_string(dir.path().join(PIDS_FILE)).expect("pids");
        std::fs::write(dir.path().join(PIDS_FILE), format!("impostor {} 1\n{text}", child.id())).expect("write");
        assert_eq!(kill_recorded(dir.path()), vec!["sleeper".to_owned()]);
        let status = child.wait().expect("wait");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        // Nothing left to kill.
        assert!(kill_recorded(dir.path()).is_empty());
        // Never the caller, whatever the file says.
        record(dir.path(), "owner", std::process::id()).expect("record");
        assert!(kill_recorded(dir.path()).is_empty());
    }

    #[test]
    fn a_state_dir_matches_its_own_processes_and_not_a_neighbour_it_prefixes() {
        let dir = Path::new("/run/contrast/k8s.io/b1");
        let qemu = |pod: &str| {
            format!(
                "qemu-system-x86_64\0-chardev\0socket,id=vsock0,path=/run/contrast/k8s.io/{pod}/vhost.sock\0\
                 -serial\0file:/run/contrast/k8s.io/{pod}/console.log\0"
            )
        };
        assert!(cmdline_names_dir(qemu("b1").as_bytes(), dir));
        assert!(!cmdline_names_dir(qemu("b10").as_bytes(), dir), "b1 is a prefix of b10");
        assert!(!cmdline_names_dir(qemu("b1-x").as_bytes(), dir));
        // The dir itself, as a whole argument, at the end, or before an option's next key.
        assert!(cmdline_names_dir(b"virtiofsd\0--shared-dir\0/run/contrast/k8s.io/b1\0", dir));
        assert!(cmdline_names_dir(b"x --dir=/run/contrast/k8s.io/b1", dir));
        assert!(cmdline_names_dir(b"vhost-device-vsock\0--vm\0dir=/run/contrast/k8s.io/b1,guest-cid=3\0", dir));
        // A trailing slash on the dir changes nothing; a later occurrence still counts.
        assert!(!cmdline_names_dir(qemu("b10").as_bytes(), Path::new("/run/contrast/k8s.io/b1/")));
        let both = format!("{}{}", qemu("b10"), qemu("b1"));
        assert!(cmdline_names_dir(both.as_bytes(), dir));
        assert!(!cmdline_names_dir(b"", dir));
    }

    #[test]
    fn start_time_of_this_process_is_known() {
        assert!(start_time(std::process::id()).is_some());
        assert!(start_time(u32::MAX).is_none());
    }
}
