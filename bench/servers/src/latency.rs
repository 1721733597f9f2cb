//! The one line the load clients print for `bench/http.py`: how many operations completed
//! and their p99 latency.

/// Prints `<what>=N p99_us=X` for the latencies `micros` (µs) of a run of `seconds`.
pub fn report(what: &str, seconds: u64, micros: &mut [f64]) {
    micros.sort_by(f64::total_cmp);
    let p99 = micros.get(micros.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(f64::NAN);
    println!("{what}={} seconds={seconds} p99_us={p99:.0}", micros.len());
}
