//! What the machine is and what processes cost: /proc sampling, machine facts, the open-file
//! limit.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("cannot read /proc/{pid}: {source}")]
    Proc {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected format of /proc/{0}/stat")]
    Format(u32),
    #[error("{0}")]
    Limit(String),
}

/// CPU time and resident memory of one process at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as u64 } else { 4096 }
}

/// Parses `/proc/PID/stat` content.
pub fn parse_stat(pid: u32, content: &str, page: u64) -> Result<ProcSample, SysError> {
    // The command name (field 2) is in parentheses and may contain spaces and ')': everything
    // after the *last* ')' is space-separated, starting with field 3 (state).
    let rest = content
        .rfind(')')
        .map(|i| &content[i + 1..])
        .ok_or(SysError::Format(pid))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field n (1-based, man proc) is f[n - 3].
    let field = |n: usize| -> Result<u64, SysError> {
        f.get(n - 3)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(SysError::Format(pid))
    };
    Ok(ProcSample {
        cpu_ticks: field(14)? + field(15)?,
        rss_bytes: field(24)? * page,
    })
}

pub fn sample(pid: u32) -> Result<ProcSample, SysError> {
    let content = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| SysError::Proc { pid, source })?;
    parse_stat(pid, &content, page_size())
}

/// Facts about the machine a report was measured on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// First "model name" of /proc/cpuinfo.
    pub cpu_model: String,
    /// "processor" entries of /proc/cpuinfo.
    pub logical_cpus: usize,
    /// Cores this process may run on (affinity, cgroup limits).
    pub available_parallelism: usize,
    /// MemTotal of /proc/meminfo, bytes.
    pub mem_total_bytes: u64,
    /// RLIMIT_NOFILE (soft) after raising it.
    pub open_files_limit: u64,
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let logical_cpus = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count();
    let mem_total_bytes = read("/proc/meminfo")
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("MemTotal:")?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0);
    Machine {
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu_model,
        logical_cpus,
        available_parallelism: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mem_total_bytes,
        open_files_limit: nofile_limit().map(|(soft, _)| soft).unwrap_or(0),
    }
}

/// (soft, hard) RLIMIT_NOFILE.
pub fn nofile_limit() -> Result<(u64, u64), SysError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return Err(SysError::Limit(format!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        )));
    }
    // rlim_t is u64 on 64-bit Linux but not on every target.
    #[allow(clippy::unnecessary_cast)]
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// Raises the soft open-file limit to the hard limit (every connection is a socket) and returns
/// the new soft limit. Child processes inherit it.
pub fn raise_nofile_limit() -> Result<u64, SysError> {
    let (soft, hard) = nofile_limit()?;
    if soft >= hard {
        return Ok(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: hard as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass; raising soft up to hard needs no privilege.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if rc != 0 {
        return Err(SysError::Limit(format!(
            "setrlimit(RLIMIT_NOFILE, {hard}): {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(hard)
}

/// File descriptors a worker keeps for itself (runtime, stdio, the HTTPS client, log files):
/// the rest of its limit is for connections, one socket each (WebSocket: the TCP socket;
/// WebTransport: the UDP socket of the connection's own QUIC endpoint).
pub const FD_RESERVE: u64 = 256;

/// Connections one process can hold under `limit` open files.
pub fn connection_budget(limit: u64) -> u64 {
    limit.saturating_sub(FD_RESERVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (tern (worker) x) S 1 1234 1234 0 -1 4194560 2769 0 0 0 150 25 0 0 20 0 \
                    3 0 987654 123456789 2500 18446744073709551615 1 1 0 0 0 0 0 4096 17922 0 0 0 \
                    17 1 0 0 0 0 0";
        let s = parse_stat(1234, line, 4096).unwrap();
        assert_eq!(s.cpu_ticks, 175);
        assert_eq!(s.rss_bytes, 2500 * 4096);
        assert!(parse_stat(1, "garbage", 4096).is_err());
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        let m = machine();
        assert!(m.logical_cpus >= 1);
        assert!(m.mem_total_bytes > 0);
    }
}
