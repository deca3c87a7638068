//! What holds the device memory at its peak. With `REVSNN_TRACE_PEAK_MEMORY=1` in the
//! environment every counted buffer records where it was allocated (a [`Backtrace`]), the set of
//! live buffers is kept at each new peak, and [`crate::GpuDevice::reset_peak_memory`] prints that
//! set to stderr, grouped by the functions that allocated it, largest first (docs/memory.md
//! §9.6). For finding what to shrink: it slows every allocation, so it is off unless asked for.

use std::backtrace::Backtrace;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};

/// The variable that turns the trace on.
pub const TRACE_VARIABLE: &str = "REVSNN_TRACE_PEAK_MEMORY";

/// How many groups a report lists.
const GROUPS_SHOWN: usize = 30;

/// How many functions name an allocation site.
const FRAMES_SHOWN: usize = 4;

/// Functions of the allocation itself, which every site shares: left out of its name.
const ALLOCATING_FUNCTIONS: [&str; 6] = [
    "force_capture",
    "allocated",
    "counted",
    "alloc",
    "alloc_zeros",
    "upload",
];

/// The file of the counters (`gpu/src/memory.rs`, as a frame's place reads below `src/`): its
/// frames are the allocation's too.
const ACCOUNTING_FILE: &str = "memory.rs:";

/// A buffer's bytes and where it was allocated.
type Site = (usize, Arc<Backtrace>);

/// The live buffers of one device and the set held at the peak.
#[derive(Debug, Default)]
pub(crate) struct PeakTrace {
    state: Mutex<TraceState>,
}

#[derive(Debug, Default)]
struct TraceState {
    next_id: u64,
    live: HashMap<u64, Site>,
    live_bytes: usize,
    peak_bytes: usize,
    /// The live buffers when the peak was reached, and the allocation that reached it.
    at_peak: Vec<Site>,
    peak_reached_by: Option<Arc<Backtrace>>,
}

impl TraceState {
    fn restart_peak(&mut self) {
        self.peak_bytes = self.live_bytes;
        self.at_peak = self.live.values().cloned().collect();
    }
}

impl PeakTrace {
    /// A trace when [`TRACE_VARIABLE`] is set, else `None`.
    pub(crate) fn from_env() -> Option<PeakTrace> {
        std::env::var_os(TRACE_VARIABLE).map(|_| PeakTrace::default())
    }

    fn state(&self) -> MutexGuard<'_, TraceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a buffer of `bytes`; returns the id its release passes to [`PeakTrace::released`].
    pub(crate) fn allocated(&self, bytes: usize) -> u64 {
        let site = Arc::new(Backtrace::force_capture());
        let mut s = self.state();
        let id = s.next_id;
        s.next_id += 1;
        s.live.insert(id, (bytes, site.clone()));
        s.live_bytes += bytes;
        if s.live_bytes > s.peak_bytes {
            s.restart_peak();
            s.peak_reached_by = Some(site);
        }
        id
    }

    /// Forgets buffer `id`.
    pub(crate) fn released(&self, id: u64) {
        let mut s = self.state();
        if let Some((bytes, _)) = s.live.remove(&id) {
            s.live_bytes -= bytes;
        }
    }

    /// The buffers held at the peak since the last call, grouped by allocating functions, as
    /// text; then the peak restarts from the live bytes.
    pub(crate) fn report_and_reset(&self) -> String {
        let mut s = self.state();
        let mut groups: HashMap<String, (usize, usize)> = HashMap::new();
        for (bytes, site) in &s.at_peak {
            let group = groups.entry(site_name(site)).or_default();
            group.0 += bytes;
            group.1 += 1;
        }
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_by_key(|(_, (bytes, _))| std::cmp::Reverse(*bytes));
        let mut text = format!("device memory at the peak: {} bytes\n", s.peak_bytes);
        if let Some(site) = &s.peak_reached_by {
            let _ = writeln!(text, "reached by an allocation at {}", site_name(site));
        }
        for (site, (bytes, count)) in groups.iter().take(GROUPS_SHOWN) {
            let _ = writeln!(text, "{bytes:>12} in {count:>4} buffers  {site}");
        }
        s.restart_peak();
        s.peak_reached_by = None;
        text
    }
}

/// The innermost functions of this project in `site` above the allocation itself, each with
/// its file and line, innermost first. Frames without a source line, and those of the standard
/// library and of dependencies, are left out.
fn site_name(site: &Backtrace) -> String {
    let text = site.to_string();
    let mut frames = Vec::new();
    let mut lines = text.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        let Some((_, name)) = line.split_once(": ") else {
            continue;
        };
        let Some(place) = lines.next_if(|l| l.starts_with("at ")) else {
            continue;
        };
        let name = without_generics(name);
        let function = name.rsplit("::").next().unwrap_or(&name);
        let file = place.rsplit_once("/src/").map_or(place, |(_, file)| file);
        let ours = !place.contains("/rustc/") && !place.contains("/registry/");
        let allocating =
            ALLOCATING_FUNCTIONS.contains(&function) || file.starts_with(ACCOUNTING_FILE);
        if !ours || allocating {
            continue;
        }
        frames.push(format!("{function} ({file})"));
        if frames.len() == FRAMES_SHOWN {
            break;
        }
    }
    frames.join(" <- ")
}

/// A function's path without its generic arguments.
fn without_generics(name: &str) -> String {
    let mut depth = 0;
    name.chars()
        .filter(|&c| {
            match c {
                '<' => depth += 1,
                '>' => depth -= 1,
                _ => return depth == 0,
            }
            false
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a tail call, so that this function's frame is in the backtrace.
    #[inline(never)]
    fn allocate_from_first_site(trace: &PeakTrace, bytes: usize) -> u64 {
        std::hint::black_box(trace.allocated(bytes))
    }

    /// Not a tail call, so that this function's frame is in the backtrace.
    #[inline(never)]
    fn allocate_from_second_site(trace: &PeakTrace, bytes: usize) -> u64 {
        std::hint::black_box(trace.allocated(bytes))
    }

    #[test]
    fn the_report_lists_what_was_live_at_the_peak_and_the_next_one_starts_from_the_live_bytes() {
        let trace = PeakTrace::default();
        let a = allocate_from_first_site(&trace, 100);
        let b = allocate_from_second_site(&trace, 50);
        trace.released(b);
        allocate_from_second_site(&trace, 20);
        trace.released(a);
        let report = trace.report_and_reset();
        assert!(
            report.starts_with("device memory at the peak: 150 bytes\n"),
            "{report}"
        );
        assert!(report.contains("allocate_from_second_site"), "{report}");
        let lines: Vec<&str> = report.lines().skip(2).collect();
        assert_eq!(lines.len(), 2, "{report}");
        assert!(
            lines[0].trim_start().starts_with("100 in    1 buffers"),
            "{report}"
        );
        assert!(lines[0].contains("allocate_from_first_site"), "{report}");
        assert!(
            lines[1].trim_start().starts_with("50 in    1 buffers"),
            "{report}"
        );
        let next = trace.report_and_reset();
        assert!(
            next.starts_with("device memory at the peak: 20 bytes\n"),
            "{next}"
        );
    }
}
