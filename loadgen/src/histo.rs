//! Latency histograms (HdrHistogram, microseconds, 3 significant digits) and their transport
//! between processes: the V2 serialization, base64 in JSON.

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Highest trackable value: one hour in microseconds. Larger values are clamped to it.
pub const MAX_US: u64 = 3_600_000_000;

pub type Hist = Histogram<u64>;

#[derive(Debug, thiserror::Error)]
pub enum HistoError {
    #[error("histogram is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("histogram does not deserialize: {0}")]
    Deserialize(String),
    #[error("histogram does not serialize: {0}")]
    Serialize(String),
    #[error("histograms cannot be merged: {0}")]
    Merge(String),
}

/// A new empty histogram with the loadgen's bounds (1 µs .. 1 h).
pub fn new_hist() -> Hist {
    // The bounds are constants that hdrhistogram accepts; a failure here is a programming error.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Records a duration in microseconds (0 becomes 1, the lowest trackable value).
pub fn record_us(h: &mut Hist, us: u64) {
    h.saturating_record(us.max(1));
}

pub fn encode(h: &Hist) -> Result<String, HistoError> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| HistoError::Serialize(format!("{e:?}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

pub fn decode(s: &str) -> Result<Hist, HistoError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    let h: Hist = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| HistoError::Deserialize(format!("{e:?}")))?;
    Ok(h)
}

/// Adds `from` into `into` (same bounds; values beyond them are clamped by auto-resize being
/// off, so both must come from [`new_hist`] or [`decode`] of one).
pub fn merge(into: &mut Hist, from: &Hist) -> Result<(), HistoError> {
    into.add(from)
        .map_err(|e| HistoError::Merge(format!("{e:?}")))
}

/// Decodes and adds an encoded histogram.
pub fn merge_encoded(into: &mut Hist, encoded: &str) -> Result<(), HistoError> {
    merge(into, &decode(encoded)?)
}

/// The summary every report shows for a latency: microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

pub fn percentiles(h: &Hist) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        min_us: h.min(),
        mean_us: (h.mean() * 10.0).round() / 10.0,
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p95_us: h.value_at_quantile(0.95),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_merge() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=1000u64 {
            record_us(&mut a, v);
            record_us(&mut b, v * 1000);
        }
        record_us(&mut b, 0); // clamped to 1
        record_us(&mut b, u64::MAX); // clamped to MAX_US
        let a2 = decode(&encode(&a).unwrap()).unwrap();
        assert_eq!(a2, a);
        let mut m = new_hist();
        merge_encoded(&mut m, &encode(&a).unwrap()).unwrap();
        merge_encoded(&mut m, &encode(&b).unwrap()).unwrap();
        assert_eq!(m.len(), 2002);
        let p = percentiles(&m);
        assert_eq!(p.count, 2002);
        assert_eq!(p.min_us, 1);
        assert!(p.max_us >= MAX_US && p.max_us <= MAX_US + MAX_US / 1000);
        // Half the values are <= 1000 µs.
        assert!((995..=1001).contains(&p.p50_us), "{}", p.p50_us);
        assert!(p.p99_us >= 980_000 && p.p99_us <= 1_000_000, "{}", p.p99_us);
        assert!(decode("not base64!").is_err());
        assert!(decode("AAAA").is_err());
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(percentiles(&new_hist()), Percentiles::default());
    }
}
