//! Criterion settings shared by every bench: short runs, so the whole suite takes minutes on the
//! 2-core machines. Override per run on the command line (e.g. `-- --measurement-time 10`).

use std::time::Duration;

use criterion::Criterion;

pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .noise_threshold(0.03)
        .configure_from_args()
}
