//! The host's TSC rate, handed to TCG guests so that they do not calibrate their own.
//!
//! Under TCG the guest's TSC is the host's (QEMU reads the host TSC for `rdtsc`), and Linux
//! measures its rate at boot against the PIT: it programs the PIT, reads the TSC, and polls
//! the PIT until it expires, assuming nothing runs between the first two steps. A vCPU thread
//! descheduled right there (pods booting side by side on a busy host) sees the PIT expire
//! early and takes a 2.6 GHz TSC for one of 28–977 MHz; when the HPET's figure disagrees the
//! kernel still trusts the PIT's. The guest's clock then runs 3–94× fast (docs/reliability.md):
//! the agent's request deadlines expire within a second, `sleep` and timestamps lie. Given
//! `tsc_early_khz=`, the kernel skips that calibration; it still refines the rate against the
//! HPET a second later, and takes the refined figure when it is within 1 % of ours.

use std::time::Duration;

/// One reading of the TSC together with `CLOCK_MONOTONIC_RAW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    tsc: u64,
    ns: u64,
}

/// The widest gap between the clock reads around one TSC read that still counts: a read
/// interrupted by the scheduler is retried.
const MAX_BRACKET_NS: u64 = 2_000;
/// How often a sample is tried before giving up.
const ATTEMPTS: usize = 8;
/// The shortest span two samples must cover: with each placed within a microsecond, the rate
/// is then known to 0.1 %, well inside the 1 % the kernel's refinement accepts.
pub const MIN_SPAN: Duration = Duration::from_millis(2);
/// Rates outside this range (kHz) are taken for a broken measurement.
const PLAUSIBLE_KHZ: std::ops::RangeInclusive<u64> = 100_000..=10_000_000;

fn monotonic_raw_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_RAW exists on every Linux
    // this shim supports.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

#[cfg(target_arch = "x86_64")]
fn read_tsc() -> Option<u64> {
    // SAFETY: RDTSC has no preconditions on x86_64 (user space may read it unless the kernel
    // forbids it with PR_SET_TSC, which no shim does).
    Some(unsafe { core::arch::x86_64::_rdtsc() })
}

#[cfg(not(target_arch = "x86_64"))]
fn read_tsc() -> Option<u64> {
    None
}

impl Sample {
    /// Reads the TSC between two clock reads, keeping the narrowest of a few attempts; `None`
    /// when every attempt was interrupted (or the host has no TSC).
    pub fn take() -> Option<Sample> {
        (0..ATTEMPTS)
            .filter_map(|_| {
                let before = monotonic_raw_ns();
                let tsc = read_tsc()?;
                let after = monotonic_raw_ns();
                let width = after.checked_sub(before)?;
                (width <= MAX_BRACKET_NS).then_some((width, Sample { tsc, ns: before + width / 2 }))
            })
            .min_by_key(|(width, _)| *width)
            .map(|(_, sample)| sample)
    }

    /// The TSC rate from `self` to the later `end`, kHz (cycles per millisecond); `None` when
    /// they are closer than [`MIN_SPAN`] or the figure is implausible.
    pub fn khz_until(&self, end: &Sample) -> Option<u64> {
        let ns = end.ns.checked_sub(self.ns)?;
        if ns < MIN_SPAN.as_nanos() as u64 {
            return None;
        }
        let cycles = end.tsc.checked_sub(self.tsc)?;
        let khz = u64::try_from(u128::from(cycles) * 1_000_000 / u128::from(ns)).ok()?;
        PLAUSIBLE_KHZ.contains(&khz).then_some(khz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_cycles_per_millisecond_over_the_span() {
        let a = Sample { tsc: 1_000, ns: 10_000_000 };
        // 2.6 GHz over 4 ms.
        let b = Sample { tsc: 1_000 + 10_400_000, ns: 14_000_000 };
        assert_eq!(a.khz_until(&b), Some(2_600_000));
    }

    #[test]
    fn too_short_backwards_or_implausible_spans_give_nothing() {
        let a = Sample { tsc: 1_000_000, ns: 10_000_000 };
        assert_eq!(a.khz_until(&Sample { tsc: 3_000_000, ns: 11_000_000 }), None, "1 ms is too short");
        assert_eq!(a.khz_until(&Sample { tsc: 10, ns: 20_000_000 }), None, "the TSC went backwards");
        assert_eq!(a.khz_until(&Sample { tsc: 5_000_000, ns: 5_000_000 }), None, "the clock went backwards");
        assert_eq!(a.khz_until(&Sample { tsc: 1_000_100, ns: 20_000_000 }), None, "10 kHz is no TSC");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn this_host_s_tsc_rate_matches_its_clock() {
        let start = Sample::take().expect("an uninterrupted TSC read");
        std::thread::sleep(Duration::from_millis(20));
        let khz = start.khz_until(&Sample::take().expect("a second read")).expect("a plausible rate");
        // Measured twice more over a longer span: the short figure must agree to 0.5 %.
        let again = Sample::take().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let long = again.khz_until(&Sample::take().unwrap()).unwrap();
        assert!(khz.abs_diff(long) * 200 < long, "{khz} kHz over 20 ms vs {long} kHz over 100 ms");
    }
}
