//! Timing: medians over interleaved repeats, samples retaken while other processes are busy.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::system::CpuSnap;
use crate::AnyResult;

/// Samples of one timed variant, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Stat {
    pub(crate) median_ms: f64,
    pub(crate) min_ms: f64,
    pub(crate) samples_ms: Vec<f64>,
    /// Median number of cores other processes kept busy during the kept samples.
    #[serde(default)]
    pub(crate) others_cores: f64,
    /// Samples taken again because other processes were busy.
    #[serde(default)]
    pub(crate) retaken: usize,
}

impl Stat {
    pub(crate) fn from_samples(samples: Vec<f64>) -> Self {
        Stat {
            median_ms: median(&samples),
            min_ms: samples.iter().copied().fold(f64::NAN, f64::min),
            samples_ms: samples,
            others_cores: f64::NAN,
            retaken: 0,
        }
    }
}

pub(crate) fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Milliseconds `f` takes, device work included.
pub(crate) fn time_ms<T>(device: Device, f: impl FnOnce() -> T) -> (f64, T) {
    sync(device);
    let start = Instant::now();
    let out = f();
    sync(device);
    (start.elapsed().as_secs_f64() * 1e3, out)
}

pub(crate) type Variant<'a> = (&'a str, Box<dyn FnMut() -> AnyResult<()> + 'a>);

/// Runs every variant `warmup` times, then `repeats` rounds of all variants in turn
/// (interleaved, so slow phases of a shared machine hit every variant alike; each round starts
/// one variant later, so no variant always follows the same one, whose freed memory it would
/// always find in the same state). A sample during
/// which other processes kept more than [`BUSY_LIMIT`] cores busy is taken again (at most
/// [`RETRIES`] times); how many were retaken is recorded.
pub(crate) fn interleaved(
    device: Device,
    warmup: usize,
    repeats: usize,
    variants: &mut [Variant<'_>],
) -> AnyResult<BTreeMap<String, Stat>> {
    for (name, f) in variants.iter_mut() {
        for _ in 0..warmup {
            f().map_err(|e| format!("{name}: {e}"))?;
        }
    }
    let n = variants.len();
    let (mut samples, mut others, mut retaken) =
        (vec![Vec::new(); n], vec![Vec::new(); n], vec![0; n]);
    for round in 0..repeats {
        for step in 0..n {
            let i = (round + step) % n;
            let (name, f) = &mut variants[i];
            let (ms, busy, again, ()) =
                quiet_sample(device, RETRIES, &mut *f).map_err(|e| format!("{name}: {e}"))?;
            samples[i].push(ms);
            others[i].push(busy);
            retaken[i] += again;
        }
    }
    Ok(variants
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let mut stat = Stat::from_samples(std::mem::take(&mut samples[i]));
            stat.others_cores = median(&others[i]);
            stat.retaken = retaken[i];
            ((*name).to_owned(), stat)
        })
        .collect())
}

/// Times `f` (ms); while other processes keep more than [`BUSY_LIMIT`] cores busy during it,
/// times it again, at most `retries` times. Returns the time, the cores other processes used
/// during the kept run, and how many runs were discarded.
pub(crate) fn quiet_sample<T>(
    device: Device,
    retries: usize,
    mut f: impl FnMut() -> AnyResult<T>,
) -> AnyResult<(f64, f64, usize, T)> {
    let mut again = 0;
    loop {
        let before = CpuSnap::now();
        let (ms, out) = time_ms(device, &mut f);
        let out = out?;
        let busy = CpuSnap::now().others_since(&before);
        if busy > BUSY_LIMIT && again < retries {
            again += 1;
            continue;
        }
        return Ok((ms, busy, again, out));
    }
}

/// Cores' worth of CPU other processes may use during a sample before it is taken again.
pub(crate) const BUSY_LIMIT: f64 = 0.25;
/// How often one sample is taken again at most.
pub(crate) const RETRIES: usize = 3;

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
