/// On-CPU time of the calling thread in ns (Linux schedstat): on a shared machine the
/// wall clock understates a dedicated core.
pub fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}
