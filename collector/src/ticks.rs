//! The kernel's tick count, as the BPF programs stamp events with it, turned into Unix time.
//!
//! A clock read (`bpf_ktime_get_ns`) costs about 50 ns on these VMs, as much as a trivial
//! program's whole run, while `bpf_jiffies64` is inlined by the verifier as one load. Events
//! are reported in milliseconds, so their programs read the tick count (`jiffies_64`, one tick
//! every 1/HZ s) and user space converts it here. `jiffies_64` advances in step with
//! CLOCK_MONOTONIC once the timekeeping has started (the tick code catches up on ticks an idle
//! CPU skipped from that clock), so one (ticks, monotonic) pair fixes the conversion.

use std::time::Duration;

/// `INITIAL_JIFFIES`: the kernel starts the count 300 s before it wraps in 32 bits, so that
/// wrap bugs show early. On 64-bit kernels `jiffies_64` is this value at boot.
fn initial_jiffies(hz: u64) -> u64 {
    (u32::MAX as u64 + 1) - 300 * hz
}

/// Unix time now, ns.
fn unix_ns() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

/// CLOCK_MONOTONIC now, ns: the clock `/proc/timer_list`'s `now at` reads.
fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// The tick rates Linux can be built with (`CONFIG_HZ`).
const HZ_CHOICES: [u64; 4] = [100, 250, 300, 1000];

/// Converts tick counts (`jiffies_64`) into Unix time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TickClock {
    /// Ticks per second (`CONFIG_HZ`).
    hz: u64,
    /// A tick count and the Unix time, in ns, at which it was read.
    at_ticks: u64,
    at_unix_ns: i128,
}

impl TickClock {
    /// Calibrates from `/proc/timer_list` (readable by root only), whose header gives the
    /// monotonic time and whose per-CPU sections give `jiffies`, read microseconds apart.
    /// `None` when the file cannot be read or parsed.
    pub fn calibrate() -> Option<TickClock> {
        let mono_to_unix_ns = unix_ns() - monotonic_ns();
        // Only the head is needed: the file runs to megabytes on a machine with many CPUs.
        let file = std::fs::File::open("/proc/timer_list").ok()?;
        let mut head = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(file)).take(10_000) {
            let line = line.ok()?;
            let done = line.starts_with("jiffies: ");
            head.push_str(&line);
            head.push('\n');
            if done {
                break;
            }
        }
        Self::from_timer_list(&head, mono_to_unix_ns)
    }

    /// [`calibrate`](Self::calibrate) from the file's text.
    pub fn from_timer_list(text: &str, mono_to_unix_ns: i128) -> Option<TickClock> {
        let mono_ns: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("now at ")?.strip_suffix(" nsecs")?.trim().parse().ok())?;
        let ticks: u64 = text.lines().find_map(|l| l.strip_prefix("jiffies: ")?.trim().parse().ok())?;
        let hz = Self::guess_hz(ticks, Duration::from_nanos(mono_ns))?;
        Some(TickClock { hz, at_ticks: ticks, at_unix_ns: mono_ns as i128 + mono_to_unix_ns })
    }

    /// The tick rate under which `ticks` counted from `INITIAL_JIFFIES` best matches the
    /// monotonic time since boot, within 10 % (the count starts a fraction of a second after
    /// the clock: 0.24 s on this VM).
    fn guess_hz(ticks: u64, since_boot: Duration) -> Option<u64> {
        let secs = since_boot.as_secs_f64();
        HZ_CHOICES
            .iter()
            .filter_map(|&hz| {
                let counted = ticks.checked_sub(initial_jiffies(hz))? as f64;
                let expected = secs * hz as f64;
                let off = (counted - expected).abs() / expected.max(1.0);
                (off < 0.10 || (counted - expected).abs() < hz as f64).then_some((off, hz))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, hz)| hz)
    }

    /// The Unix time in milliseconds of tick count `ticks`, good to within one tick: the
    /// calibration's tick began up to a tick before the time it was read at.
    pub fn unix_ms(&self, ticks: u64) -> u64 {
        let delta_ticks = ticks as i128 - self.at_ticks as i128;
        let ns = self.at_unix_ns + delta_ticks * 1_000_000_000 / self.hz as i128;
        (ns / 1_000_000).max(0) as u64
    }

    /// Ticks per second.
    pub fn hz(&self) -> u64 {
        self.hz
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of this VM's /proc/timer_list (HZ=250), 179 s after boot.
    const SAMPLE: &str = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 179106810055 nsecs\n\n\
        cpu: 0\n  .idle_jiffies   : 4294936861\n  .last_jiffies   : 4294936992\njiffies: 4294937012\n";

    #[test]
    fn the_tick_rate_and_the_time_of_a_tick_come_from_timer_list() {
        let c = TickClock::from_timer_list(SAMPLE, 1_000_000_000_000).unwrap();
        assert_eq!(c.hz(), 250);
        // The calibration tick reads as the header's time; 250 ticks later is one second later.
        assert_eq!(c.unix_ms(4294937012), (179_106_810_055 + 1_000_000_000_000) / 1_000_000);
        assert_eq!(c.unix_ms(4294937012 + 250), (180_106_810_055 + 1_000_000_000_000) / 1_000_000);
        assert_eq!(c.unix_ms(4294937012 - 1), (179_102_810_055 + 1_000_000_000_000) / 1_000_000);
    }

    #[test]
    fn other_tick_rates_are_recognised_and_nonsense_is_refused() {
        // HZ=1000, an hour after boot.
        let j = initial_jiffies(1000) + 3_600_000;
        let text = format!("now at 3600250000000 nsecs\njiffies: {j}\n");
        assert_eq!(TickClock::from_timer_list(&text, 0).unwrap().hz(), 1000);
        // HZ=100, 10 s after boot.
        let j = initial_jiffies(100) + 1000;
        let text = format!("now at 10200000000 nsecs\njiffies: {j}\n");
        assert_eq!(TickClock::from_timer_list(&text, 0).unwrap().hz(), 100);
        assert_eq!(TickClock::from_timer_list("now at 5 nsecs\njiffies: 12\n", 0), None);
        assert_eq!(TickClock::from_timer_list("jiffies: 4294937012\n", 0), None);
    }

    #[test]
    fn this_kernel_calibrates_and_its_ticks_read_as_now() {
        // The file is mode 0400: only root (as in CI, which loads BPF) must calibrate.
        let Some(c) = TickClock::calibrate() else {
            // SAFETY: no preconditions.
            assert_ne!(unsafe { libc::geteuid() }, 0, "root cannot calibrate from /proc/timer_list");
            return;
        };
        assert!(HZ_CHOICES.contains(&c.hz()));
        std::thread::sleep(Duration::from_millis(300));
        let text = std::fs::read_to_string("/proc/timer_list").unwrap();
        let ticks: u64 = text.lines().find_map(|l| l.strip_prefix("jiffies: ")?.trim().parse().ok()).unwrap();
        let now_ms = (unix_ns() / 1_000_000) as i64;
        let tick_ms = 1000 / c.hz() as i64;
        let off = c.unix_ms(ticks) as i64 - now_ms;
        assert!(off.abs() <= 2 * tick_ms + 2, "a tick read now converts to {off} ms from now");
    }
}
